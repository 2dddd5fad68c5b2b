"""ONNX export of the three DVD stages: onnxruntime (CPU) reproduces torch within 1e-3."""

import onnx
import pytest
from tiny_models import reference_dit, tiny_models
import torch

from dvd_ros.errors import InputError
from dvd_ros.model.engine_cache import EngineCache
from dvd_ros.model.export import (
    INPUT_NAMES,
    STAGES,
    WindowShape,
    cached_onnx,
    compare_with_onnxruntime,
    example_input,
    export_stage,
    stage_module,
)

torch.set_num_threads(1)
SHAPE = WindowShape(5, 32, 48)


@pytest.fixture(scope='module')
def models():
    return tiny_models(seed=5)


@pytest.mark.parametrize('stage', STAGES)
def test_onnxruntime_matches_torch(models, stage, tmp_path):
    module = stage_module(models, stage)
    path = export_stage(module, stage, SHAPE, tmp_path / stage)
    graph = onnx.load(str(path))
    inputs = [i.name for i in graph.graph.input]
    assert inputs == [INPUT_NAMES[stage]]  # one input: no timestep, no text context
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert tuple(dims) == SHAPE.input_shape(stage)
    error, magnitude = compare_with_onnxruntime(module, stage, SHAPE, path, seed=1)
    assert magnitude > 0.1
    assert error < 1e-3


def test_dit_graph_has_no_cross_attention(models, tmp_path):
    path = export_stage(stage_module(models, 'dit'), 'dit', SHAPE, tmp_path)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    # One softmax per block (self-attention); the folded cross-attention has none.
    assert ops.count('Softmax') == models.transformer.config.num_layers


def test_dit_graph_matches_the_unfolded_diffusers_call(models, tmp_path):
    import onnxruntime as ort

    path = export_stage(stage_module(models, 'dit'), 'dit', SHAPE, tmp_path)
    latents = example_input('dit', SHAPE, seed=4)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'latents': latents.numpy()})[0])
    want = reference_dit(models.transformer, latents)
    assert (got - want).abs().max().item() < 1e-3


def test_window_shape_validates_with_the_fix():
    assert WindowShape(9, 480, 640).latent_shape == (1, 16, 3, 60, 80)
    assert WindowShape.from_latents(torch.zeros(1, 16, 3, 6, 10)) == WindowShape(9, 48, 80)
    with pytest.raises(InputError, match='4n\\+1.*use 9'):
        WindowShape(8, 480, 640)
    with pytest.raises(InputError, match='multiple of 16.*use 496'):
        WindowShape(9, 481, 640)
    with pytest.raises(InputError, match='positive integer'):
        WindowShape(9, 0, 640)


def test_cached_onnx_exports_once(models, tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    first = cached_onnx(models, 'dit', SHAPE, cache)
    assert first.is_file()

    def fail(*args, **kwargs):
        raise AssertionError('exported again although cached')

    monkeypatch.setattr('dvd_ros.model.export.export_stage', fail)
    assert cached_onnx(models, 'dit', SHAPE, cache) == first
    # Other weights: a different key, so it must export (and hits the patched function).
    with torch.no_grad():
        models.transformer.proj_out.bias.add_(1.0)
    try:
        with pytest.raises(AssertionError, match='exported again'):
            cached_onnx(models, 'dit', SHAPE, cache)
    finally:
        with torch.no_grad():
            models.transformer.proj_out.bias.sub_(1.0)


def test_export_traces_a_float32_copy_of_half_weights(tmp_path):
    models = tiny_models(seed=6)
    module = stage_module(models, 'dit')
    want = module(example_input('dit', SHAPE)).detach()
    models.transformer.to(torch.bfloat16)
    path = export_stage(stage_module(models, 'dit'), 'dit', SHAPE, tmp_path)
    assert next(models.transformer.parameters()).dtype == torch.bfloat16  # left untouched
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    got = session.run(None, {'latents': example_input('dit', SHAPE).numpy()})[0]
    # bf16-rounded weights, computed in float32: close to the float32 model, not equal.
    assert abs(got - want.numpy()).max() < 0.1
