"""Torch eager backend: the diffusers modules called directly, the DiT with DVD's constants folded.

``fold=False`` calls the diffusers transformer with the timestep and the 512-row zero
context, exactly as the reference does; the default ``FoldedDiT`` computes the same
(8e-7 apart in float32, ``test/test_folding.py``) without the cross-attention.
"""

import logging

import torch

from dvd_ros.errors import BackendUnavailable, InputError
from dvd_ros.model import presets
from dvd_ros.model.cuda_graphs import StageGraphs
from dvd_ros.model.fast_vae import FastWanVAE, UnsupportedVAE
from dvd_ros.model.folding import FoldedDiT

DTYPES = {
    'float32': torch.float32, 'fp32': torch.float32,
    'bfloat16': torch.bfloat16, 'bf16': torch.bfloat16,
    'float16': torch.float16, 'fp16': torch.float16, 'half': torch.float16,
}
LOG = logging.getLogger('dvd_ros.backends.torch')


def resolve_dtype(dtype):
    """Return the torch dtype for ``dtype`` (a torch dtype or a name such as 'bfloat16').

    :raises InputError: for any other dtype.
    """
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix('torch.')
        if key not in DTYPES:
            raise InputError(f'unknown dtype {dtype!r}; choose float32, bfloat16 or float16')
        return DTYPES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f'unsupported dtype {dtype}; choose float32, bfloat16 or float16')
    return dtype


