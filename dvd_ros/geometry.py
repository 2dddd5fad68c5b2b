"""Camera geometry: intrinsics, relative disparity -> metric depth, depth -> packed XYZ(RGB).

Pure numpy. Conventions: REP 103 optical frame (x right, y down, z forward), REP 117/118 (NaN
for invalid depth and points), PointCloud2 layout as ``sensor_msgs/PointField`` describes it.
"""

from dataclasses import dataclass, replace
import math

import numpy as np

from dvd_ros.errors import InputError
from dvd_ros.stream.align import fit_scale_shift

# sensor_msgs/PointField datatype code.
FLOAT32 = 7


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f'{name} must be a positive integer (pixels), got {value!r}')
    return int(value)


def _finite(value, name):
    try:
        value = float(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f'{name} must be a number, got {value!r}') from exc
    if not math.isfinite(value):
        raise InputError(f'{name} must be finite, got {value!r}')
    return value


@dataclass(frozen=True)
class PinholeIntrinsics:
    """Pinhole camera for an image of ``width x height`` pixels (focal lengths in pixels)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ('fx', 'fy', 'cx', 'cy'):
            object.__setattr__(self, name, _finite(getattr(self, name), name))
        object.__setattr__(self, 'width', _positive_int(self.width, 'width'))
        object.__setattr__(self, 'height', _positive_int(self.height, 'height'))
        if self.fx <= 0 or self.fy <= 0:
            raise InputError(f'focal lengths must be > 0, got fx={self.fx}, fy={self.fy} (is the '
                             'CameraInfo K all zeros, i.e. the camera is uncalibrated? set a '
                             'field of view instead)')

    @classmethod
    def from_K(cls, K, width, height):  # noqa: N802, N803 - K is the CameraInfo field name
        """Build from a 3x3 camera matrix (or the 9-element row-major CameraInfo ``k``).

        :param K: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        :param width: image width in pixels.
        :param height: image height in pixels.
        :return: :class:`PinholeIntrinsics`.
        """
        try:
            k = np.asarray(K, dtype=np.float64).reshape(3, 3)
        except (TypeError, ValueError) as exc:
            raise InputError(f'K must have 9 numbers (3x3 row-major), got {K!r}') from exc
        if not np.isfinite(k).all():
            raise InputError(f'K must be finite, got {k.tolist()}')
        return cls(k[0, 0], k[1, 1], k[0, 2], k[1, 2], width, height)

    @classmethod
    def from_fov(cls, width, height, hfov_deg):
        """Build from a horizontal field of view, square pixels, centred principal point.

        The fallback when the camera publishes no (or an all-zero) CameraInfo.

        :param width: image width in pixels.
        :param height: image height in pixels.
        :param hfov_deg: horizontal field of view in degrees, in (0, 180).
        :return: :class:`PinholeIntrinsics`.
        """
        hfov = _finite(hfov_deg, 'hfov_deg')
        if not 0.0 < hfov < 180.0:
            raise InputError(f'hfov_deg must be in (0, 180) degrees, got {hfov_deg!r}')
        width = _positive_int(width, 'width')
        height = _positive_int(height, 'height')
        f = 0.5 * width / math.tan(math.radians(hfov) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)

    def scaled(self, width, height):
        """Return the intrinsics of the same camera resampled to ``width x height``.

        Uses the pixel-centre convention of a bilinear resize with ``align_corners=False``:
        ``c' = (c + 0.5) * s - 0.5``, ``f' = f * s``.

        :param width: new width in pixels.
        :param height: new height in pixels.
        :return: :class:`PinholeIntrinsics`.
        """
        width = _positive_int(width, 'width')
        height = _positive_int(height, 'height')
        sx = width / self.width
        sy = height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                       cy=(self.cy + 0.5) * sy - 0.5, width=width, height=height)

    @property
    def K(self):  # noqa: N802 - the CameraInfo name
        """Return the ``(3, 3)`` float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


# Plausible pinhole intrinsics relative to the image size: a focal length between 0.05 and
# 100 times the larger side (a fisheye beyond 180 degrees to a 0.6 degree telephoto), pixels
# at most 5:1 anamorphic, the principal point at most a quarter of the size outside the image.
FOCAL_RANGE = (0.05, 100.0)
ASPECT_MAX = 5.0
CENTRE_MARGIN = 0.25


