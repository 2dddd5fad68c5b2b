"""Native TensorRT backend: one engine per stage and window shape, built from the ONNX graphs.

Engines are built on first use of a shape (or ahead of time with ``dvd-ros engine
build``) and cached with a manifest keyed by GPU name and compute capability,
TensorRT version, shape, precision and weights hash; any mismatch rebuilds with a
log line naming what changed. ``tensorrt`` is imported only in this module.

Precisions: ``fp32`` (TF32 allowed), ``fp16``, ``bf16`` (compute capability >= 8.0)
and ``fp8`` (>= 8.9). The ONNX graphs are float32 and their inputs/outputs stay
float32; TensorRT picks lower-precision kernels inside. ``fp8`` only sets TensorRT's
FP8 flag: without Q/DQ nodes from a calibration tool (NVIDIA ModelOpt) the layers
run in fp16, and a warning says so.
"""

import logging
import os
from pathlib import Path
import time

import torch

from dvd_ros.errors import BackendUnavailable, InputError
from dvd_ros.model.engine_cache import EngineCache, EngineKey, cuda_identity
from dvd_ros.model.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    STAGES,
    ExportedStages,
    cached_onnx,
)

LOG = logging.getLogger('dvd_ros.backends.tensorrt')
ENGINE_FILE = 'model.engine'
# precision -> minimum compute capability.
PRECISIONS = {'fp32': (0, 0), 'fp16': (5, 3), 'bf16': (8, 0), 'fp8': (8, 9)}
_DEFAULT_PRECISION = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def import_tensorrt():
    """Import ``tensorrt`` or raise ``BackendUnavailable`` with the install command."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f'backend tensorrt: the tensorrt Python package is not installed ({exc}); install '
            'it with `pip install tensorrt` (NVIDIA TensorRT 10, matching your CUDA), or use '
            'backend onnxruntime / torch-compile') from None
    return tensorrt


def check_cuda(device):
    """Return ``torch.device(device)`` if it is a usable CUDA device, else raise."""
    device = torch.device(device)
    if device.type != 'cuda':
        raise BackendUnavailable(
            f'backend tensorrt runs on an NVIDIA GPU, got device={device}; pass device=cuda, '
            'or use backend onnxruntime / torch on the CPU')
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f'backend tensorrt: torch sees no CUDA GPU (torch {torch.__version__}, built for '
            f'CUDA {torch.version.cuda}); install a CUDA build of torch and the NVIDIA driver, '
            'or use backend onnxruntime / torch on the CPU')
    return device


def resolve_precision(precision, dtype, capability):
    """Return the precision name, checking that the GPU of ``capability`` (major, minor) has it."""
    if precision is None:
        precision = _DEFAULT_PRECISION.get(dtype, 'fp16')
    if precision not in PRECISIONS:
        raise InputError(f'unknown TensorRT precision {precision!r}; choose one of '
                         f'{", ".join(PRECISIONS)}')
    if tuple(capability) < PRECISIONS[precision]:
        need = '.'.join(map(str, PRECISIONS[precision]))
        have = '.'.join(map(str, capability))
        raise BackendUnavailable(
            f'backend tensorrt: precision {precision} needs compute capability >= {need}, this '
            f'GPU has {have}; use precision fp16')
    return precision


def _progress_monitor(trt, progress):
    """Return a TensorRT ``IProgressMonitor`` printing phase starts to ``progress`` (TRT 10)."""
    if progress is None or not hasattr(trt, 'IProgressMonitor'):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                progress(f'  tensorrt: {phase_name} ({num_steps} steps)')

        def step_complete(self, phase_name, step):
            return True

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def build_engine(trt, onnx_path, engine_path, precision, workspace_gib=None, progress=None):
    """Build a serialized TensorRT engine from ``onnx_path`` into ``engine_path``.

    :param trt: the imported ``tensorrt`` module.
    :param onnx_path: the float32 ONNX graph (external data beside it is found).
    :param engine_path: destination file.
    :param precision: one of ``PRECISIONS``.
    :param workspace_gib: builder workspace limit (default: TensorRT's, the whole GPU).
    :param progress: optional callable receiving progress lines.
    :return: ``engine_path``.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH'):  # TensorRT 8.x
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT could not parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if precision in ('fp16', 'fp8'):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == 'bf16':
        config.set_flag(trt.BuilderFlag.BF16)
    if precision == 'fp8':
        config.set_flag(trt.BuilderFlag.FP8)
        LOG.warning('tensorrt fp8: the graph has no Q/DQ (calibration) nodes, so TensorRT '
                    'runs its layers in fp16; quantise the ONNX with NVIDIA ModelOpt for FP8')
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path} '
                           f'({precision}); see the TensorRT log above')
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


