"""Accelerated backends: same numbers as the torch path, clear refusals where they cannot run."""

import pytest
from tiny_models import reference_dit, tiny_models
import torch

from dvd_ros.errors import BackendUnavailable, InputError
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
    assert len(backend._loaded) == 2
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
    with pytest.raises(BackendUnavailable, match='CPU provider has no bfloat16.*fp16'):
        create_backend('onnxruntime', models, dtype=torch.bfloat16, cache_dir=tmp_path)
    with pytest.raises(InputError, match="unknown precision 'int8'"):
        create_backend('onnxruntime', models, precision='int8', cache_dir=tmp_path)


# Relative error (norm) per stage; the random tiny VAE decoder amplifies the DiT's FP8
# error (measured 0.066 on the DiT latents, 0.13 after decoding).
@pytest.mark.parametrize('precision,bound', [('fp16', 1e-2), ('fp8', 0.25)])
def test_onnxruntime_lower_precision_end_to_end(models, cache, precision, bound):
    backend = create_backend('onnxruntime', models, precision=precision, cache_dir=cache,
                             threads=1)
    assert backend.precision == precision
    clip = video()
    got = run_backend(backend, clip)
    want = torch_reference(models, clip)
    for name, g, w in zip(('encode', 'transform', 'decode'), got, want):
        assert g.dtype == torch.float32, name
        assert ((g - w).norm() / w.norm()).item() < bound, name
    # Lower precision really ran: the DiT output is not the float32 one.
    assert (got[1] - want[1]).abs().max().item() > 1e-4
    keys = {backend.onnx_key(stage, WindowShape(5, 32, 48)).precision
            for stage in ('encoder', 'dit', 'decoder')}
    assert keys == {precision}


def test_a_third_window_shape_releases_the_oldest(models, cache):
    backend = create_backend('onnxruntime', models, cache_dir=cache, threads=1)
    assert backend.max_shapes == 2
    first = backend.session('encoder', WindowShape(1, 32, 48))
    backend.session('encoder', WindowShape(5, 32, 48))
    assert backend.session('encoder', WindowShape(1, 32, 48)) is first  # kept, now newest
    backend.session('encoder', WindowShape(1, 16, 16))
    assert {shape for _, shape in backend._loaded} == {WindowShape(1, 32, 48),
                                                       WindowShape(1, 16, 16)}


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


# Relative error (norm) per stage against float32 torch on the CPU. Lower precisions: from
# what they measure on the CPU (onnxruntime fp16 / fp8, torch bf16: decode 2.3e-3 / 0.13 /
# 0.031). fp32: convolutions and matmuls may run in TF32 on the GPU (the cuDNN and
# TensorRT defaults, ~1e-3 per op), still far below what a wrong layout or stage gives.
GPU_BOUNDS = {'fp32': 1e-2, 'fp16': 2e-2, 'bf16': 0.1, 'fp8': 0.25}


def relative_error(got, want):
    """``|got - want| / |want|`` (norms), ``got`` on any device."""
    return ((got.float().cpu() - want).norm() / want.norm()).item()


@needs_cuda
@pytest.mark.parametrize('precision', sorted(GPU_BOUNDS))
def test_tensorrt_matches_torch_on_gpu(models, tmp_path, precision):
    from dvd_ros.model.precision import find_precision

    need = find_precision(precision).min_capability
    if torch.cuda.get_device_capability() < need:
        pytest.skip(f'{precision} needs compute capability >= {need}')
    pytest.importorskip('tensorrt', reason='tensorrt is not installed')
    backend = create_backend('tensorrt', models, device='cuda', dtype=torch.float32,
                             precision=precision, cache_dir=tmp_path)
    clip = video()
    got = run_backend(backend, clip.cuda())
    want = torch_reference(models, clip)
    for name, g, w in zip(('encode', 'transform', 'decode'), got, want):
        error = relative_error(g, w)
        assert error < GPU_BOUNDS[precision], (name, error)
    if precision != 'fp32':  # the engine really runs lower precision
        assert (got[1].float().cpu() - want[1]).abs().max().item() > 1e-5


@needs_cuda
def test_onnxruntime_cuda_matches_torch(models, tmp_path):
    import onnxruntime as ort

    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        pytest.skip('onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)')
    backend = create_backend('onnxruntime', models, device='cuda', cache_dir=tmp_path)
    clip = video()
    got = run_backend(backend, clip.cuda())
    for name, g, w in zip(('encode', 'transform', 'decode'), got, torch_reference(models, clip)):
        assert relative_error(g, w) < GPU_BOUNDS['fp32'], name


