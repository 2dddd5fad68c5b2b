"""ONNX Runtime backend: the three stages as exported ONNX graphs, one session per window shape.

Graphs are exported on first use of a window shape (``dvd_ros.model.export``) into the
engine cache, so a restart with the same weights and shape loads them directly.
Execution providers: ``cpu`` (always), ``cuda`` and ``tensorrt`` when the installed
onnxruntime build has them (``onnxruntime-gpu``). The precision is the graph's
(``dvd_ros.model.precision``); inputs and outputs are float32 in every graph.
"""

import logging
import os
import time

import torch

from dvd_ros.errors import BackendUnavailable, InputError
from dvd_ros.model.backends.torch_eager import resolve_dtype
from dvd_ros.model.engine_cache import EngineCache, cuda_identity
from dvd_ros.model.export import INPUT_NAMES, OUTPUT_NAMES, ExportedStages
from dvd_ros.model.precision import DEFAULT_PRECISION, find_precision

LOG = logging.getLogger('dvd_ros.backends.onnxruntime')
PROVIDERS = {
    'cpu': 'CPUExecutionProvider',
    'cuda': 'CUDAExecutionProvider',
    'tensorrt': 'TensorrtExecutionProvider',
}


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(
            f'backend onnxruntime: onnxruntime is not installed ({exc}); install it with '
            '`pip install onnxruntime` (CPU) or `pip install onnxruntime-gpu` (CUDA/TensorRT)'
        ) from None
    return onnxruntime


def check_precision(precision, provider):
    """Return ``precision`` if graphs of it run on ``provider``, else raise naming the fix.

    :raises InputError: unknown precision.
    :raises BackendUnavailable: bf16 on the CPU provider.
    """
    precision = find_precision(precision).name
    if precision == 'bf16' and provider == 'cpu':
        raise BackendUnavailable(
            'backend onnxruntime: the CPU provider has no bfloat16 kernels (Conv, MatMul); '
            'use precision fp32 or fp16 (dtype float32 / float16) on the CPU, or bf16 with '
            'provider cuda or tensorrt')
    return precision