class TensorRTBackend(ExportedStages):
    """Run encode / DiT / decode as TensorRT engines on a CUDA device."""

    name = 'tensorrt'

    def __init__(self, models, device='cuda', dtype=torch.float16, precision=None,
                 cache_dir=None, workspace_gib=None, weights_id=None, progress=None):
        """Check the GPU and TensorRT; engines are built or loaded lazily per window shape.

        :param models: a ``DVDModels`` (used to export and build on a cache miss).
        :param device: a CUDA device.
        :param dtype: dtype of returned tensors; also the default precision.
        :param precision: 'fp32', 'fp16', 'bf16' or 'fp8' (default from ``dtype``).
        :param cache_dir: engine cache folder (default ``default_cache_dir()``).
        :param workspace_gib: TensorRT builder workspace limit in GiB.
        :param weights_id: dict stage -> precomputed weights fingerprint (skips hashing).
        :param progress: optional callable receiving build progress lines.
        :raises BackendUnavailable: no CUDA, no tensorrt, or precision not on this GPU.
        """
        self.device = check_cuda(device)
        self.trt = import_tensorrt()
        self.models = models
        self.dtype = dtype
        self.gpu, self.capability = cuda_identity(self.device)
        major, minor = (int(v) for v in self.capability.split('.'))
        self.precision = resolve_precision(precision, dtype, (major, minor))
        self.cache = EngineCache(cache_dir)
        self.workspace_gib = workspace_gib
        self.weights_id = dict(weights_id or {})
        self.progress = progress
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self._engines = {}

    def engine_key(self, stage, shape):
        """Return the cache key of ``stage``'s engine at ``shape`` on this GPU."""
        return EngineKey(backend='tensorrt', stage=stage,
                         shape=(shape.window, shape.height, shape.width),
                         precision=self.precision, weights=self.stage_weights_id(stage),
                         device=self.gpu, compute_capability=self.capability,
                         runtime=f'tensorrt {self.trt.__version__}')

    def engine_path(self, stage, shape):
        """Return the cached engine file of ``stage`` at ``shape``, building it on a miss."""
        key = self.engine_key(stage, shape)

        def build(folder):
            onnx_path = cached_onnx(self.models, stage, shape, self.cache,
                                    self.stage_weights_id(stage), progress=self.progress,
                                    device=self.device)
            if self.progress:
                self.progress(f'building TensorRT {self.precision} engine for {stage} '
                              f'({shape.tag}) on {self.gpu} ...')
            return build_engine(self.trt, onnx_path, Path(folder) / ENGINE_FILE,
                                self.precision, self.workspace_gib, self.progress)

        return key, self.cache.get_or_build(key, build)

    def _context(self, stage, shape):
        if (stage, shape) in self._engines:
            return self._engines[stage, shape][1]
        key, path = self.engine_path(stage, shape)
        start = time.perf_counter()
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            # The manifest matched but TensorRT still refused it (e.g. a plugin or driver
            # change the key does not capture): rebuild once instead of failing.
            self.cache.invalidate(key, 'TensorRT could not deserialize the engine')
            key, path = self.engine_path(stage, shape)
            engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f'TensorRT cannot load the engine it just built: {path}')
        context = engine.create_execution_context()
        self._engines[stage, shape] = (engine, context)
        LOG.info('tensorrt %s engine for %s loaded in %.1f s', stage, shape.tag,
                 time.perf_counter() - start)
        return context

    def prepare(self, shape, stages=STAGES):
        """Build or load the engines of ``stages`` for ``shape`` ahead of the first window."""
        for stage in stages:
            self._context(stage, shape)

    def _run(self, stage, x, shape, out_shape):
        context = self._context(stage, shape)
        x = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        context.set_tensor_address(INPUT_NAMES[stage], x.data_ptr())
        context.set_tensor_address(OUTPUT_NAMES[stage], out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f'TensorRT execution of the {stage} engine failed ({shape.tag})')
        return out.to(self.dtype)
