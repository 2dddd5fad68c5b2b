"""False-colour rendering of depth / disparity maps for quick looks (numpy + OpenCV)."""

import cv2
import numpy as np

from dvd_ros.errors import InputError

# Name -> OpenCV colormap id. 'gray' is handled without OpenCV's table (plain ramp).
COLORMAPS = {
    'turbo': cv2.COLORMAP_TURBO,
    'jet': cv2.COLORMAP_JET,
    'inferno': cv2.COLORMAP_INFERNO,
    'magma': cv2.COLORMAP_MAGMA,
    'plasma': cv2.COLORMAP_PLASMA,
    'viridis': cv2.COLORMAP_VIRIDIS,
    'bone': cv2.COLORMAP_BONE,
    'gray': None,
}


def colorize(values, vmin=None, vmax=None, colormap='turbo'):
    """Map a scalar image to colours: ``(H, W) float32 -> (H, W, 3) uint8 RGB``, NaN -> black.

    :param values: (H, W) float array (disparity, depth, confidence, ...); NaN/inf = no data.
    :param vmin: value drawn at the low end of the colormap (default: the finite minimum).
    :param vmax: value drawn at the high end (default: the finite maximum).
    :param colormap: one of :data:`COLORMAPS`.
    :return: (H, W, 3) uint8 RGB image.
    """
    if colormap not in COLORMAPS:
        raise InputError(f'unknown colormap {colormap!r}; use one of {sorted(COLORMAPS)}')
    values = np.asarray(values)
    if values.ndim != 2 or values.size == 0:
        raise InputError(f'colorize expects a non-empty (H, W) array, got shape {values.shape}')
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if vmin is None or vmax is None:
        # min/max instead of percentiles: one pass, and cheap enough for 30 Hz VGA.
        valid = values[finite]
        lo = float(valid.min()) if valid.size else 0.0
        hi = float(valid.max()) if valid.size else 1.0
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = float(vmax) - float(vmin)
    scale = 255.0 / span if span > 0 else 0.0
    level = np.where(finite, (values - np.float32(vmin)) * np.float32(scale), 0.0)
    level = np.clip(level, 0.0, 255.0).astype(np.uint8)
    table = COLORMAPS[colormap]
    if table is None:
        rgb = np.repeat(level[:, :, None], 3, axis=2)
    else:
        rgb = cv2.cvtColor(cv2.applyColorMap(level, table), cv2.COLOR_BGR2RGB)
    rgb[~finite] = 0
    return rgb
