"""Native TensorRT backend: one engine per stage and window shape, built from the ONNX graphs.

Engines are built on first use of a shape (or ahead of time with ``dvd-ros engine
build``) and cached with a manifest keyed by GPU name and compute capability,
TensorRT version, shape, precision and weights hash; any mismatch rebuilds with a
log line naming what changed. ``tensorrt`` is imported only in this module.

Precisions: ``fp32``, ``fp16``, ``bf16`` (compute capability >= 8.0) and ``fp8``
(>= 8.9; FP8 DiT linears calibrated on frames, fp16 elsewhere). Networks are built
strongly typed: the precision is the typed ONNX graph's (``dvd_ros.model.precision``),
never a builder flag. TensorRT 11 removed the weak-typing flags (``BuilderFlag.FP16``,
``BF16``, ``FP8``), and on 10.x strong typing keeps the float32 norms and residual sums
that the modules ask for. Engine inputs and outputs are float32.
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
)
from dvd_ros.model.precision import DEFAULT_PRECISION, PRECISIONS

LOG = logging.getLogger('dvd_ros.backends.tensorrt')
ENGINE_FILE = 'model.engine'
MIN_TENSORRT = (10, 0)  # strongly typed networks and the name-based tensor API


def import_tensorrt():
    """Import ``tensorrt`` or raise ``BackendUnavailable`` with the install command."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f'backend tensorrt: the tensorrt Python package is not installed ({exc}); install '
            'it with `pip install tensorrt` (NVIDIA TensorRT 10 or 11, matching your CUDA), '
            'or use backend onnxruntime / torch-compile') from None
    check_tensorrt_version(tensorrt.__version__)
    return tensorrt


def check_tensorrt_version(version):
    """Raise ``BackendUnavailable`` unless TensorRT ``version`` is >= ``MIN_TENSORRT``."""
    try:
        found = tuple(int(part) for part in version.split('.')[:2])
    except ValueError:
        return  # an unusual version string: let the build report what is missing
    if found < MIN_TENSORRT:
        need = '.'.join(map(str, MIN_TENSORRT))
        raise BackendUnavailable(
            f'backend tensorrt needs TensorRT >= {need} (strongly typed networks), found '
            f'{version}; upgrade with `pip install -U tensorrt`, or use backend onnxruntime')


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
        precision = DEFAULT_PRECISION.get(dtype, 'fp16')
    if precision not in PRECISIONS:
        raise InputError(f'unknown TensorRT precision {precision!r}; choose one of '
                         f'{", ".join(PRECISIONS)}')
    if tuple(capability) < PRECISIONS[precision].min_capability:
        need = '.'.join(map(str, PRECISIONS[precision].min_capability))
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


def build_engine(trt, onnx_path, engine_path, workspace_gib=None, progress=None):
    """Build a serialized, strongly typed TensorRT engine from ``onnx_path`` into ``engine_path``.

    :param trt: the imported ``tensorrt`` module.
    :param onnx_path: the typed ONNX graph (its types are the engine's precision; external
        data beside it is found).
    :param engine_path: destination file.
    :param workspace_gib: builder workspace limit (default: TensorRT's, the whole GPU).
    :param progress: optional callable receiving progress lines.
    :return: ``engine_path``.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Required on 10.x to get the graph's types; accepted and ignored on 11.x, where every
    # network is strongly typed.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f'TensorRT could not parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    monitor = _progress_monitor(trt, progress)
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f'TensorRT failed to build an engine from {onnx_path}; see the '
                           'TensorRT log above')
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


class TensorRTBackend(ExportedStages):
    """Run encode / DiT / decode as TensorRT engines on a CUDA device."""

    name = 'tensorrt'

    def __init__(self, models, device='cuda', dtype=torch.float16, precision=None,
                 cache_dir=None, workspace_gib=None, weights_id=None, progress=None,
                 calibration=None):
        """Check the GPU and TensorRT; engines are built or loaded lazily per window shape.

        :param models: a ``DVDModels`` (used to export and build on a cache miss).
        :param device: a CUDA device.
        :param dtype: dtype of returned tensors; also the default precision.
        :param precision: 'fp32', 'fp16', 'bf16' or 'fp8' (default from ``dtype``).
        :param cache_dir: engine cache folder (default ``default_cache_dir()``).
        :param workspace_gib: TensorRT builder workspace limit in GiB.
        :param weights_id: dict stage -> precomputed weights fingerprint (skips hashing).
        :param progress: optional callable receiving build progress lines.
        :param calibration: fp8: ``(T, H, W, 3)`` uint8 RGB frames of the robot's scene for
            the FP8 scales (default: a rendered synthetic room).
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
        self.calibration = calibration
        self.export_device = self.device  # tracing runs the model once at full size
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)

    def engine_key(self, stage, shape):
        """Return the cache key of ``stage``'s engine at ``shape`` on this GPU."""
        return EngineKey(backend='tensorrt', stage=stage,
                         shape=(shape.window, shape.height, shape.width),
                         precision=self.precision, weights=self.stage_weights_id(stage),
                         device=self.gpu, compute_capability=self.capability,
                         runtime=f'tensorrt {self.trt.__version__}',
                         calibration=self.onnx_key(stage, shape).calibration)

    def engine_path(self, stage, shape):
        """Return the cached engine file of ``stage`` at ``shape``, building it on a miss."""
        key = self.engine_key(stage, shape)

        def build(folder):
            onnx_path = self.onnx_path(stage, shape)
            if self.progress:
                self.progress(f'building TensorRT {self.precision} engine for {stage} '
                              f'({shape.tag}) on {self.gpu} ...')
            return build_engine(self.trt, onnx_path, Path(folder) / ENGINE_FILE,
                                self.workspace_gib, self.progress)

        return key, self.cache.get_or_build(key, build)

    def _context(self, stage, shape):
        return self.loaded(stage, shape, lambda: self._load_engine(stage, shape))[1]

    def _load_engine(self, stage, shape):
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
        LOG.info('tensorrt %s %s engine for %s loaded in %.1f s', stage, self.precision,
                 shape.tag, time.perf_counter() - start)
        return engine, context

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
