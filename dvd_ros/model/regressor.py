"""DepthRegressor: one window of RGB frames -> normalised disparity, one DiT pass (DVD_SPEC 1).

Pre-processing (resize to the processing size, 4n+1 padding) and post-processing
(channel mean, resize back) live here; the three latent-space stages run on an
execution backend (``dvd_ros.model.backends``).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from dvd_ros.errors import InputError, WeightsError
from dvd_ros.model import checkpoint, devices
from dvd_ros.model.backends import create_backend
from dvd_ros.model.backends.torch_eager import resolve_device, resolve_dtype
from dvd_ros.model.transfer import download, upload_frames

MIN_SIDE = 16  # smallest input side accepted (pixels); smaller frames carry no usable depth
DEFAULT_HEIGHT = 480
DEFAULT_WIDTH = 640


def processing_size(height, width, target_height=DEFAULT_HEIGHT, target_width=DEFAULT_WIDTH):
    """Return the ``(height, width)`` DVD processes an ``height`` x ``width`` frame at.

    The frame is scaled (aspect kept, no crop) to cover ``target_height`` x ``target_width``,
    then each side is rounded up to a multiple of 16; the arithmetic is Python float64 as in
    the reference, so e.g. 720p lands exactly on 480 rows.

    :return: ``(H2, W2)``, both multiples of 16.
    """
    ratio = max(target_height / height, target_width / width)
    h1, w1 = math.ceil(height * ratio), math.ceil(width * ratio)
    return 16 * math.ceil(h1 / 16), 16 * math.ceil(w1 / 16)


def padded_length(frames):
    """Return the 4n+1 length a window of ``frames`` frames is padded to (repeat last frame)."""
    return frames + (5 - frames % 4) % 4


def _resize(images, size):
    """Bilinearly resize ``(N, C, H, W)`` float images to ``size`` (align_corners=False)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode='bilinear', align_corners=False,
                         antialias=False)


