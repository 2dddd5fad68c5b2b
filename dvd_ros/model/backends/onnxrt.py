"""ONNX Runtime backend: the three stages as exported ONNX graphs, one session per window shape.

Graphs are exported on first use of a window shape (``dvd_ros.model.export``) into the
engine cache, so a restart with the same weights and shape loads them directly.
Execution providers: ``cpu`` (always), ``cuda`` and ``tensorrt`` when the installed
onnxruntime build has them (``onnxruntime-gpu``).
"""

import logging
import os
import time

import torch

from dvd_ros.errors import BackendUnavailable, InputError
from dvd_ros.model.engine_cache import EngineCache, cuda_identity
from dvd_ros.model.export import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ExportedStages,
    cached_onnx,
)

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


class OnnxRuntimeBackend(ExportedStages):
    """Run encode / DiT / decode as ONNX graphs with onnxruntime (float32 graphs)."""

    name = 'onnxruntime'

    def __init__(self, models, device='cpu', dtype=torch.float32, provider=None,
                 cache_dir=None, threads=None, precision='fp32', weights_id=None,
                 progress=None):
        """Prepare the backend; graphs are exported and sessions created lazily per shape.

        :param models: a ``DVDModels`` (used to export graphs on a cache miss).
        :param device: ``'cpu'`` or ``'cuda[:i]'``: where inputs and outputs live.
        :param dtype: must be ``torch.float32`` (the graphs are float32).
        :param provider: ``'cpu'``, ``'cuda'`` or ``'tensorrt'``; default from ``device``.
        :param cache_dir: engine cache folder (default ``default_cache_dir()``).
        :param threads: intra-op threads of each session (default: onnxruntime's choice).
        :param precision: ``'fp32'``, or ``'fp16'`` with the TensorRT provider.
        :param weights_id: dict stage -> precomputed weights fingerprint (skips hashing).
        :param progress: optional callable receiving a line before a slow step.
        :raises BackendUnavailable: missing onnxruntime, provider or CUDA device.
        """
        ort = _import_onnxruntime()
        self.ort = ort
        self.models = models
        self.device = torch.device(device)
        self.dtype = dtype
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
        if dtype != torch.float32:
            raise BackendUnavailable(
                f'backend onnxruntime runs float32 graphs, got dtype={dtype}; pass '
                "dtype=torch.float32 (lower precision: provider='tensorrt' with "
                "precision='fp16', or the 'tensorrt' backend)")
        if precision not in ('fp32', 'fp16') or (precision == 'fp16' and provider != 'tensorrt'):
            raise InputError(f'precision {precision!r} is not available with provider '
                             f'{provider}; use fp32 (fp16 needs provider=tensorrt)')
        self.provider = provider
        self.precision = precision
        self.threads = threads
        self.cache = EngineCache(cache_dir)
        self.weights_id = dict(weights_id or {})
        self.progress = progress
        self._sessions = {}

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
        options = {'device_id': index, 'trt_fp16_enable': self.precision == 'fp16',
                   'trt_engine_cache_enable': True,
                   'trt_engine_cache_path': os.fspath(folder),
                   'trt_timing_cache_enable': True,
                   'trt_timing_cache_path': os.fspath(folder)}
        return [('TensorrtExecutionProvider', options), cuda, 'CPUExecutionProvider']

    def session(self, stage, shape):
        """Return the ``InferenceSession`` of ``stage`` at ``shape`` (exporting on a miss)."""
        key = (stage, shape)
        if key not in self._sessions:
            path = cached_onnx(self.models, stage, shape, self.cache,
                               self.stage_weights_id(stage), progress=self.progress)
            options = self.ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = int(self.threads)
            start = time.perf_counter()
            self._sessions[key] = self.ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=self._providers())
            LOG.info('onnxruntime %s session for %s ready in %.1f s (%s)', stage, shape.tag,
                     time.perf_counter() - start, self.provider)
        return self._sessions[key]

    def _run(self, stage, x, shape, out_shape):
        if x.dtype != torch.float32:
            raise InputError(f'onnxruntime backend expects float32 tensors, got {x.dtype}')
        session = self.session(stage, shape)
        if self.provider == 'cpu':
            array = x.detach().to('cpu').contiguous().numpy()
            out = session.run([OUTPUT_NAMES[stage]], {INPUT_NAMES[stage]: array})[0]
            return torch.from_numpy(out).to(self.device)
        return self._run_bound(session, stage, x, out_shape)

    def _run_bound(self, session, stage, x, out_shape):
        # Bind torch's CUDA buffers directly: no host round trip.
        import numpy as np

        x = x.detach().to(self.device).contiguous()
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
