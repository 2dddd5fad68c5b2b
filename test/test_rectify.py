"""Rectification: maps, the rectified camera model, sparse pixels, and the same cloud."""

import cv2
import numpy as np
import pytest

from dvd_ros import geometry
from dvd_ros.errors import InputError
from dvd_ros.rectify import CameraModel, Rectifier, rectify_pixels

H, W = 96, 128
K = np.array([[100.0, 0.0, 63.0], [0.0, 104.0, 49.0], [0.0, 0.0, 1.0]])
D = (-0.28, 0.09, 0.001, -0.0015, 0.0)


def _pinhole(k=K, d=(0.0,) * 5, p=None, model='plumb_bob'):
    p = np.concatenate([k, np.zeros((3, 1))], axis=1) if p is None else p
    return CameraModel.from_arrays(W, H, k, d, np.eye(3), p, model)


def _scene():
    """Return a smooth (H, W, 3) uint8 RGB view (brightness = nearness for the stand-in)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    base = 120 + 60 * np.sin(x / 17.0) * np.cos(y / 13.0) + 0.4 * x
    return np.repeat(np.clip(base, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _distort(image, model):
    """Render what the distorted camera of ``model`` sees of the pinhole ``image`` (K)."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    # Each raw pixel looks along the ray whose pinhole projection rectify_pixels gives.
    ur, vr = rectify_pixels(u.ravel(), v.ravel(), model)
    return cv2.remap(image, ur.reshape(H, W).astype(np.float32),
                     vr.reshape(H, W).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def _cloud(rgb, k):
    disparity = rgb.astype(np.float32).mean(axis=2) / 255.0  # the stand-in model
    depth = geometry.disparity_to_depth(disparity, 0.8, 0.1)
    return geometry.depth_to_points(depth, geometry.PinholeIntrinsics.from_K(k, W, H))


def test_distorted_view_gives_the_same_cloud_as_the_undistorted_one():
    scene = _scene()
    distorted_model = _pinhole(d=D)
    raw = _distort(scene, distorted_model)
    assert np.abs(raw.astype(int) - scene).mean() > 5  # the lens really bends the view
    rectifier = Rectifier()
    rectified = rectifier.remap(raw, distorted_model)
    rect_model = distorted_model.rectified()
    np.testing.assert_array_equal(rect_model.K, K)
    inner = (slice(12, -12), slice(16, -16))  # where the raw view covers the pinhole view
    truth = _cloud(scene, K)[inner]
    ours = _cloud(rectified, rect_model.K)[inner]
    np.testing.assert_allclose(ours, truth, rtol=0.02, atol=2e-3)
    # Without rectification the cloud bends: the check above can fail.
    bent = _cloud(raw, K)[inner]
    assert np.abs(bent - truth).mean() > 10 * np.abs(ours - truth).mean()


def test_maps_are_computed_once_per_calibration():
    rectifier = Rectifier(capacity=2)
    model = _pinhole(d=D)
    image = _scene()
    first = rectifier.remap(image, model)
    again = rectifier.remap(image, CameraModel.from_arrays(W, H, K, D, np.eye(3),
                                                           np.c_[K, np.zeros(3)]))
    np.testing.assert_array_equal(first, again)
    assert rectifier.builds == 1
    for k1 in (-0.1, -0.2):  # two more models: the first is evicted (capacity 2)
        rectifier.maps(_pinhole(d=(k1,) + D[1:]))
    assert rectifier.builds == 3
    rectifier.maps(model)
    assert rectifier.builds == 4


def test_rectified_model_uses_p():
    new_k = np.array([[90.0, 0.0, 60.0], [0.0, 90.0, 45.0], [0.0, 0.0, 1.0]])
    p = np.c_[new_k, [[-9.0], [0.0], [0.0]]]  # a right stereo camera: Tx = -fx * baseline
    model = _pinhole(d=D, p=p)
    assert model.distorted and not model.is_rectified
    rect = model.rectified()
    np.testing.assert_array_equal(rect.K, new_k)
    np.testing.assert_array_equal(rect.P, p)
    assert rect.d == (0.0,) * 5 and np.array_equal(rect.R, np.eye(3))
    assert rect.is_rectified and not rect.distorted
    # Unset R and P (zeros) mean the identity and [K | 0].
    unset = CameraModel.from_arrays(W, H, K, (0.0,) * 5, np.zeros(9), np.zeros(12))
    assert unset.is_rectified


def test_rectify_pixels_inverts_the_lens():
    model = _pinhole(d=D)
    rng = np.random.default_rng(0)
    u, v = rng.uniform(10, W - 10, 50), rng.uniform(10, H - 10, 50)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(50)], axis=1)
    raw, _ = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), K, np.array(D))
    ur, vr = rectify_pixels(raw[:, 0, 0], raw[:, 0, 1], model)
    np.testing.assert_allclose(ur, u, atol=5e-3)  # OpenCV iterates 5 times
    np.testing.assert_allclose(vr, v, atol=5e-3)
    # And the dense maps agree with the sparse mapping.
    map_x, map_y = Rectifier().maps(model)
    iu, iv = np.round(u).astype(int), np.round(v).astype(int)
    ur, vr = rectify_pixels(map_x[iv, iu], map_y[iv, iu], model)
    np.testing.assert_allclose(ur, iu, atol=1e-2)
    np.testing.assert_allclose(vr, iv, atol=1e-2)


def test_fisheye_model_rectifies():
    model = _pinhole(d=(0.05, -0.01, 0.002, 0.0), model='equidistant')
    scene = _scene()
    raw = _distort(scene, model)
    rectified = Rectifier().remap(raw, model)
    inner = (slice(12, -12), slice(16, -16))
    assert (np.abs(rectified[inner].astype(int) - scene[inner]).mean()
            < np.abs(raw[inner].astype(int) - scene[inner]).mean() / 3)


def test_bad_models_are_refused_with_the_fix():
    with pytest.raises(InputError, match="distortion model 'kannala' cannot be rectified"):
        Rectifier().maps(_pinhole(d=D, model='kannala'))
    with pytest.raises(InputError, match='non-finite'):
        CameraModel.from_arrays(W, H, K, (np.nan,) * 5, np.eye(3), np.zeros(12))
    with pytest.raises(InputError, match='CameraInfo is for 128x96'):
        Rectifier().remap(np.zeros((10, 10, 3), np.uint8), _pinhole(d=D))
