"""torch.compile backend: the three stages (DiT with constants folded) compiled per shape.

The first call of each window shape compiles (tens of seconds on a GPU for the 1.3B
model, longer on CPU); later calls of the same shape reuse the compiled graphs.
Shapes are compiled statically (``dynamic=False``): a robot node sees one window
shape, and the VAE's causal chunk loop unrolls differently for every window length.
"""

import importlib.util
import logging
import os
import shutil

import torch

from dvd_ros.errors import BackendUnavailable
from dvd_ros.model.backends.torch_eager import place_module, resolve_device, resolve_dtype
from dvd_ros.model.export import stage_module

LOG = logging.getLogger('dvd_ros.backends.torch_compile')


def _check_toolchain(compile_backend, device):
    """Raise ``BackendUnavailable`` when ``compile_backend`` cannot generate code on ``device``."""
    if compile_backend != 'inductor':
        return
    if device.type == 'cuda' and importlib.util.find_spec('triton') is None:
        raise BackendUnavailable(
            'backend torch-compile: inductor needs triton for CUDA and it is not installed; '
            'install the triton wheel matching your torch, or use backend torch')
    if device.type == 'cpu':
        compiler = os.environ.get('CXX') or 'g++'
        if shutil.which(compiler) is None and shutil.which('clang++') is None:
            raise BackendUnavailable(
                f'backend torch-compile: inductor on CPU needs a C++ compiler and {compiler!r} '
                'is not on PATH; install g++ (apt install build-essential), or pass '
                "compile_backend='aot_eager', or use backend torch")


class TorchCompileBackend:
    """Run the folded DiT and the VAE stages through ``torch.compile``."""

    name = 'torch-compile'

    def __init__(self, models, device='cpu', dtype=torch.float32, mode=None,
                 compile_backend='inductor', fullgraph=False):
        """Place ``models`` (in place, like the torch backend) and wrap the stages.

        :param models: a ``DVDModels``.
        :param device: 'cpu' or 'cuda[:i]'.
        :param dtype: float32, bfloat16 or float16.
        :param mode: ``torch.compile`` mode (None, 'reduce-overhead', 'max-autotune').
        :param compile_backend: ``torch.compile`` backend ('inductor', 'aot_eager', ...).
        :param fullgraph: ask dynamo for one graph per stage (fails instead of splitting).
        :raises BackendUnavailable: no CUDA / no compiler toolchain for ``compile_backend``.
        """
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        _check_toolchain(compile_backend, self.device)
        self.models = models
        place_module(models.transformer, self.device, self.dtype).eval()
        place_module(models.vae, self.device, self.dtype).eval()
        options = {'mode': mode, 'backend': compile_backend, 'fullgraph': fullgraph,
                   'dynamic': False}
        self.stages = {stage: torch.compile(stage_module(models, stage), **options)
                       for stage in ('encoder', 'dit', 'decoder')}

    @torch.inference_mode()
    def _run(self, stage, x):
        return self.stages[stage](x.to(device=self.device, dtype=self.dtype))

    def encode(self, video):
        """Encode ``(1, 3, T, H, W)`` in [-1, 1] to normalised latents ``(1, 16, T', h, w)``."""
        return self._run('encoder', video)

    def transform(self, latents):
        """Run the folded DiT (t = 500, zero context): latents -> depth latents."""
        return self._run('dit', latents)

    def decode(self, latents):
        """Decode normalised latents to ``(1, 3, T, H, W)`` clamped to [-1, 1]."""
        return self._run('decoder', latents)