def resolve_device(device):
    """Return a ``torch.device``; a CUDA device must exist.

    :raises BackendUnavailable: CUDA asked for but not available (names the fix).
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f'unknown device {device!r}; use cpu or cuda[:index]') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f'device {device} requested but this torch build sees no CUDA GPU '
                f'(torch {torch.__version__}); use device=cpu or install a CUDA build of torch')
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f'device {device} does not exist ({torch.cuda.device_count()} CUDA GPUs)')
    elif device.type != 'cpu':
        raise InputError(f'unsupported device {device}; use cpu or cuda[:index]')
    return device


def place_module(module, device, dtype):
    """Move ``module`` to ``device`` and cast its parameters (not its buffers) to ``dtype``.

    Buffers stay as built: diffusers keeps the RoPE tables in float32, and casting them to
    bfloat16 would visibly bend positions near 1024.
    """
    for param in module.parameters():
        if param.dtype != dtype:
            param.data = param.data.to(dtype)
    return module.to(device)


class TorchBackend:
    """Run VAE encode, the single DiT pass and VAE decode with the diffusers modules."""

    name = 'torch'

    def __init__(self, models, device='cpu', dtype=torch.float32, fold=True, fast_vae=True,
                 cuda_graphs=True, precision=None, calibration=None, calibration_size=None,
                 vae_temporal='taps', vae_chunk_frames=None):
        """Place ``models`` on ``device`` in ``dtype`` (in place) and cache the constants.

        :param models: a ``DVDModels``.
        :param device: 'cpu' or 'cuda[:i]'.
        :param dtype: float32, bfloat16 or float16 (torch dtype or name).
        :param fold: run the DiT as ``FoldedDiT`` (constant timestep and cross-attention
            folded; measured 2-4x faster DiT on small models); False = the diffusers call.
        :param fast_vae: run the VAE with ``FastWanVAE`` (our whole-window channels-last
            executor, same numbers; 5-6x faster on CPU); False = the diffusers VAE calls.
            A VAE layout it does not implement falls back to diffusers with an info line.
        :param cuda_graphs: on CUDA, capture each stage once per input shape as a CUDA graph
            and replay it (``dvd_ros.model.cuda_graphs``); ignored on CPU (info line).
        :param precision: None/'' (the run dtype everywhere) or 'fp8': the DiT blocks'
            linears as float8 GEMMs (``dvd_ros.model.scaled_fp8``; needs ``fold``).
        :param calibration: fp8: ``(T, H, W, 3)`` uint8 RGB frames of the scene for the
            input scales; None = a rendered synthetic room.
        :param calibration_size: fp8: ``(height, width)`` the calibration frames are
            encoded at; None = the weights' processing size (480x640 for DVD).
        :param vae_temporal: the fast VAE's causal convolutions: 'taps' (three 2-D
            convolutions) or 'conv3d' (see ``dvd_ros.model.fast_vae``).
        :param vae_chunk_frames: None = the fast VAE runs the whole window at once (fastest);
            else at most this many frames (encode) / latent frames (decode) per pass, the
            same numbers with less GPU memory.
        :raises BackendUnavailable: CUDA requested but absent.
        :raises InputError: an unknown precision, or fp8 without ``fold``.
        """
        self.models = models
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.transformer = place_module(models.transformer, self.device, self.dtype).eval()
        self.vae = place_module(models.vae, self.device, self.dtype).eval()
        shape = (1, -1, 1, 1, 1)
        self.mean = torch.tensor(models.latents_mean, dtype=torch.float32,
                                 device=self.device).view(shape)
        self.std = torch.tensor(models.latents_std, dtype=torch.float32,
                                device=self.device).view(shape)
        self.timestep = torch.tensor([presets.TIMESTEP], dtype=torch.float32, device=self.device)
        # Allocated once: the DiT always sees the same all-zero 512-token text context.
        self.context = torch.zeros(1, presets.CONTEXT_LENGTH, self.transformer.config.text_dim,
                                   dtype=self.dtype, device=self.device)
        # Shares the transformer's parameters; folded after placing, in the run dtype.
        self.folded = FoldedDiT(self.transformer).eval() if fold else None
        self.fast_vae = None
        self.vae_chunk_frames = vae_chunk_frames
        if fast_vae:
            try:
                # Built after placing: it copies the weights in the run dtype and device,
                # with DVD's latent normalisation folded into its first/last layers.
                self.fast_vae = FastWanVAE(self.vae, models.latents_mean, models.latents_std,
                                           temporal=vae_temporal)
            except ValueError as exc:
                if not isinstance(exc, UnsupportedVAE):
                    raise InputError(f'backend torch: {exc}') from None
                LOG.info('fast VAE not used (%s); running the diffusers VAE', exc)
        self.graphs = None  # set after calibration: no graph for the calibration shape
        self.precision = self._quantize(precision, calibration, calibration_size)
        if cuda_graphs and self.device.type == 'cuda':
            self.graphs = StageGraphs(self.device)
        elif cuda_graphs:
            LOG.info('cuda_graphs ignored on %s (CUDA graphs need a CUDA device)', self.device)

    def _quantize(self, precision, calibration, size):
        """Make the folded DiT's linears FP8 and calibrate them; return the precision name."""
        if precision in (None, ''):
            return None
        if precision != 'fp8':
            raise InputError(f'backend torch: precision {precision!r} is not supported; the '
                             "torch backend computes in its dtype, or use precision 'fp8' "
                             '(FP8 DiT linears)')
        if self.folded is None:
            raise InputError("backend torch: precision 'fp8' needs fold=True")
        from dvd_ros.model import scaled_fp8
        from dvd_ros.model.export import WindowShape
        from dvd_ros.model.precision import calibration_frames

        meta = getattr(self.models, 'meta', None) or {}
        height, width = size or (meta.get('height', 480), meta.get('width', 640))
        shape = WindowShape(9, 16 * -(-int(height) // 16), 16 * -(-int(width) // 16))
        layers = scaled_fp8.quantize_blocks(self.folded)
        video = calibration_frames(shape, calibration).to(self.device, self.dtype)
        scaled_fp8.calibrate(self.folded, layers, [self.encode(video)])
        return 'fp8'

    def _stage(self, name, fn, x):
        return fn(x) if self.graphs is None else self.graphs.run(name, fn, x)

    @torch.inference_mode()
    def encode(self, video):
        """Encode ``(1, 3, T, H, W)`` in [-1, 1] to normalised latents ``(1, 16, T', h, w)``."""
        return self._stage('encode', self._encode,
                           video.to(device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def transform(self, latents):
        """Run the single DiT pass at t = 500 with the zero text context."""
        return self._stage('transform', self._transform,
                           latents.to(device=self.device, dtype=self.dtype))

    @torch.inference_mode()
    def decode(self, latents):
        """Decode normalised latents to ``(1, 3, T, H, W)`` clamped to [-1, 1]."""
        return self._stage('decode', self._decode, latents.to(device=self.device))

    def _fast_or_none(self, stage, x):
        """Run the fast VAE's ``stage``; None when it ran out of GPU memory even in chunks."""
        run = getattr(self.fast_vae, stage)
        try:
            return run(x, chunk_frames=self.vae_chunk_frames)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
        # Whole-window activations did not fit: the smallest chunks diffusers uses too.
        smallest = 4 if stage == 'encode' else 1
        LOG.warning('fast VAE %s of %s ran out of GPU memory; running it in chunks of %d '
                    '(set vae_chunk_frames to skip the attempt)', stage, tuple(x.shape),
                    smallest)
        try:
            return run(x, chunk_frames=smallest)
        except torch.OutOfMemoryError:
            LOG.warning('fast VAE %s ran out of GPU memory in chunks too; using the '
                        'diffusers VAE', stage)
            torch.cuda.empty_cache()
            return None

    def _encode(self, video):
        if self.fast_vae is not None:
            out = self._fast_or_none('encode', video)
            if out is not None:
                return out
        mu = self.vae.encode(video).latent_dist.mode()  # posterior mean, never a sample
        return ((mu.float() - self.mean) / self.std).to(self.dtype)

    def _transform(self, latents):
        if self.folded is not None:
            return self.folded(latents)
        return self.transformer(latents, self.timestep, self.context, return_dict=False)[0]

    def _decode(self, latents):
        if self.fast_vae is not None:
            out = self._fast_or_none('decode', latents)
            if out is not None:
                return out
        mu = (latents.float() * self.std + self.mean).to(self.dtype)
        return self.vae.decode(mu, return_dict=False)[0].clamp(-1.0, 1.0)
