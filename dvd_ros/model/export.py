"""ONNX export of the three DVD stages (VAE encoder, folded DiT, VAE decoder) for one window shape.

Each graph has one input and one output and a fixed shape: the Wan VAE encodes
causally in chunks (frame 0, then groups of 4) with per-conv feature caches, and
tracing a fixed window unrolls that loop into one static graph. The DiT graph is
``FoldedDiT``: the timestep and the zero text context are constants, not inputs.

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter needs
``onnxscript``, which is not a dependency of this package. Graphs are float32; a
TensorRT build lowers the precision itself.
"""

import copy
from dataclasses import dataclass
import os
from pathlib import Path
import time
import warnings

import torch

from dvd_ros.errors import InputError
from dvd_ros.model.engine_cache import EngineKey, weights_fingerprint
from dvd_ros.model.folding import (
    FoldedDiT,
    VaeDecoderStage,
    VaeEncoderStage,
    latent_shape,
    onnx_compatible,
)

STAGES = ('encoder', 'dit', 'decoder')
INPUT_NAMES = {'encoder': 'video', 'dit': 'latents', 'decoder': 'latents'}
OUTPUT_NAMES = {'encoder': 'latents', 'dit': 'depth_latents', 'decoder': 'video'}
# Opset 17 has LayerNormalization and is read by onnxruntime >= 1.14 and TensorRT >= 8.6.
DEFAULT_OPSET = 17
ONNX_FILE = 'model.onnx'
# Bump when the exported graph changes for the same weights (folding or export code).
GRAPH_REVISION = 1
EXPORT_RUNTIME = (f'torch {torch.__version__.split("+")[0]} opset {DEFAULT_OPSET} '
                  f'graph {GRAPH_REVISION}')


@dataclass(frozen=True)
class WindowShape:
    """The fixed shape a graph or engine serves: ``window`` frames of ``height`` x ``width``."""

    window: int
    height: int
    width: int

    def __post_init__(self):
        for name in ('window', 'height', 'width'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f'{name} must be a positive integer, got {value!r}')
        if self.window % 4 != 1:
            raise InputError(f'window must be 4n+1 frames (1, 5, 9, ..., 81), got {self.window}; '
                             f'use {4 * ((self.window + 2) // 4) + 1}')
        for name in ('height', 'width'):
            value = getattr(self, name)
            if value % 16:
                raise InputError(f'{name} must be a multiple of 16, got {value}; '
                                 f'use {16 * -(-value // 16)}')

    @classmethod
    def from_video(cls, video):
        """Return the shape of a ``(1, 3, T, H, W)`` video tensor."""
        _, _, frames, height, width = video.shape
        return cls(int(frames), int(height), int(width))

    @classmethod
    def from_latents(cls, latents):
        """Return the video shape whose latents are ``(1, 16, T', h, w)``."""
        _, _, frames, height, width = latents.shape
        return cls(4 * int(frames) - 3, 8 * int(height), 8 * int(width))

    @property
    def video_shape(self):
        """``(1, 3, T, H, W)``."""
        return (1, 3, self.window, self.height, self.width)

    @property
    def latent_shape(self):
        """``(1, 16, T', H/8, W/8)``."""
        return latent_shape(self.window, self.height, self.width)

    @property
    def tag(self):
        """Short name used in file names, e.g. ``t9_480x640``."""
        return f't{self.window}_{self.height}x{self.width}'

    def input_shape(self, stage):
        """Return the input shape of ``stage``."""
        return self.video_shape if stage == 'encoder' else self.latent_shape


def stage_module(models, stage):
    """Build the pure tensor -> tensor module of ``stage`` for loaded ``models``.

    :param models: a ``DVDModels``.
    :param stage: one of ``STAGES``.
    :return: an ``nn.Module`` in eval mode sharing the models' parameters.
    """
    if stage == 'encoder':
        module = VaeEncoderStage(models)
    elif stage == 'dit':
        module = FoldedDiT(models.transformer)
    elif stage == 'decoder':
        module = VaeDecoderStage(models)
    else:
        raise InputError(f'unknown stage {stage!r}; choose from {", ".join(STAGES)}')
    return module.eval()