def check_plausible(intrinsics):
    """Raise :class:`InputError` unless ``intrinsics`` can be a real camera of their size.

    :param intrinsics: :class:`PinholeIntrinsics` (finite by construction).
    :raises InputError: naming the implausible value and the bound.
    """
    side = max(intrinsics.width, intrinsics.height)
    low, high = FOCAL_RANGE[0] * side, FOCAL_RANGE[1] * side
    for name, f in (('fx', intrinsics.fx), ('fy', intrinsics.fy)):
        if not low <= f <= high:
            raise InputError(f'{name} = {f:g} px is implausible for a {intrinsics.width}x'
                             f'{intrinsics.height} image (expected {low:g} to {high:g}); is the '
                             'CameraInfo for another resolution?')
    if max(intrinsics.fx, intrinsics.fy) > ASPECT_MAX * min(intrinsics.fx, intrinsics.fy):
        raise InputError(f'fx = {intrinsics.fx:g} and fy = {intrinsics.fy:g} differ by more '
                         f'than {ASPECT_MAX:g}x; check the calibration')
    for name, c, size in (('cx', intrinsics.cx, intrinsics.width),
                          ('cy', intrinsics.cy, intrinsics.height)):
        if not -CENTRE_MARGIN * size <= c <= (1 + CENTRE_MARGIN) * size:
            raise InputError(f'{name} = {c:g} px lies far outside the {intrinsics.width}x'
                             f'{intrinsics.height} image; check the calibration')


def looks_optical(frame_id):
    """Return True when ``frame_id`` names an optical frame (REP 103: ``*_optical_frame``)."""
    return 'optical' in frame_id.lower()


def disparity_to_depth(disparity, a, b, max_depth=math.inf):
    """Convert relative disparity to metric depth ``1 / (a * d + b)``.

    :param disparity: ``(H, W)`` (or any shape) relative disparity.
    :param a: scale in 1/metres, finite.
    :param b: shift in 1/metres, finite.
    :param max_depth: depths beyond this (metres) become NaN.
    :return: float32 depth in metres, same shape; NaN where ``a * d + b <= 0``, the input is
        NaN, or the depth exceeds ``max_depth`` (REP 118: NaN = no data).
    """
    a = _finite(a, 'a')
    b = _finite(b, 'b')
    max_depth = float(max_depth)
    if not max_depth > 0:
        raise InputError(f'max_depth must be > 0 metres (inf for no limit), got {max_depth!r}')
    inv = np.asarray(disparity, dtype=np.float32) * np.float32(a) + np.float32(b)
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = np.float32(1.0) / inv
    depth[~(inv > 0)] = np.nan
    if math.isfinite(max_depth):
        depth[depth > max_depth] = np.nan
    return depth


@dataclass(frozen=True)
class MetricFit:
    """Affine map from relative disparity to metric inverse depth, ``1/z = a * d + b``.

    ``residual`` is the RMS of the inliers' inverse-depth error (1/metres); ``rel_residual``
    the same relative to the inliers' mean inverse depth; ``inlier_fraction`` the share of
    samples the robust loss kept; ``n`` the valid samples used.
    """

    a: float
    b: float
    residual: float
    inlier_fraction: float
    n: int
    rel_residual: float = 0.0


def fit_metric(disparity_samples, depth_samples, robust=True, min_samples=8):
    """Fit ``1 / depth ~ a * disparity + b`` from sparse metric samples (in disparity space).

    Samples with non-finite values or ``depth <= 0`` are ignored.

    :param disparity_samples: ``(N,)`` relative disparity at the sample pixels.
    :param depth_samples: ``(N,)`` metric depth in metres at the same pixels (LiDAR, RGB-D).
    :param robust: Huber-reweighted fit (True) or plain least squares.
    :param min_samples: fewer valid samples raise :class:`InputError`.
    :return: :class:`MetricFit`.
    :raises InputError: too few valid samples, no spread in disparity, or a fitted ``a <= 0``
        (disparity must grow as depth shrinks).
    """
    d = np.asarray(disparity_samples, dtype=np.float64).reshape(-1)
    z = np.asarray(depth_samples, dtype=np.float64).reshape(-1)
    if d.shape != z.shape:
        raise InputError(f'{d.size} disparity samples but {z.size} depth samples; pass one depth '
                         'per sampled pixel')
    valid = np.isfinite(d) & np.isfinite(z) & (z > 0)
    n = int(valid.sum())
    if n < max(2, min_samples):
        raise InputError(f'metric fit needs at least {max(2, min_samples)} valid samples (finite, '
                         f'depth > 0), got {n}; wait for more metric points')
    inv = 1.0 / z[valid]
    fit = fit_scale_shift(d[valid], inv, robust='huber' if robust else False)
    if fit.degenerate:
        raise InputError(f'metric fit is degenerate: the {n} samples have no spread in '
                         'disparity; sample pixels at different depths')
    if not fit.scale > 0:
        raise InputError(f'metric fit gave a = {fit.scale:.4g} <= 0 (depth grows with disparity): '
                         'the samples do not match the image, check their registration')
    r = fit.scale * d[valid] + fit.shift - inv
    if robust:
        sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        inl = np.abs(r) <= 3.0 * sigma if sigma > 0 else np.ones(n, bool)
    else:
        inl = np.ones(n, bool)
    residual = float(np.sqrt(np.mean(r[inl] ** 2)))
    rel = residual / float(np.mean(inv[inl]))
    return MetricFit(float(fit.scale), float(fit.shift), residual, float(inl.mean()), n, rel)


