"""Execution backends: one small protocol, a name -> class mapping, lazy heavy imports.

A backend runs the three latent-space stages of DVD for one window. Pre- and
post-processing (resize, 4n+1 padding, channel mean) stay in ``DepthRegressor``.
Heavy optional dependencies (onnxruntime, tensorrt) are imported only inside their
own module, so a CPU-only machine never imports tensorrt.
"""

import importlib
from typing import Protocol

# name -> 'module:Class'; the module is imported only when the backend is created.
BACKENDS = {
    'torch': 'dvd_ros.model.backends.torch_eager:TorchBackend',
    'torch-compile': 'dvd_ros.model.backends.torch_compile:TorchCompileBackend',
    'onnxruntime': 'dvd_ros.model.backends.onnxrt:OnnxRuntimeBackend',
    'tensorrt': 'dvd_ros.model.backends.tensorrt_engine:TensorRTBackend',
}


class Backend(Protocol):
    """What ``DepthRegressor`` needs from an execution backend (all tensors batch 1)."""

    name: str

    def encode(self, video):
        """Encode ``(1, 3, T, H, W)`` in [-1, 1] to normalised latents ``(1, 16, T', h, w)``."""

    def transform(self, latents):
        """Run the single DiT pass (t = 500, zero text context): latents -> depth latents."""

    def decode(self, latents):
        """Decode normalised latents to ``(1, 3, T, H, W)`` clamped to [-1, 1]."""


def backend_class(name):
    """Return the backend class registered as ``name`` (imports its module).

    :param name: one of ``BACKENDS``.
    :return: the class; construct it with ``(models, device=..., dtype=..., **options)``.
    :raises ValueError: for an unknown name (lists the known ones).
    """
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(
            f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}') from None
    module_name, _, class_name = target.partition(':')
    return getattr(importlib.import_module(module_name), class_name)


def create_backend(name, models, **options):
    """Create the backend ``name`` for loaded ``models`` (a ``DVDModels``).

    :param name: backend name, see ``BACKENDS``.
    :param models: the loaded transformer + VAE.
    :param options: backend options (device, dtype, cache_dir, ...).
    :return: a ``Backend``.
    :raises dvd_ros.errors.BackendUnavailable: when it cannot run here (with the reason).
    """
    return backend_class(name)(models, **options)