def example_input(stage, shape, seed=0, device='cpu'):
    """Return a deterministic float32 example input for ``stage`` at ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.input_shape(stage), generator=generator)
    if stage == 'encoder':
        x = x.clamp(-1, 1)
    return x.to(device)


def export_stage(module, stage, shape, out_dir, opset=DEFAULT_OPSET, device=None):
    """Export ``module`` (from ``stage_module``) to ``out_dir/model.onnx`` for one window shape.

    Models over 2 GB get their weights as external data files in the same folder.

    :param module: the stage module (CPU or CUDA; exported in float32).
    :param stage: one of ``STAGES`` (names the graph's input/output).
    :param shape: the ``WindowShape``.
    :param out_dir: folder to create; one stage per folder.
    :param opset: ONNX opset.
    :param device: where to trace (default: where the module is). Tracing runs the model
        once at full size, so the 1.3B model should be exported on a GPU.
    :return: path of the ``.onnx`` file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    param = next(module.parameters())
    device = torch.device(device) if device is not None else param.device
    if param.dtype != torch.float32 or param.device != device:
        # Graphs are float32 (TensorRT lowers the precision itself): trace a float32 copy.
        module = copy.deepcopy(module).to(device=device, dtype=torch.float32)
        param = next(module.parameters())
    x = example_input(stage, shape, device=param.device)
    with torch.no_grad(), onnx_compatible(module), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream and warns on every call.
        warnings.simplefilter('ignore')
        torch.onnx.export(
            module, (x,), os.fspath(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAMES[stage]], output_names=[OUTPUT_NAMES[stage]],
            do_constant_folding=True)
    return path


def export_all(models, shape, out_dir, stages=STAGES, progress=print):
    """Export the requested stages of ``models`` into ``out_dir/<stage>/model.onnx``.

    :param models: a ``DVDModels`` (float32).
    :param shape: the ``WindowShape``.
    :param out_dir: destination folder.
    :param stages: subset of ``STAGES``.
    :param progress: callable receiving one line per step (``None`` for silence).
    :return: dict stage -> path.
    """
    paths = {}
    for i, stage in enumerate(stages, 1):
        start = time.perf_counter()
        if progress:
            progress(f'[{i}/{len(stages)}] exporting {stage} ({shape.tag}) to ONNX ...')
        paths[stage] = export_stage(stage_module(models, stage), stage, shape,
                                    Path(out_dir) / stage)
        if progress:
            progress(f'[{i}/{len(stages)}] {stage}: {paths[stage]} '
                     f'({time.perf_counter() - start:.1f} s)')
    return paths


def compare_with_onnxruntime(module, stage, shape, path, seed=0):
    """Run ``path`` with onnxruntime (CPU) and ``module`` with torch on the same input.

    :return: ``(max_abs_difference, max_abs_reference)``.
    """
    import onnxruntime as ort

    x = example_input(stage, shape, seed=seed)
    session = ort.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    got = session.run(None, {INPUT_NAMES[stage]: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    return float(abs(got - want).max()), float(abs(want).max())


def stage_fingerprint(models, stage):
    """Hash the weights ``stage`` uses (DiT: transformer; VAE stages: VAE + normalisation)."""
    if stage == 'dit':
        return weights_fingerprint(models.transformer)
    return weights_fingerprint(models.vae, extra=[*models.latents_mean, *models.latents_std])


class ExportedStages:
    """Backend half shared by the runtimes of exported graphs (one graph per window shape).

    A subclass sets ``models`` and ``weights_id`` (dict stage -> fingerprint) and defines
    ``_run(stage, x, shape, out_shape)``, which runs ``stage`` on ``x`` at ``shape``.
    """

    def stage_weights_id(self, stage):
        """Return ``stage``'s weights fingerprint, hashing the weights on first use only."""
        if stage not in self.weights_id:
            self.weights_id[stage] = stage_fingerprint(self.models, stage)
        return self.weights_id[stage]

    def encode(self, video):
        """Encode ``(1, 3, T, H, W)`` in [-1, 1] to normalised latents ``(1, 16, T', h, w)``."""
        shape = WindowShape.from_video(video)
        return self._run('encoder', video, shape, shape.latent_shape)

    def transform(self, latents):
        """Run the folded DiT: normalised latents -> depth latents, same shape."""
        shape = WindowShape.from_latents(latents)
        return self._run('dit', latents, shape, shape.latent_shape)

    def decode(self, latents):
        """Decode normalised latents to ``(1, 3, T, H, W)`` clamped to [-1, 1]."""
        shape = WindowShape.from_latents(latents)
        return self._run('decoder', latents, shape, shape.video_shape)


def onnx_key(stage, shape, weights_id):
    """Return the cache key of the float32 ONNX graph of ``stage`` at ``shape``."""
    return EngineKey(backend='onnx', stage=stage,
                     shape=(shape.window, shape.height, shape.width), precision='fp32',
                     weights=weights_id, runtime=EXPORT_RUNTIME)


def cached_onnx(models, stage, shape, cache, weights_id=None, progress=None, device=None):
    """Return the path of ``stage``'s ONNX graph at ``shape``, exporting it on a cache miss.

    :param models: a ``DVDModels``.
    :param stage: one of ``STAGES``.
    :param shape: the ``WindowShape``.
    :param cache: an ``EngineCache``.
    :param weights_id: precomputed ``stage_fingerprint`` (computed when ``None``).
    :param progress: optional callable receiving a line before a (slow) export.
    :param device: where to trace on a miss (see ``export_stage``).
    :return: ``Path`` of ``model.onnx`` inside the cache entry.
    """
    if weights_id is None:
        weights_id = stage_fingerprint(models, stage)
    key = onnx_key(stage, shape, weights_id)

    def build(folder):
        if progress:
            progress(f'exporting {stage} ({shape.tag}) to ONNX ...')
        return export_stage(stage_module(models, stage), stage, shape, folder, device=device)

    return cache.get_or_build(key, build)