@needs_cuda
def test_torch_compile_inductor_on_gpu(models, monkeypatch):
    pytest.importorskip('triton', reason='triton is not installed')
    # True float32 on the GPU, so the CPU's numbers apply (cuDNN convolutions default to TF32).
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
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


class FakeTensorRT11:
    """The parts of the TensorRT 11 Python API that ``build_engine`` may touch.

    Like TensorRT 11 it has no weak-typing builder flags (``BuilderFlag.FP16`` & co.):
    code that still sets them fails here as it would on a current GPU machine.
    """

    __version__ = '11.5.0'

    class Logger:
        """trt.Logger."""

        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag:
        """Network creation flags (11.x: strongly typed only)."""

        STRONGLY_TYPED = 1

    class MemoryPoolType:
        """Builder memory pools."""

        WORKSPACE = 0

    class BuilderFlag:
        """What is left of the builder flags in 11.x (no FP16/BF16/FP8/INT8)."""

        TF32 = 'tf32'

    def __init__(self):
        self.network_flags = None
        self.parsed = None
        self.flags = []
        self.pools = {}
        trt = self

        class Config:
            def set_flag(self, flag):
                trt.flags.append(flag)

            def set_memory_pool_limit(self, pool, size):
                trt.pools[pool] = size

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                trt.network_flags = flags
                return object()

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return b'engine bytes'

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                trt.parsed = path
                return True

        class Engine:
            def __init__(self, data):
                self.data = data

            def create_execution_context(self):
                return ('context', self.data)

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine(data)

        self.Builder, self.OnnxParser, self.Runtime = Builder, OnnxParser, Runtime


def test_tensorrt_build_is_strongly_typed_without_precision_flags(tmp_path):
    from dvd_ros.model.backends.tensorrt_engine import build_engine

    trt = FakeTensorRT11()
    (tmp_path / 'model.onnx').write_bytes(b'graph')
    path = build_engine(trt, tmp_path / 'model.onnx', tmp_path / 'model.engine',
                        workspace_gib=2)
    assert path.read_bytes() == b'engine bytes'
    assert trt.network_flags == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    assert trt.flags == []  # the precision comes from the typed graph
    assert trt.pools == {trt.MemoryPoolType.WORKSPACE: 2 * 2**30}
    assert trt.parsed == str(tmp_path / 'model.onnx')


def test_tensorrt_version_check():
    from dvd_ros.model.backends.tensorrt_engine import check_tensorrt_version

    check_tensorrt_version('10.0.1')
    check_tensorrt_version('11.5.0.post1')
    with pytest.raises(BackendUnavailable, match='TensorRT >= 10.0.*found 8.6.1.*pip install'):
        check_tensorrt_version('8.6.1')


def test_tensorrt_backend_builds_the_typed_graph_of_its_precision(models, tmp_path,
                                                                  monkeypatch):
    """The backend's Python path up to execution, on a stand-in GPU and TensorRT 11."""
    import onnx

    from dvd_ros.model.backends import tensorrt_engine

    trt = FakeTensorRT11()
    monkeypatch.setattr(tensorrt_engine, 'check_cuda', lambda device: torch.device('cpu'))
    monkeypatch.setattr(tensorrt_engine, 'cuda_identity', lambda device: ('Fake H200', '9.0'))
    monkeypatch.setattr(tensorrt_engine, 'import_tensorrt', lambda: trt)
    backend = create_backend('tensorrt', models, precision='fp8', cache_dir=tmp_path)
    shape = WindowShape(5, 32, 48)
    backend.prepare(shape, ['dit'])
    graph = onnx.load(trt.parsed)
    assert 'QuantizeLinear' in {n.op_type for n in graph.graph.node}  # the fp8 graph
    key = backend.engine_key('dit', shape)
    assert (key.precision, key.device, key.runtime) == ('fp8', 'Fake H200', 'tensorrt 11.5.0')
    assert trt.flags == []
    # Same setup again: engine and graph come from the cache, nothing is exported or built.
    trt.parsed = None
    monkeypatch.setattr('dvd_ros.model.export.export_stage',
                        lambda *a, **k: pytest.fail('exported although cached'))
    again = create_backend('tensorrt', models, precision='fp8', cache_dir=tmp_path)
    again.prepare(shape, ['dit'])
    assert trt.parsed is None
    with pytest.raises(BackendUnavailable, match='fp8 needs compute capability >= 8.9'):
        monkeypatch.setattr(tensorrt_engine, 'cuda_identity', lambda d: ('Fake T4', '7.5'))
        create_backend('tensorrt', models, precision='fp8', cache_dir=tmp_path)
