"""Typed graphs (fp16 / bf16) and FP8 DiT linears: what each precision's graph computes."""

import copy

import numpy as np
import onnx
import pytest
from tiny_models import tiny_models
import torch
from torch import nn

from dvd_ros.errors import InputError
from dvd_ros.model.export import (
    INPUT_NAMES,
    WindowShape,
    calibration_latents,
    example_input,
    export_stage,
    stage_module,
)
from dvd_ros.model.precision import (
    FP8_MAX,
    Fp8Linear,
    TypedStage,
    calibrate_fp8,
    calibration_frames,
    calibration_id,
    find_precision,
    fp8_quant_dequant,
    quantize_linears,
)

torch.set_num_threads(1)
SHAPE = WindowShape(5, 32, 48)
ELEM = onnx.TensorProto


@pytest.fixture(scope='module')
def models():
    return tiny_models(seed=3)


def ort_run(path, stage, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {INPUT_NAMES[stage]: x.numpy()})[0])


def weight_types(path):
    """Element types of the constant weights that MatMul / Conv / Gemm nodes consume."""
    graph = onnx.load(str(path)).graph
    constants = {init.name: init.data_type for init in graph.initializer}
    for node in graph.node:  # the TorchScript exporter keeps some folded weights as Constants
        for attr in node.attribute:
            if node.op_type == 'Constant' and attr.name == 'value':
                constants[node.output[0]] = attr.t.data_type
    return {constants[node.input[1]] for node in graph.node
            if node.op_type in ('MatMul', 'Conv', 'Gemm') and node.input[1] in constants}


def typed_torch(module, dtype):
    """Return the stage as a typed graph computes it: parameters cast, buffers kept."""
    from dvd_ros.model.backends.torch_eager import place_module

    return TypedStage(place_module(copy.deepcopy(module), 'cpu', dtype), dtype).eval()


def test_precision_table_and_unknown_name():
    from dvd_ros.cli.engine import PRECISION_CHOICES  # kept literal: no torch import for --help
    from dvd_ros.model.precision import PRECISIONS

    assert PRECISION_CHOICES == tuple(PRECISIONS)
    assert find_precision('bf16').dtype == torch.bfloat16
    assert find_precision('bf16').opset >= 22  # Conv has no bfloat16 before opset 22
    assert find_precision('fp8').fp8_linears and find_precision('fp8').opset >= 19
    with pytest.raises(InputError, match="unknown precision 'int4'.*fp32, fp16, bf16, fp8"):
        find_precision('int4')


def test_fp8_rounding_saturates_and_keeps_representable_values():
    scale = torch.tensor(0.5)
    exact = torch.tensor([0.0, 0.5, -1.0, 224.0])  # 0, 1, -2, 448 steps: all in E4M3
    assert torch.equal(fp8_quant_dequant(exact, scale), exact)
    big = torch.tensor([1e6, -1e6])
    assert torch.equal(fp8_quant_dequant(big, scale), torch.tensor([224.0, -224.0]))
    x = torch.linspace(-3, 3, 1001)
    error = (fp8_quant_dequant(x, torch.tensor(3 / FP8_MAX)) - x).abs()
    assert 0 < error.max() <= 3 * 2 ** -4  # E4M3 has 3 mantissa bits
    per_channel = fp8_quant_dequant(torch.ones(2, 3), torch.tensor([1.0, 2.0, 4.0]), axis=1)
    assert torch.equal(per_channel, torch.ones(2, 3))


def test_fp8_linear_calibrates_then_quantises():
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    layer = Fp8Linear(linear)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x))  # calibrating: exact
        assert layer.amax == pytest.approx(x.abs().max().item())
        layer.finish_calibration()
        got, want = layer(x), linear(x)
    assert layer.input_scale.item() == pytest.approx(x.abs().max().item() / FP8_MAX)
    relative = ((got - want).norm() / want.norm()).item()
    assert 1e-4 < relative < 0.05
    with pytest.raises(InputError, match='calibration saw no'):
        Fp8Linear(linear).finish_calibration()


def test_quantize_linears_covers_the_blocks_only(models):
    before = {id(m) for m in models.transformer.modules()}
    dit = copy.deepcopy(stage_module(models, 'dit'))
    layers = quantize_linears(dit)
    # Per block: q, k, v, out of the self-attention and the two FFN linears.
    assert len(layers) == 6 * models.transformer.config.num_layers
    assert isinstance(dit.proj_out, nn.Linear)
    assert not any(isinstance(m, Fp8Linear) for m in models.transformer.modules())
    assert {id(m) for m in models.transformer.modules()} == before


def test_calibration_frames_default_and_user_frames():
    video = calibration_frames(SHAPE)
    assert video.shape == (1, 3, 5, 32, 48)
    assert -1.0 <= video.min() < video.max() <= 1.0 and video.std() > 0.05
    torch.testing.assert_close(calibration_frames(SHAPE), video)  # deterministic
    frames = np.random.default_rng(0).integers(0, 256, (7, 64, 96, 3), dtype=np.uint8)
    assert calibration_frames(SHAPE, frames).shape == (1, 3, 5, 32, 48)  # 4n+1, resized
    with pytest.raises(InputError, match='uint8 RGB'):
        calibration_frames(SHAPE, frames.astype(np.float32))
    assert calibration_id(None) == ''
    assert calibration_id(frames) == calibration_id(frames.copy()) != calibration_id(frames[:5])


