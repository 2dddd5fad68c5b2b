"""Lens distortion: the camera model of a CameraInfo, rectification maps and rectified pixels.

numpy and OpenCV only, no ROS types. The model follows ``sensor_msgs/CameraInfo``: ``K`` and
``D`` describe the raw (distorted) image, ``R`` rotates into the rectified frame and ``P``'s
left 3x3 is the camera matrix of the rectified image, the one depth_image_proc (through
image_geometry's ``PinholeCameraModel``) back-projects with. Rectifying an image resamples it
into that geometry: afterwards the image is a pinhole image with ``K = P[:3, :3]``, ``D = 0``,
``R = I``. The OpenCV maps cost far more than applying them, so they are computed once per
calibration and cached.
"""

from collections import OrderedDict
from dataclasses import dataclass
import threading

import cv2
import numpy as np

from dvd_ros.errors import InputError

# Models OpenCV rectifies, by their CameraInfo names (sensor_msgs/distortion_models.hpp).
PINHOLE_MODELS = ('plumb_bob', 'rational_polynomial')
FISHEYE_MODELS = ('equidistant',)
DISTORTION_MODELS = PINHOLE_MODELS + FISHEYE_MODELS
# Relative difference below which two camera matrices count as the same.
_SAME = 1e-9


@dataclass(frozen=True)
class CameraModel:
    """A CameraInfo's calibration: size (px), ``k`` (9), ``d`` (n), ``r`` (9), ``p`` (12).

    Tuples of floats, so a model is hashable and serves as its own cache key.
    """

    width: int
    height: int
    k: tuple
    d: tuple
    r: tuple
    p: tuple
    distortion_model: str = 'plumb_bob'

    @classmethod
    def from_arrays(cls, width, height, k, d, r, p, distortion_model='plumb_bob'):
        """Build and check a model from array-likes (``k``/``r`` 9 values, ``p`` 12).

        An all-zero ``R`` (unset) counts as the identity; an all-zero ``P`` as ``[K | 0]``.

        :raises InputError: wrong lengths, non-finite values, size not positive.
        """
        try:
            k, r, p = (np.asarray(x, np.float64).reshape(n) for x, n in ((k, 9), (r, 9),
                                                                         (p, 12)))
            d = np.asarray(d, np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f'camera model needs K 9, R 9, P 12 numbers: {exc}') from exc
        if not all(np.isfinite(x).all() for x in (k, d, r, p)):
            raise InputError('camera model has non-finite K, D, R or P; fix the calibration')
        if int(width) < 1 or int(height) < 1:
            raise InputError(f'camera model size must be positive, got {width}x{height}')
        if not r.any():
            r = np.eye(3).reshape(-1)
        if not p.any():
            p = np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], axis=1).reshape(-1)
        return cls(int(width), int(height), tuple(k.tolist()), tuple(d.tolist()),
                   tuple(r.tolist()), tuple(p.tolist()), str(distortion_model))

    @property
    def K(self):  # noqa: N802 - the CameraInfo name
        """Return the raw camera matrix, (3, 3) float64."""
        return np.array(self.k).reshape(3, 3)

    @property
    def D(self):  # noqa: N802
        """Return the distortion coefficients, (n,) float64."""
        return np.array(self.d, np.float64)

    @property
    def R(self):  # noqa: N802
        """Return the rectification rotation, (3, 3) float64."""
        return np.array(self.r).reshape(3, 3)

    @property
    def P(self):  # noqa: N802
        """Return the projection matrix, (3, 4) float64."""
        return np.array(self.p).reshape(3, 4)

    @property
    def distorted(self):
        """Return True when any distortion coefficient is non-zero."""
        return any(c != 0.0 for c in self.d)

    @property
    def rectified_matrix(self):
        """Return the camera matrix of the rectified image, ``P[:3, :3]``, (3, 3)."""
        return self.P[:, :3].copy()

    @property
    def is_rectified(self):
        """Return True when the raw image is already the rectified one (nothing to resample).

        No distortion, ``R`` the identity and ``P[:3, :3]`` equal to ``K``.
        """
        scale = max(1.0, float(np.abs(self.K).max()))
        return (not self.distorted and np.allclose(self.R, np.eye(3), atol=_SAME)
                and np.allclose(self.rectified_matrix, self.K, atol=_SAME * scale))

    def rectified(self):
        """Return the model of the rectified image: ``K = P[:3, :3]``, ``D = 0``, ``R = I``."""
        return CameraModel(self.width, self.height, tuple(self.rectified_matrix.reshape(-1)),
                           (0.0,) * 5, tuple(np.eye(3).reshape(-1)), self.p, 'plumb_bob')

    def check_rectifiable(self):
        """Raise :class:`InputError` when OpenCV cannot rectify this model."""
        for name, m in (('K', self.K), ('P', self.rectified_matrix)):
            if not (m[0, 0] > 0 and m[1, 1] > 0):
                raise InputError(f'CameraInfo {name} has focal lengths fx={m[0, 0]:g}, '
                                 f'fy={m[1, 1]:g}: the camera is not calibrated (calibrate it, '
                                 'or set rectify off and fov_fallback_deg)')
        if self.distorted and self.distortion_model not in DISTORTION_MODELS:
            raise InputError(f'distortion model {self.distortion_model!r} cannot be rectified; '
                             f'supported: {", ".join(DISTORTION_MODELS)} (or publish a '
                             'rectified image, e.g. with image_proc)')
        if self.distortion_model in FISHEYE_MODELS and len(self.d) < 4:
            raise InputError(f'equidistant distortion needs 4 coefficients, got {len(self.d)}')
        if self.distortion_model in PINHOLE_MODELS and len(self.d) not in (0, 4, 5, 8, 12, 14):
            raise InputError(f'{self.distortion_model} distortion has {len(self.d)} '
                             'coefficients; OpenCV takes 4, 5, 8, 12 or 14')


