"""Accelerated backends: same numbers as the torch path, clear refusals where they cannot run."""

import pytest
from tiny_models import reference_dit, tiny_models
import torch

from dvd_ros.errors import BackendUnavailable
from dvd_ros.model.backends import create_backend
from dvd_ros.model.export import WindowShape
from dvd_ros.model.folding import VaeDecoderStage, VaeEncoderStage

torch.set_num_threads(1)
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason='needs a CUDA GPU (torch sees none)')


@pytest.fixture(scope='module')
def models():
    return tiny_models(seed=11)


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    """One engine cache for the module: the graphs of the shared shape are exported once."""
    return tmp_path_factory.mktemp('engines')


def video(frames=5, height=32, width=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, frames, height, width, generator=generator) * 2 - 1


def torch_reference(models, clip):
    """Encode -> DiT (unfolded diffusers call) -> decode, all float32 torch."""
    with torch.no_grad():
        latents = VaeEncoderStage(models)(clip)
        depth = reference_dit(models.transformer, latents)
        return latents, depth, VaeDecoderStage(models)(depth)


def run_backend(backend, clip):
    latents = backend.encode(clip)
    depth = backend.transform(latents)
    return latents, depth, backend.decode(depth)


def test_onnxruntime_end_to_end_matches_torch(models, cache):
    backend = create_backend('onnxruntime', models, cache_dir=cache, threads=1)
    assert backend.name == 'onnxruntime'
    clip = video()
    got = run_backend(backend, clip)
    want = torch_reference(models, clip)
    for name, g, w in zip(('encode', 'transform', 'decode'), got, want):
        assert g.shape == w.shape, name
        assert (g - w).abs().max().item() < 1e-3, name
    # Stage by stage on the same inputs too (errors do not compound here).
    assert (backend.decode(want[1]) - want[2]).abs().max().item() < 1e-3


def test_onnxruntime_sessions_per_shape_and_reused_cache(models, cache, monkeypatch):
    backend = create_backend('onnxruntime', models, cache_dir=cache, threads=1)
    latents = backend.encode(video())
    session = backend.session('encoder', WindowShape(5, 32, 48))
    backend.encode(video(seed=1))
    assert backend.session('encoder', WindowShape(5, 32, 48)) is session
    assert backend.encode(video(frames=1)).shape == (1, 16, 1, 4, 6)
    assert len(backend._sessions) == 2
    # A new process-like backend on the same cache must not export again.
    monkeypatch.setattr('dvd_ros.model.export.export_stage',
                        lambda *a, **k: pytest.fail('exported although cached'))
    again = create_backend('onnxruntime', models, cache_dir=cache, threads=1)
    assert torch.equal(again.encode(video()), latents)


def test_onnxruntime_refuses_what_it_cannot_do(models, tmp_path):
    import onnxruntime as ort

    if 'TensorrtExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match='TensorrtExecutionProvider.*onnxruntime'):
            create_backend('onnxruntime', models, provider='tensorrt', cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match='float32'):
        create_backend('onnxruntime', models, dtype=torch.float16, cache_dir=tmp_path)


def test_torch_compile_matches_torch(models):
    # aot_eager exercises dynamo + AOT tracing without a C++ build, so the test stays quick;
    # the benchmark measures inductor.
    backend = create_backend('torch-compile', models, compile_backend='aot_eager')
    assert backend.name == 'torch-compile'
    clip = video(frames=1, height=16, width=16)
    got = run_backend(backend, clip)
    want = torch_reference(models, clip)
    for name, g, w in zip(('encode', 'transform', 'decode'), got, want):
        assert (g - w).abs().max().item() < 1e-4, name


def test_torch_compile_refuses_without_a_compiler(models, monkeypatch):
    monkeypatch.setattr('shutil.which', lambda name: None)
    with pytest.raises(BackendUnavailable, match='C\\+\\+ compiler.*aot_eager'):
        create_backend('torch-compile', models)


