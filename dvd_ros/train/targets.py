"""Training targets: truncated, per-clip normalised disparity (DVD spec 1.5 / 3.4)."""

import numpy as np

from dvd_ros.errors import InputError


def normalized_disparity(depth, valid=None, lo_pct=2.0, hi_pct=98.0, max_depth=None):
    """Map metric depth to the DVD target: per-clip truncated disparity in [0, 1].

    ``disp = 1 / depth``; ``lo, hi`` are the 2nd/98th percentiles of ``disp`` over the valid
    pixels of *all frames jointly*; ``target = clip((disp - lo) / (hi - lo + 1e-5), 0, 1)``.

    :param depth: (T, H, W) or (H, W) float, metres; non-finite or <= 0 is invalid
    :param valid: optional boolean mask of the same shape, ANDed with ``depth > 0``
    :param max_depth: optional clamp of depth before inversion (TartanAir uses 50 m)
    :return: (same shape) float32 in [0, 1], 1 = near; invalid pixels are 0
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim not in (2, 3):
        raise InputError(f'depth must be (T, H, W) or (H, W), got shape {depth.shape}')
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if not ok.any():
        raise InputError('depth clip has no valid pixel (all <= 0 or non-finite); '
                         'drop this clip from the training set')
    if max_depth is not None:
        depth = np.minimum(depth, max_depth)
    disp = np.zeros_like(depth)
    disp[ok] = 1.0 / depth[ok]
    lo, hi = np.percentile(disp[ok], [lo_pct, hi_pct])
    out = np.clip((disp - lo) / (hi - lo + 1e-5), 0.0, 1.0)
    out[~ok] = 0.0
    return out.astype(np.float32)


def target_video(norm_disparity):
    """Replicate a (T, H, W) [0, 1] map to the VAE input (3, T, H, W) float32 in [-1, 1]."""
    d = np.asarray(norm_disparity, dtype=np.float32)
    return np.repeat((2.0 * d - 1.0)[None], 3, axis=0)


def rgb_video(frames):
    """Convert (T, H, W, 3) uint8 RGB to the VAE input (3, T, H, W) float32 in [-1, 1]."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f'frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}')
    return (frames.astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)