def test_fp16_graph_runs_fp16_and_matches_torch_fp16(models, tmp_path):
    module = stage_module(models, 'dit')
    path = export_stage(module, 'dit', SHAPE, tmp_path, precision='fp16')
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == ELEM.FLOAT  # float32 in and out
    assert graph.output[0].type.tensor_type.elem_type == ELEM.FLOAT
    assert weight_types(path) == {ELEM.FLOAT16}
    x = example_input('dit', SHAPE, seed=2)
    got = ort_run(path, 'dit', x)
    with torch.no_grad():
        want16 = typed_torch(module, torch.float16)(x)
        want32 = module(x)
    assert (got - want16).abs().max().item() < 5e-3
    error32 = (got - want32).abs().max().item()
    assert 1e-5 < error32 < 2e-2  # really fp16: not the float32 numbers
    assert next(module.parameters()).dtype == torch.float32  # the caller's module untouched


@pytest.mark.parametrize('stage', ['encoder', 'dit'])
def test_bf16_graph_is_valid_and_computes_bf16(models, stage, tmp_path):
    from onnx.reference import ReferenceEvaluator

    module = stage_module(models, stage)
    path = export_stage(module, stage, SHAPE, tmp_path, precision='bf16')
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # types valid at the graph's opset
    assert weight_types(path) == {ELEM.BFLOAT16}
    x = example_input(stage, SHAPE, seed=3)
    # onnxruntime's CPU provider has no bf16 kernels; the ONNX reference evaluator has.
    got = torch.from_numpy(ReferenceEvaluator(model).run(None, {INPUT_NAMES[stage]: x.numpy()})[0])
    with torch.no_grad():
        want16 = typed_torch(module, torch.bfloat16)(x)
        want32 = module(x)
    scale = want32.abs().max().item()
    assert (got - want16).abs().max().item() < 0.02 * scale
    assert (got - want32).abs().max().item() > 1e-4  # bf16, not float32


def test_fp8_dit_graph_quantises_every_block_linear(models, tmp_path):
    module = stage_module(models, 'dit')
    latents = calibration_latents(models, SHAPE)
    path = export_stage(module, 'dit', SHAPE, tmp_path, precision='fp8', calibration=latents)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    linears = 6 * models.transformer.config.num_layers
    # One Q/DQ pair on the input and one on the weight of every quantised linear.
    assert ops.count('QuantizeLinear') == ops.count('DequantizeLinear') == 2 * linears
    # Every pair quantises to float8 E4M3 (the zero point's type sets the target type).
    types = {init.name: init.data_type for init in graph.initializer}
    types.update({n.output[0]: n.attribute[0].t.data_type for n in graph.node
                  if n.op_type == 'Constant'})
    targets = {types.get(n.input[2]) for n in graph.node
               if n.op_type in ('QuantizeLinear', 'DequantizeLinear')}
    assert targets == {ELEM.FLOAT8E4M3FN}
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def fp8_graph_and_torch(models, tmp_path, base=None, monkeypatch=None):
    """Export the fp8 DiT graph and run it, the torch fake-quant twin and float32 torch."""
    import dataclasses

    import dvd_ros.model.precision as precision_module

    if base is not None:
        spec = dataclasses.replace(precision_module.PRECISIONS['fp8'], dtype=base)
        monkeypatch.setitem(precision_module.PRECISIONS, 'fp8', spec)
    dtype = find_precision('fp8').dtype
    module = stage_module(models, 'dit')
    latents = calibration_latents(models, SHAPE)
    path = export_stage(module, 'dit', SHAPE, tmp_path, precision='fp8', calibration=latents)
    fake = copy.deepcopy(module)
    calibrate_fp8(fake, quantize_linears(fake), [latents])
    fake = typed_torch(fake, dtype)
    with torch.no_grad():
        return ort_run(path, 'dit', latents), fake(latents), module(latents)


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_fp8_graph_is_exactly_the_torch_fake_quant_on_a_float32_base(models, tmp_path,
                                                                      monkeypatch):
    # With float32 around the Q/DQ pairs, any difference would be a misplaced pair or a
    # different scale: there is none.
    got, fake, exact = fp8_graph_and_torch(models, tmp_path, torch.float32, monkeypatch)
    assert (got - fake).abs().max().item() < 1e-5
    assert 1e-3 < relative(got, exact) < 0.1  # while FP8 itself moves the result


def test_fp8_graph_in_onnxruntime_matches_torch_fake_quant(models, tmp_path):
    got, fake, exact = fp8_graph_and_torch(models, tmp_path)
    fp8_error = relative(got, exact)
    assert 1e-3 < fp8_error < 0.1  # quantised (not exact), still the same latents
    # fp16 rounding flips a few values to the neighbouring FP8 step: well below FP8's error.
    assert relative(got, fake) < 0.5 * fp8_error


def test_fp8_needs_calibration(models, tmp_path):
    with pytest.raises(InputError, match='calibration'):
        export_stage(stage_module(models, 'dit'), 'dit', SHAPE, tmp_path, precision='fp8')


def test_fp8_vae_stages_are_plain_fp16(models, tmp_path):
    path = export_stage(stage_module(models, 'decoder'), 'decoder', SHAPE, tmp_path,
                        precision='fp8')
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert 'QuantizeLinear' not in ops
    assert weight_types(path) == {ELEM.FLOAT16}


def test_calibration_file_round_trip_and_errors(tmp_path):
    from dvd_ros.model.precision import load_calibration, save_calibration

    frames = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = save_calibration(frames, tmp_path)
    assert calibration_id(frames) in path.name
    assert np.array_equal(load_calibration(path), frames)
    with pytest.raises(InputError, match='cannot read FP8 calibration.*dvd-ros engine build'):
        load_calibration(tmp_path / 'missing.npy')
    np.save(tmp_path / 'gray.npy', frames[..., 0])
    with pytest.raises(InputError, match='expected .T, H, W, 3. uint8'):
        load_calibration(tmp_path / 'gray.npy')