class DepthRegressor:
    """DVD depth for one window of frames: ``predict(uint8 (T, H, W, 3)) -> (T, H, W)``."""

    def __init__(self, models, device='cpu', dtype=torch.float32, height=None, width=None,
                 backend='torch', **backend_options):
        """Wrap loaded models with an execution backend.

        :param models: a ``DVDModels`` (moved/cast in place by the torch backend).
        :param device: 'cpu' or 'cuda[:i]'.
        :param dtype: float32, bfloat16 or float16 (torch dtype or name), or 'auto'
            (``dvd_ros.model.devices.auto_dtype``).
        :param height: processing target height (pixels); None = the weights' recommended
            size (``models.meta['height']``, 480 for the official weights).
        :param width: processing target width; None likewise (640 for the official weights).
        :param backend: name in ``dvd_ros.model.backends.BACKENDS``.
        :param backend_options: passed to the backend class.
        :raises InputError: bad dtype/device/size.
        :raises dvd_ros.errors.BackendUnavailable: the backend cannot run here.
        """
        self.models = models
        self.device = resolve_device(device)
        self.dtype = (devices.choose_dtype(dtype, self.device, backend) if dtype == devices.AUTO
                      else resolve_dtype(dtype))
        meta = getattr(models, 'meta', None) or {}
        self.height = int(height if height is not None else meta.get('height', DEFAULT_HEIGHT))
        self.width = int(width if width is not None else meta.get('width', DEFAULT_WIDTH))
        for name, value in (('height', self.height), ('width', self.width)):
            if value < MIN_SIDE:
                raise InputError(f'processing {name} must be >= {MIN_SIDE} pixels, got {value}')
        try:
            self.backend = create_backend(backend, models, device=self.device, dtype=self.dtype,
                                          **backend_options)
        except ValueError as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(str(exc)) from None
        self.backend_name = self.backend.name

    @classmethod
    def from_pretrained(cls, path=None, device='cpu', dtype='auto', vae_path=None,
                        lora_alpha=None, **kwargs):
        """Load weights and build the regressor.

        :param path: official release file, converted folder, or None for the embedded
            tiny model (``checkpoint.DEFAULT_WEIGHTS``).
        :param dtype: 'auto' (bfloat16 where the device has it natively, else float32), or
            float32 / bfloat16 / float16; a dtype the device would only emulate is refused
            (``dvd_ros.model.devices.choose_dtype``).
        :param vae_path: Wan2.1 VAE file when the release file has no VAE copy.
        :param lora_alpha: LoRA alpha override for release files (None = rank).
        :param kwargs: ``height``, ``width``, ``backend`` and backend options.
        :raises WeightsError: missing or unusable weights.
        :raises InputError: a dtype the device cannot run natively (names the fix).
        """
        dtype = devices.choose_dtype(dtype, device, kwargs.get('backend', 'torch'))
        if path is None:
            path = checkpoint.DEFAULT_WEIGHTS
            if not (path / checkpoint.META_FILE).is_file():
                raise WeightsError(
                    f'the embedded tiny model is not installed at {path}; reinstall dvd_ros or '
                    'pass a weights path (see `dvd-ros weights`)')
        # Load straight in the run dtype: no float32 copy of a bfloat16 model in memory.
        models = checkpoint.load_models(path, vae_path=vae_path, lora_alpha=lora_alpha,
                                        dtype=dtype)
        return cls(models, device=device, dtype=dtype, **kwargs)

    @property
    def recommended_window(self):
        """Return the window (frames) the weights recommend (``dvd_ros.json``), or None."""
        value = (getattr(self.models, 'meta', None) or {}).get('recommended_window')
        return int(value) if isinstance(value, int) and value >= 1 else None

    def processing_size(self, height, width):
        """Return the ``(H, W)`` an input of ``height`` x ``width`` is processed at."""
        return processing_size(height, width, self.height, self.width)

    def predict(self, frames):
        """Estimate normalised disparity for one window of RGB frames.

        :param frames: ``(T, H, W, 3)`` uint8 RGB, T >= 1, H and W >= 16.
        :return: ``(T, H, W)`` float32 in [0, 1], 1 = near (affine-normalised disparity).
        :raises InputError: wrong type, dtype, shape or size.
        """
        frames = self._validate(frames)
        count, height, width = frames.shape[:3]
        with torch.inference_mode():
            video = upload_frames(frames, self.device)  # uint8; pinned + non-blocking on CUDA
            video = video.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, H, W) in [0, 1]
            video = _resize(video, self.processing_size(height, width))
            depth = self.predict_window(video.unsqueeze(0))[0]  # (T, H2, W2)
            depth = _resize(depth.unsqueeze(1), (height, width))[:, 0]
            return download(depth)

    def predict_window(self, frames01, return_rgb=False):
        """Run DVD on frames already at a processing size (multiples of 16).

        :param frames01: ``(1, T, 3, H, W)`` float in [0, 1], any T >= 1 (padded to 4n+1 by
            repeating the last frame; padded outputs are dropped).
        :param return_rgb: also return the 3-channel map ``(1, T, H, W, 3)``.
        :return: ``(1, T, H, W)`` float32 in [0, 1] (channel mean), or ``(depth, rgb)``.
        :raises InputError: wrong shape or a side that is not a multiple of 16.
        """
        if frames01.ndim != 5 or frames01.shape[0] != 1 or frames01.shape[2] != 3:
            raise InputError(f'frames01 must be (1, T, 3, H, W), got {tuple(frames01.shape)}')
        _, count, _, height, width = frames01.shape
        if count < 1 or height % 16 or width % 16:
            raise InputError(
                f'frames01 must have T >= 1 and H, W multiples of 16, got {tuple(frames01.shape)}'
                '; use predict() to resize arbitrary frames')
        with torch.inference_mode():
            video = frames01[0].to(self.device)
            extra = padded_length(count) - count
            if extra:
                video = torch.cat([video, video[-1:].expand(extra, -1, -1, -1)])
            video = (video.float() * 2.0 - 1.0).permute(1, 0, 2, 3).unsqueeze(0)
            latents = self.backend.encode(video)
            decoded = self.backend.decode(self.backend.transform(latents))
            rgb = ((decoded.float() + 1.0) / 2.0).clamp(0.0, 1.0)[0, :, :count]  # (3, T, H, W)
            depth = rgb.mean(dim=0).unsqueeze(0)
            if return_rgb:
                return depth, rgb.permute(1, 2, 3, 0).unsqueeze(0)
            return depth

    @staticmethod
    def _validate(frames):
        if isinstance(frames, (list, tuple)):
            if not frames:
                raise InputError('no frames given; pass at least one (H, W, 3) uint8 frame')
            try:
                frames = np.stack(frames)
            except ValueError as exc:
                raise InputError(f'frames of one window must share one size ({exc})') from None
        if not isinstance(frames, np.ndarray):
            raise InputError(
                f'frames must be a numpy uint8 array (T, H, W, 3), got {type(frames).__name__}')
        if frames.dtype != np.uint8:
            raise InputError(
                f'frames must be uint8 RGB, got {frames.dtype}; convert with '
                '(x * 255).round().astype(np.uint8) for floats in [0, 1]')
        if frames.ndim == 3 and frames.shape[-1] == 3:
            raise InputError(
                f'frames must be (T, H, W, 3), got one image {frames.shape}; use frames[None]')
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError(f'frames must be (T, H, W, 3) RGB, got shape {frames.shape}')
        count, height, width = frames.shape[:3]
        if count < 1:
            raise InputError('no frames given (T = 0); pass at least one frame')
        if min(height, width) < MIN_SIDE:
            raise InputError(
                f'frames are {width}x{height}; both sides must be >= {MIN_SIDE} pixels')
        return np.ascontiguousarray(frames)
