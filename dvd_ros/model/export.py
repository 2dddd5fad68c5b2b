"""ONNX export of the three DVD stages (VAE encoder, folded DiT, VAE decoder) for one window shape.

Each graph has one input and one output and a fixed shape: the Wan VAE encodes
causally in chunks (frame 0, then groups of 4) with per-conv feature caches, and
tracing a fixed window unrolls that loop into one static graph. The DiT graph is
``FoldedDiT``: the timestep and the zero text context are constants, not inputs.

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter needs
``onnxscript``, which is not a dependency of this package. A graph is made per
precision (``dvd_ros.model.precision``): TensorRT builds strongly typed networks, so
the graph's types are the engine's precision. Inputs and outputs are float32 in all.
"""

from collections import OrderedDict
import copy
from dataclasses import dataclass
import os
from pathlib import Path
import time
import warnings

import torch

from dvd_ros.errors import InputError
from dvd_ros.model.backends.torch_eager import place_module
from dvd_ros.model.engine_cache import EngineKey, weights_fingerprint
from dvd_ros.model.folding import (
    FoldedDiT,
    VaeDecoderStage,
    VaeEncoderStage,
    latent_shape,
    onnx_compatible,
)
from dvd_ros.model.precision import (
    TypedStage,
    calibrate_fp8,
    calibration_frames,
    calibration_id,
    find_precision,
    quantize_linears,
)

STAGES = ('encoder', 'dit', 'decoder')
INPUT_NAMES = {'encoder': 'video', 'dit': 'latents', 'decoder': 'latents'}
OUTPUT_NAMES = {'encoder': 'latents', 'dit': 'depth_latents', 'decoder': 'video'}
# The opset of each precision's graph is ``Precision.opset`` (17 for fp32 / fp16).
ONNX_FILE = 'model.onnx'
# Bump when the exported graph changes for the same weights (folding or export code).
GRAPH_REVISION = 1


def export_runtime(opset):
    """Return the cache key's runtime field of graphs exported at ``opset`` by this code."""
    return f'torch {torch.__version__.split("+")[0]} opset {opset} graph {GRAPH_REVISION}'


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


def export_stage(module, stage, shape, out_dir, opset=None, device=None, precision='fp32',
                 calibration=None):
    """Export ``module`` (from ``stage_module``) to ``out_dir/model.onnx`` for one window shape.

    Models over 2 GB get their weights as external data files in the same folder.

    :param module: the stage module (CPU or CUDA, any dtype; it is not modified).
    :param stage: one of ``STAGES`` (names the graph's input/output).
    :param shape: the ``WindowShape``.
    :param out_dir: folder to create; one stage per folder.
    :param opset: ONNX opset (default: what ``precision`` needs).
    :param device: where to trace (default: where the module is). Tracing runs the model
        once at full size, so the 1.3B model should be exported on a GPU.
    :param precision: ``'fp32'``, ``'fp16'``, ``'bf16'`` or ``'fp8'``: the dtype the graph
        computes in (its input and output are float32 whatever the precision).
    :param calibration: fp8 DiT only: normalised latents ``(1, 16, T', h, w)`` on which the
        FP8 input scales are calibrated (see ``calibration_latents``).
    :return: path of the ``.onnx`` file.
    """
    spec = find_precision(precision)
    opset = opset or spec.opset
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_FILE
    param = next(module.parameters())
    device = torch.device(device) if device is not None else param.device
    if param.dtype != torch.float32 or param.device != device or spec.name != 'fp32':
        # Trace a float32 copy (quantised and cast below): the caller's module stays as it is.
        module = copy.deepcopy(module).to(device=device, dtype=torch.float32)
    if _calibrated(stage, precision):
        if calibration is None:
            raise InputError('an fp8 DiT graph needs calibration latents; pass calibration=')
        calibrate_fp8(module, quantize_linears(module), [calibration])
    if spec.dtype != torch.float32:
        # Parameters only, as in the torch backend: the RoPE tables stay float32.
        module = TypedStage(place_module(module, device, spec.dtype), spec.dtype).eval()
    x = example_input(stage, shape, device=device)
    with torch.no_grad(), onnx_compatible(module), warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream and warns on every call.
        warnings.simplefilter('ignore')
        torch.onnx.export(
            module, (x,), os.fspath(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAMES[stage]], output_names=[OUTPUT_NAMES[stage]],
            do_constant_folding=True)
    return path