def _maps(model):
    model.check_rectifiable()
    size = (model.width, model.height)
    new = model.rectified_matrix
    if model.distortion_model in FISHEYE_MODELS:
        return cv2.fisheye.initUndistortRectifyMap(model.K, model.D[:4], model.R, new, size,
                                                   cv2.CV_32FC1)
    d = model.D if len(model.d) else np.zeros(5)
    return cv2.initUndistortRectifyMap(model.K, d, model.R, new, size, cv2.CV_32FC1)


class Rectifier:
    """Resample raw images into their rectified geometry; maps cached per camera model.

    Thread-safe. ``builds`` counts the map computations (a test checks the cache).

    :param capacity: camera models whose maps are kept (least recently used go first).
    """

    def __init__(self, capacity=4):
        self.capacity = max(1, int(capacity))
        self._cache = OrderedDict()
        self._lock = threading.Lock()
        self.builds = 0

    def maps(self, model):
        """Return OpenCV's ``(map_x, map_y)`` for ``model``, computing them at most once.

        :param model: :class:`CameraModel`.
        :return: two (H, W) float32 arrays: the raw pixel each rectified pixel samples.
        :raises InputError: the model cannot be rectified.
        """
        with self._lock:
            if model in self._cache:
                self._cache.move_to_end(model)
                return self._cache[model]
        maps = _maps(model)
        with self._lock:
            self.builds += 1
            self._cache[model] = maps
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return maps

    def remap(self, image, model, interpolation=cv2.INTER_LINEAR):
        """Return ``image`` resampled into the rectified geometry of ``model``.

        Rectified pixels whose source lies outside the raw image are 0 (black).

        :param image: (H, W) or (H, W, C) array of the raw camera, ``H x W`` = the model's size.
        :param model: :class:`CameraModel`.
        :param interpolation: OpenCV interpolation flag.
        :return: array of the same shape and dtype.
        :raises InputError: size mismatch, or a model that cannot be rectified.
        """
        image = np.asarray(image)
        if image.shape[:2] != (model.height, model.width):
            raise InputError(f'image is {image.shape[1]}x{image.shape[0]} but its CameraInfo is '
                             f'for {model.width}x{model.height}; cannot rectify (publish the '
                             'calibration of this resolution)')
        map_x, map_y = self.maps(model)
        return cv2.remap(image, map_x, map_y, interpolation, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)


def rectify_pixels(u, v, model):
    """Map raw pixel coordinates to the rectified image of ``model`` (sparse samples).

    :param u: (N,) column coordinates in the raw image (px).
    :param v: (N,) row coordinates (px).
    :param model: :class:`CameraModel`.
    :return: ``(u, v)`` float64 (N,) in the rectified image (may fall outside it).
    """
    pts = np.stack([np.asarray(u, np.float64), np.asarray(v, np.float64)], axis=-1)
    pts = pts.reshape(-1, 1, 2)
    if pts.shape[0] == 0:
        return np.zeros(0), np.zeros(0)
    model.check_rectifiable()
    new = model.P[:, :3]
    if model.distortion_model in FISHEYE_MODELS:
        out = cv2.fisheye.undistortPoints(pts, model.K, model.D[:4], R=model.R, P=new)
    else:
        d = model.D if len(model.d) else np.zeros(5)
        out = cv2.undistortPoints(pts, model.K, d, R=model.R, P=new)
    out = out.reshape(-1, 2)
    return out[:, 0], out[:, 1]