@pytest.mark.skipif(CUDA, reason='checks the refusal on a machine without CUDA')
def test_tensorrt_refuses_without_cuda(models, tmp_path):
    with pytest.raises(BackendUnavailable, match='no CUDA GPU.*onnxruntime'):
        create_backend('tensorrt', models, cache_dir=tmp_path)
    with pytest.raises(BackendUnavailable, match='device=cpu'):
        create_backend('tensorrt', models, device='cpu', cache_dir=tmp_path)


def test_tensorrt_precision_rules():
    from dvd_ros.model.backends.tensorrt_engine import resolve_precision

    assert resolve_precision(None, torch.bfloat16, (9, 0)) == 'bf16'
    assert resolve_precision('fp8', torch.float16, (8, 9)) == 'fp8'
    with pytest.raises(BackendUnavailable, match='fp8 needs compute capability >= 8.9'):
        resolve_precision('fp8', torch.float16, (8, 6))
    with pytest.raises(BackendUnavailable, match='bf16.*7.5'):
        resolve_precision('bf16', torch.float16, (7, 5))


def test_tensorrt_is_not_imported_by_the_registry(models):
    import sys

    create_backend('onnxruntime', models)
    assert 'tensorrt' not in sys.modules


@needs_cuda
@pytest.mark.parametrize('precision,tolerance', [('fp32', 1e-3), ('fp16', 5e-2)])
def test_tensorrt_matches_torch_on_gpu(models, tmp_path, precision, tolerance):
    pytest.importorskip('tensorrt', reason='tensorrt is not installed')
    backend = create_backend('tensorrt', models, device='cuda', dtype=torch.float32,
                             precision=precision, cache_dir=tmp_path)
    clip = video()
    got = run_backend(backend, clip.cuda())
    want = torch_reference(models, clip)
    for name, g, w in zip(('encode', 'transform', 'decode'), got, want):
        assert (g.float().cpu() - w).abs().max().item() < tolerance, name


@needs_cuda
def test_onnxruntime_cuda_matches_torch(models, tmp_path):
    import onnxruntime as ort

    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        pytest.skip('onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)')
    backend = create_backend('onnxruntime', models, device='cuda', cache_dir=tmp_path)
    clip = video()
    got = run_backend(backend, clip.cuda())
    for name, g, w in zip(('encode', 'transform', 'decode'), got, torch_reference(models, clip)):
        assert (g.cpu() - w).abs().max().item() < 1e-3, name


@needs_cuda
def test_torch_compile_inductor_on_gpu(models):
    pytest.importorskip('triton', reason='triton is not installed')
    backend = create_backend('torch-compile', models, device='cuda')
    clip = video()
    got = run_backend(backend, clip)
    models.transformer.cpu(), models.vae.cpu()
    for name, g, w in zip(('encode', 'transform', 'decode'), got, torch_reference(models, clip)):
        assert (g.cpu() - w).abs().max().item() < 1e-3, name


def test_regressor_with_onnxruntime_matches_the_torch_backend(models, cache):
    import numpy as np

    from dvd_ros.model.regressor import DepthRegressor

    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    onnx = DepthRegressor(models, backend='onnxruntime', height=32, width=48,
                          cache_dir=cache, threads=1)
    eager = DepthRegressor(models, backend='torch', height=32, width=48)
    assert onnx.backend_name == 'onnxruntime'
    got, want = onnx.predict(frames), eager.predict(frames)
    assert got.shape == want.shape == (3, 32, 48)
    assert want.std() > 1e-3
    assert np.abs(got - want).max() < 1e-3


def test_onnxruntime_reproduces_the_golden_end_to_end_fixture(fixtures, tmp_path):
    from safetensors.torch import load_file

    from dvd_ros.model.checkpoint import load_models
    from dvd_ros.model.regressor import DepthRegressor

    io = load_file(fixtures / 'dvd_tiny_e2e_io.safetensors')
    models = load_models(fixtures / 'dvd_tiny_dit.safetensors')
    regressor = DepthRegressor(models, backend='onnxruntime', cache_dir=tmp_path, threads=1)
    depth = regressor.predict_window(io['frames01'])
    assert depth.shape == io['depth'].shape
    assert (depth - io['depth']).abs().max().item() < 1e-3