class OnnxRuntimeBackend(ExportedStages):
    """Run encode / DiT / decode as ONNX graphs with onnxruntime."""

    name = 'onnxruntime'

    def __init__(self, models, device='cpu', dtype=torch.float32, provider=None,
                 cache_dir=None, threads=None, precision=None, weights_id=None,
                 progress=None, calibration=None):
        """Prepare the backend; graphs are exported and sessions created lazily per shape.

        :param models: a ``DVDModels`` (used to export graphs on a cache miss).
        :param device: ``'cpu'`` or ``'cuda[:i]'``: where inputs and outputs live.
        :param dtype: dtype of returned tensors; also the default precision.
        :param provider: ``'cpu'``, ``'cuda'`` or ``'tensorrt'``; default from ``device``.
        :param cache_dir: engine cache folder (default ``default_cache_dir()``).
        :param threads: intra-op threads of each session (default: onnxruntime's choice).
        :param precision: graph precision ``'fp32'``, ``'fp16'``, ``'bf16'`` (not on the CPU
            provider) or ``'fp8'`` (on the CPU emulated, for accuracy checks); default from
            ``dtype``.
        :param weights_id: dict stage -> precomputed weights fingerprint (skips hashing).
        :param progress: optional callable receiving a line before a slow step.
        :param calibration: fp8: ``(T, H, W, 3)`` uint8 RGB frames for the FP8 scales
            (default: a rendered synthetic room).
        :raises BackendUnavailable: missing onnxruntime, provider or CUDA device, or a
            precision the provider cannot run.
        """
        ort = _import_onnxruntime()
        self.ort = ort
        self.models = models
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype)
        provider = provider or ('cpu' if self.device.type == 'cpu' else 'cuda')
        if provider not in PROVIDERS:
            raise InputError(f'unknown onnxruntime provider {provider!r}; choose one of '
                             f'{", ".join(PROVIDERS)}')
        available = ort.get_available_providers()
        if PROVIDERS[provider] not in available:
            raise BackendUnavailable(
                f'backend onnxruntime: execution provider {PROVIDERS[provider]} is not in this '
                f'onnxruntime build (has {", ".join(available)}); install onnxruntime-gpu '
                'with matching CUDA/TensorRT libraries, or use provider=cpu')
        if provider != 'cpu' and not torch.cuda.is_available():
            raise BackendUnavailable(f'backend onnxruntime: provider {provider} needs a CUDA '
                                     'device and torch sees none; use provider=cpu')
        if provider != 'cpu' and self.device.type != 'cuda':
            raise InputError(f'provider {provider} runs on the GPU; pass device=cuda '
                             f'(got device={self.device})')
        self.precision = check_precision(precision or DEFAULT_PRECISION[self.dtype], provider)
        self.provider = provider
        self.threads = threads
        self.cache = EngineCache(cache_dir)
        self.weights_id = dict(weights_id or {})
        self.progress = progress
        self.calibration = calibration
        self.export_device = None  # trace where the models are

    def _providers(self):
        index = self.device.index or 0
        cuda = ('CUDAExecutionProvider', {'device_id': index})
        if self.provider == 'cpu':
            return ['CPUExecutionProvider']
        if self.provider == 'cuda':
            return [cuda, 'CPUExecutionProvider']
        gpu, capability = cuda_identity(self.device)
        # onnxruntime's own TensorRT engine cache is only valid for this GPU and build.
        folder = self.cache.root / 'ort-tensorrt' / \
            f'{gpu.replace(" ", "_")}-sm{capability}-ort{self.ort.__version__}'
        folder.mkdir(parents=True, exist_ok=True)
        # No trt_fp16_enable: that is TensorRT's weak typing (gone in TensorRT 11); the
        # provider builds the typed graph strongly typed, in the graph's precision.
        options = {'device_id': index,
                   'trt_engine_cache_enable': True,
                   'trt_engine_cache_path': os.fspath(folder),
                   'trt_timing_cache_enable': True,
                   'trt_timing_cache_path': os.fspath(folder)}
        return [('TensorrtExecutionProvider', options), cuda, 'CPUExecutionProvider']

    def session(self, stage, shape):
        """Return the ``InferenceSession`` of ``stage`` at ``shape`` (exporting on a miss)."""
        return self.loaded(stage, shape, lambda: self._create_session(stage, shape))

    def _create_session(self, stage, shape):
        path = self.onnx_path(stage, shape)
        options = self.ort.SessionOptions()
        # Errors only: fp16 graphs make the CPU provider warn about every constant it
        # cannot pre-compute in fp16, which says nothing about the result.
        options.log_severity_level = 3
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        start = time.perf_counter()
        session = self.ort.InferenceSession(os.fspath(path), sess_options=options,
                                            providers=self._providers())
        LOG.info('onnxruntime %s %s session for %s ready in %.1f s (%s)', stage,
                 self.precision, shape.tag, time.perf_counter() - start, self.provider)
        return session

    def _run(self, stage, x, shape, out_shape):
        session = self.session(stage, shape)
        if self.provider == 'cpu':
            array = x.detach().to(device='cpu', dtype=torch.float32).contiguous().numpy()
            out = session.run([OUTPUT_NAMES[stage]], {INPUT_NAMES[stage]: array})[0]
            return torch.from_numpy(out).to(device=self.device, dtype=self.dtype)
        return self._run_bound(session, stage, x, out_shape).to(self.dtype)

    def _run_bound(self, session, stage, x, out_shape):
        # Bind torch's CUDA buffers directly: no host round trip.
        import numpy as np

        x = x.detach().to(device=self.device, dtype=torch.float32).contiguous()
        out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
        index = self.device.index or 0
        binding = session.io_binding()
        binding.bind_input(INPUT_NAMES[stage], 'cuda', index, np.float32, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(OUTPUT_NAMES[stage], 'cuda', index, np.float32, tuple(out.shape),
                            out.data_ptr())
        torch.cuda.synchronize(self.device)
        session.run_with_iobinding(binding)
        return out
