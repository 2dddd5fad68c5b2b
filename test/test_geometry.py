"""Intrinsics, metric fit, back-projection and PointCloud2 packing."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.geometry import (
    FLOAT32,
    PinholeIntrinsics,
    depth_to_points,
    disparity_to_depth,
    fit_metric,
    pack_points,
    pack_rgb,
)

K = [[500.0, 0.0, 319.5], [0.0, 510.0, 239.5], [0.0, 0.0, 1.0]]


def test_from_k_matrix_and_flat():
    a = PinholeIntrinsics.from_K(K, 640, 480)
    b = PinholeIntrinsics.from_K(np.asarray(K).reshape(-1).tolist(), 640, 480)
    assert a == b
    assert (a.fx, a.fy, a.cx, a.cy, a.width, a.height) == (500.0, 510.0, 319.5, 239.5, 640, 480)
    np.testing.assert_array_equal(a.K, K)


@pytest.mark.parametrize('k, match', [
    (np.zeros(9), 'focal lengths'),
    ([[np.nan, 0, 1], [0, 1, 1], [0, 0, 1]], 'finite'),
    ([[-5, 0, 1], [0, 5, 1], [0, 0, 1]], 'focal'),
    ([1, 2, 3], '9 numbers'),
])
def test_from_k_rejects_bad_matrices(k, match):
    with pytest.raises(InputError, match=match):
        PinholeIntrinsics.from_K(k, 640, 480)


def test_bad_image_size():
    with pytest.raises(InputError, match='width'):
        PinholeIntrinsics.from_K(K, 0, 480)
    with pytest.raises(InputError, match='height'):
        PinholeIntrinsics(1.0, 1.0, 0.0, 0.0, 4, 2.5)


def test_from_fov():
    k = PinholeIntrinsics.from_fov(640, 480, 90.0)
    assert k.fx == pytest.approx(320.0) and k.fy == k.fx
    assert (k.cx, k.cy) == (319.5, 239.5)
    for bad in (0.0, 180.0, float('nan'), 'wide'):
        with pytest.raises(InputError, match='hfov'):
            PinholeIntrinsics.from_fov(640, 480, bad)


def test_scaled_keeps_pixel_centres():
    k = PinholeIntrinsics.from_K(K, 640, 480)
    half = k.scaled(320, 240)
    assert (half.fx, half.fy, half.cx, half.cy) == (250.0, 255.0, 159.5, 119.5)
    back = half.scaled(640, 480)
    for name in ('fx', 'fy', 'cx', 'cy'):
        assert getattr(back, name) == pytest.approx(getattr(k, name))
    # A ray through a physical point keeps its direction under resizing.
    wide = k.scaled(864, 480)
    u = 100.0
    x = (u - k.cx) / k.fx
    u2 = (u + 0.5) * 864 / 640 - 0.5
    assert (u2 - wide.cx) / wide.fx == pytest.approx(x)


def test_disparity_to_depth():
    d = np.array([[0.0, 0.5, 1.0, np.nan, -1.0]], np.float32)
    z = disparity_to_depth(d, 2.0, 0.5)
    assert z.dtype == np.float32 and z.shape == d.shape
    np.testing.assert_allclose(z[0, :3], [2.0, 2.0 / 3.0, 0.4], rtol=1e-6)
    assert np.isnan(z[0, 3]) and np.isnan(z[0, 4])  # NaN input; a*d+b < 0
    assert np.isnan(disparity_to_depth(np.zeros(2), 1.0, 0.0)).all()  # a*d+b == 0
    capped = disparity_to_depth(d, 2.0, 0.5, max_depth=1.0)
    assert np.isnan(capped[0, 0]) and capped[0, 2] == pytest.approx(0.4)
    with pytest.raises(InputError, match='max_depth'):
        disparity_to_depth(d, 1.0, 0.0, max_depth=0.0)
    with pytest.raises(InputError, match='finite'):
        disparity_to_depth(d, float('inf'), 0.0)


@pytest.mark.parametrize('seed', range(5))
def test_fit_metric_recovers_a_b_from_50_noisy_samples(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 2.0), rng.uniform(0.02, 0.3)
    d = rng.uniform(0.0, 1.0, 50)
    depth = 1.0 / (a * d + b) * (1.0 + rng.normal(0, 0.01, 50))  # 1 % range noise
    depth[:4] *= 3.0  # a few wrong LiDAR returns
    fit = fit_metric(d, depth)
    assert fit.a == pytest.approx(a, rel=0.05)
    assert fit.b == pytest.approx(b, abs=0.05 * a)
    assert fit.n == 50 and 0.8 <= fit.inlier_fraction <= 0.95
    assert fit.rel_residual < 0.03
    assert fit.residual == pytest.approx(fit.rel_residual * np.mean(a * d + b), rel=0.3)


def test_fit_metric_errors():
    d = np.linspace(0, 1, 20)
    with pytest.raises(InputError, match='at least 8 valid samples'):
        fit_metric(d[:5], 1.0 / (d[:5] + 1))
    with pytest.raises(InputError, match='at least'):
        fit_metric(d, np.full(20, np.nan))
    with pytest.raises(InputError, match='no spread'):
        fit_metric(np.full(20, 0.5), 1.0 / (d + 1))
    with pytest.raises(InputError, match='a = '):
        fit_metric(d, d + 1.0)  # depth grows with disparity
    with pytest.raises(InputError, match='samples but'):
        fit_metric(d, d[:3])
    plain = fit_metric(d, 1.0 / (2 * d + 0.5), robust=False)
    assert (plain.a, plain.b) == (pytest.approx(2.0), pytest.approx(0.5))


def test_depth_to_points_projects_back():
    k = PinholeIntrinsics(4.0, 5.0, 3.5, 2.5, 8, 6)
    depth = np.linspace(1.0, 3.0, 48, dtype=np.float32).reshape(6, 8)
    pts = depth_to_points(depth, k)
    assert pts.shape == (6, 8, 3) and pts.dtype == np.float32
    v, u = np.mgrid[0:6, 0:8]
    np.testing.assert_allclose(pts[..., 0] * k.fx / pts[..., 2] + k.cx, u, atol=1e-5)
    np.testing.assert_allclose(pts[..., 1] * k.fy / pts[..., 2] + k.cy, v, atol=1e-5)
    np.testing.assert_array_equal(pts[..., 2], depth)


def test_depth_to_points_stride_invalid_and_range():
    k = PinholeIntrinsics(4.0, 4.0, 3.5, 2.5, 8, 5)
    depth = np.full((5, 8), 2.0, np.float32)
    depth[0, 0], depth[0, 2], depth[2, 0] = np.nan, 0.0, np.inf
    depth[4, 6] = 50.0
    pts = depth_to_points(depth, k, stride=2, max_range=10.0)
    assert pts.shape == (3, 4, 3)
    np.testing.assert_array_equal(pts[1, 1], depth_to_points(depth, k)[2, 2])
    for r, c in ((0, 0), (0, 1), (1, 0), (2, 3)):
        assert np.isnan(pts[r, c]).all()
    assert np.isfinite(pts[1, 1]).all()
    with pytest.raises(InputError, match='scaled'):
        depth_to_points(np.ones((4, 8)), k)
    with pytest.raises(InputError, match='stride'):
        depth_to_points(depth, k, stride=0)


def _decode(cloud):
    names = [name for name, _, _ in cloud.fields]
    dtype = np.dtype({'names': names, 'formats': ['<f4'] * len(names),
                      'offsets': [off for _, off, _ in cloud.fields],
                      'itemsize': cloud.point_step})
    assert len(cloud.data) == cloud.row_step * cloud.height
    return np.frombuffer(cloud.data, dtype).reshape(cloud.height, cloud.width)


def test_pack_points_organized_with_rgb():
    h, w = 3, 5  # not square: a height/width swap would show
    pts = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3)
    pts[1, 2] = np.nan
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[2, 4] = (255, 128, 1)
    cloud = pack_points(pts, rgb)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (3, 5, 16, 80)
    assert cloud.fields == [('x', 0, FLOAT32), ('y', 4, FLOAT32), ('z', 8, FLOAT32),
                            ('rgb', 12, FLOAT32)]
    assert not cloud.is_dense and not cloud.is_bigendian
    rec = _decode(cloud)
    np.testing.assert_array_equal(rec['x'][2, 4], pts[2, 4, 0])
    np.testing.assert_array_equal(rec['z'][0, 1], pts[0, 1, 2])
    assert np.isnan(rec['y'][1, 2])
    bits = rec['rgb'].view(np.uint32)
    assert bits[2, 4] == (255 << 16) | (128 << 8) | 1 and bits[0, 0] == 0


def test_pack_points_flat_without_rgb():
    pts = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    cloud = pack_points(pts)
    assert (cloud.height, cloud.width, cloud.point_step, cloud.row_step) == (1, 7, 12, 84)
    assert cloud.is_dense and len(cloud.fields) == 3
    rec = _decode(cloud)
    np.testing.assert_array_equal(np.stack([rec['x'], rec['y'], rec['z']], -1)[0], pts)


def test_pack_points_rejects_bad_input():
    with pytest.raises(InputError, match='points'):
        pack_points(np.zeros((4, 4)))
    with pytest.raises(InputError, match='same stride'):
        pack_points(np.zeros((4, 4, 3)), np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(InputError, match='uint8'):
        pack_rgb(np.zeros((2, 3), np.float32))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.floats(20.0, 150.0),
       st.integers(0, 2**31 - 1))
def test_cloud_round_trip(h, w, stride, hfov, seed):
    rng = np.random.default_rng(seed)
    k = PinholeIntrinsics.from_fov(w, h, hfov)
    depth = rng.uniform(0.2, 5.0, (h, w)).astype(np.float32)
    depth[rng.random((h, w)) < 0.2] = np.nan
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pts = depth_to_points(depth, k, stride=stride)
    assert pts.shape == (math.ceil(h / stride), math.ceil(w / stride), 3)
    cloud = pack_points(pts, rgb[::stride, ::stride])
    rec = _decode(cloud)
    np.testing.assert_array_equal(rec['z'], depth[::stride, ::stride])
    np.testing.assert_array_equal(np.isnan(rec['x']), np.isnan(depth[::stride, ::stride]))
    c = rgb[::stride, ::stride].astype(np.uint32)
    np.testing.assert_array_equal(rec['rgb'].view(np.uint32),
                                  (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2])