def depth_to_points(depth, intrinsics, stride=1, max_range=math.inf):
    """Back-project a depth image to an organized point grid in the optical frame.

    :param depth: ``(H, W)`` float metres (NaN, inf or <= 0 = no data), ``H x W`` equal to the
        intrinsics' size.
    :param intrinsics: :class:`PinholeIntrinsics`.
    :param stride: keep every ``stride``-th row and column (``>= 1``).
    :param max_range: points farther than this Euclidean range (metres) become NaN.
    :return: ``(ceil(H/stride), ceil(W/stride), 3)`` float32 x, y, z in metres; invalid points
        are NaN in all three coordinates (REP 117).
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise InputError(f'depth must be (H, W), got shape {depth.shape}')
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise InputError(f'depth is {depth.shape[1]}x{depth.shape[0]} (WxH) but the intrinsics '
                         f'are for {intrinsics.width}x{intrinsics.height}; use '
                         'PinholeIntrinsics.scaled(width, height)')
    stride = _positive_int(stride, 'stride')
    max_range = float(max_range)
    if not max_range > 0:
        raise InputError(f'max_range must be > 0 metres (inf for no limit), got {max_range!r}')
    z = depth[::stride, ::stride].astype(np.float32)
    u = np.arange(0, intrinsics.width, stride, dtype=np.float32)
    v = np.arange(0, intrinsics.height, stride, dtype=np.float32)
    xs = (u - np.float32(intrinsics.cx)) / np.float32(intrinsics.fx)
    ys = (v - np.float32(intrinsics.cy)) / np.float32(intrinsics.fy)
    pts = np.empty(z.shape + (3,), np.float32)
    pts[..., 0] = xs[None, :] * z
    pts[..., 1] = ys[:, None] * z
    pts[..., 2] = z
    bad = ~(np.isfinite(z) & (z > 0))
    if math.isfinite(max_range):
        with np.errstate(invalid='ignore'):
            bad |= np.einsum('ijk,ijk->ij', pts, pts) > max_range * max_range
    pts[bad] = np.nan
    return pts


@dataclass(frozen=True)
class PackedCloud:
    """PointCloud2-ready payload: fill ``sensor_msgs/PointCloud2`` from these fields.

    ``fields`` lists ``(name, offset, datatype)`` with ``count = 1``; little-endian.
    """

    data: bytes
    fields: list
    point_step: int
    row_step: int
    height: int
    width: int
    is_dense: bool
    is_bigendian: bool = False


def pack_rgb(rgb):
    """Pack uint8 RGB into the PCL float: bits ``(r << 16) | (g << 8) | b`` read as float32.

    :param rgb: ``(..., 3)`` uint8.
    :return: ``(...)`` float32 (only meaningful bit-wise).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise InputError(f'rgb must be (..., 3) uint8, got shape {rgb.shape} dtype {rgb.dtype}')
    c = rgb.astype(np.uint32)
    return ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)


def pack_points(points, rgb=None):
    """Pack points (+ colours) into PointCloud2 bytes: x, y, z float32 (+ rgb packed float32).

    An organized ``(h, w, 3)`` grid gives ``height = h, width = w`` (rows first, as the image);
    a flat ``(n, 3)`` array gives ``height = 1, width = n``.

    :param points: ``(h, w, 3)`` or ``(n, 3)`` float metres, NaN = invalid.
    :param rgb: optional uint8 colours with the same leading shape, ``(..., 3)``.
    :return: :class:`PackedCloud` (point_step 12 without colour, 16 with).
    """
    points = np.asarray(points)
    if points.ndim not in (2, 3) or points.shape[-1] != 3:
        raise InputError(f'points must be (h, w, 3) or (n, 3), got shape {points.shape}')
    height, width = points.shape[:2] if points.ndim == 3 else (1, points.shape[0])
    fields = [('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32)]
    step = 12
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.shape != points.shape or rgb.dtype != np.uint8:
            raise InputError(f"rgb must be uint8 with the points' shape {points.shape}, got "
                             f'{rgb.shape} {rgb.dtype}; subsample it with the same stride')
        fields.append(('rgb', 12, FLOAT32))
        step = 16
    buf = np.empty((height, width, step // 4), '<f4')
    buf[..., :3] = points.reshape(height, width, 3)
    if rgb is not None:
        buf[..., 3] = pack_rgb(rgb).reshape(height, width)
    dense = bool(np.isfinite(buf[..., :3]).all())
    return PackedCloud(buf.tobytes(), fields, step, step * width, height, width, dense)