@torch.no_grad()
def calibration_latents(models, shape, frames=None, device=None):
    """Encode calibration frames to the normalised latents the DiT sees at ``shape``'s size.

    :param models: a ``DVDModels``.
    :param shape: the ``WindowShape``.
    :param frames: ``(T, H, W, 3)`` uint8 RGB, or ``None`` for a rendered synthetic room.
    :param device: where to encode (default: where the VAE is).
    :return: ``(1, 16, T', h, w)`` float32.
    """
    encoder = VaeEncoderStage(models).eval()
    param = next(encoder.parameters())
    if device is not None and torch.device(device) != param.device:
        encoder = copy.deepcopy(encoder).to(device)
        param = next(encoder.parameters())
    video = calibration_frames(shape, frames)
    return encoder(video.to(device=param.device, dtype=param.dtype)).float()


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
    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs warn about constants they cannot fold
    session = ort.InferenceSession(os.fspath(path), sess_options=options,
                                   providers=['CPUExecutionProvider'])
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

    A subclass sets ``models``, ``cache`` (an ``EngineCache``), ``weights_id`` (dict
    stage -> fingerprint), ``precision``, ``calibration`` (fp8 frames or ``None``),
    ``progress`` and ``export_device`` (where to trace), and defines
    ``_run(stage, x, shape, out_shape)``, which runs ``stage`` on ``x`` at ``shape``.
    """

    # Sessions / engines of this many window shapes stay loaded (each holds its own copy
    # of the weights: 2.6 GB for the 1.3B DiT in 16-bit); older shapes are released.
    max_shapes = 2

    def loaded(self, stage, shape, load):
        """Return ``load()``'s runtime object for ``stage`` at ``shape``, loading it once.

        Objects of the ``max_shapes`` most recently used shapes are kept; the others are
        dropped (an offline run's short last window must not pin a second 1.3B engine).
        """
        items = self.__dict__.setdefault('_loaded', OrderedDict())
        if (stage, shape) not in items:
            items[stage, shape] = load()
        items.move_to_end((stage, shape))
        recent = list(dict.fromkeys(s for _, s in reversed(items)))[:self.max_shapes]
        for old in [k for k in items if k[1] not in recent]:
            del items[old]
        return items[stage, shape]

    def onnx_key(self, stage, shape):
        """Return the cache key of the graph this backend runs for ``stage`` at ``shape``."""
        return onnx_key(stage, shape, self.stage_weights_id(stage), self.precision,
                        self.calibration)

    def onnx_path(self, stage, shape):
        """Return the cached graph of ``stage`` at ``shape``, exporting it on a miss."""
        return cached_onnx(self.models, stage, shape, self.cache, self.stage_weights_id(stage),
                           progress=self.progress, device=self.export_device,
                           precision=self.precision, calibration=self.calibration)

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


def _calibrated(stage, precision):
    return stage == 'dit' and find_precision(precision).fp8_linears


def onnx_key(stage, shape, weights_id, precision='fp32', calibration=None):
    """Return the cache key of ``stage``'s ONNX graph at ``shape`` in ``precision``.

    :param calibration: the FP8 calibration frames or ``None`` (hashed for the fp8 DiT only).
    """
    digest = calibration_id(calibration) if _calibrated(stage, precision) else ''
    return EngineKey(backend='onnx', stage=stage,
                     shape=(shape.window, shape.height, shape.width), precision=precision,
                     weights=weights_id, runtime=export_runtime(find_precision(precision).opset),
                     calibration=digest)


def cached_onnx(models, stage, shape, cache, weights_id=None, progress=None, device=None,
                precision='fp32', calibration=None):
    """Return the path of ``stage``'s ONNX graph at ``shape``, exporting it on a cache miss.

    :param models: a ``DVDModels``.
    :param stage: one of ``STAGES``.
    :param shape: the ``WindowShape``.
    :param cache: an ``EngineCache``.
    :param weights_id: precomputed ``stage_fingerprint`` (computed when ``None``).
    :param progress: optional callable receiving a line before a (slow) export.
    :param device: where to trace on a miss (see ``export_stage``).
    :param precision: the graph's precision (see ``export_stage``).
    :param calibration: fp8: ``(T, H, W, 3)`` uint8 frames of the user's scene for the FP8
        scales, or ``None`` for a rendered synthetic room.
    :return: ``Path`` of ``model.onnx`` inside the cache entry.
    """
    if weights_id is None:
        weights_id = stage_fingerprint(models, stage)
    key = onnx_key(stage, shape, weights_id, precision, calibration)

    def build(folder):
        if progress:
            progress(f'exporting {stage} ({shape.tag}, {precision}) to ONNX ...')
        latents = None
        if _calibrated(stage, precision):
            latents = calibration_latents(models, shape, calibration, device=device)
        return export_stage(stage_module(models, stage), stage, shape, folder, device=device,
                            precision=precision, calibration=latents)

    return cache.get_or_build(key, build)
