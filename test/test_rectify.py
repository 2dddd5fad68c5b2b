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


# --------------------------------------------------------------------------- in the depth node

NH, NW = 48, 64  # node test image size
NK = np.array([[40.0, 0.0, 31.5], [0.0, 42.0, 23.5], [0.0, 0.0, 1.0]])
NA, NB = 0.8, 0.1  # fixed metric: 1/z = NA * disparity + NB
WINDOW_N = 5  # frames sent: one window of the stand-in node


def _brightness(x, y):
    """Brightness of the scene along the ray (x, y, 1): a smooth function of the direction."""
    return np.clip(128 + 60 * np.sin(3 * x) * np.cos(2 * y) + 30 * x, 0, 255)


def _render(u, v, k, d=None):
    """Render raw pixels (u, v) of a camera (K, plumb_bob D) looking at the scene, uint8 RGB."""
    pts = np.stack([u.ravel(), v.ravel()], axis=-1).reshape(-1, 1, 2).astype(np.float64)
    rays = cv2.undistortPoints(pts, k, np.zeros(5) if d is None else np.asarray(d))
    x, y = rays[:, 0, 0].reshape(u.shape), rays[:, 0, 1].reshape(u.shape)
    gray = np.round(_brightness(x, y)).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _expected_cloud(p):
    """Return the true cloud in the rectified geometry of projection ``p`` (stand-in depth)."""
    v, u = np.mgrid[0:NH, 0:NW].astype(np.float64)
    x, y = (u - p[0, 2]) / p[0, 0], (v - p[1, 2]) / p[1, 1]
    disparity = np.round(_brightness(x, y)) / 255.0
    z = 1.0 / (NA * disparity + NB)
    return np.stack([x * z, y * z, z], axis=-1)


def _info_msg(hdr, d, p):
    from sensor_msgs.msg import CameraInfo
    info = CameraInfo(header=hdr, width=NW, height=NH, distortion_model='plumb_bob')
    info.k = NK.reshape(-1).tolist()
    info.d = list(d)
    info.r = np.eye(3).reshape(-1).tolist()
    info.p = np.asarray(p, np.float64).reshape(-1).tolist()
    return info


@pytest.fixture
def node_cam():
    pytest.importorskip('rclpy')
    from ros_harness import make_context
    from test_node_inputs import Cam
    context = make_context()
    made = []

    def make(**kwargs):
        params = {'metric_mode': 'fixed', 'metric_a': NA, 'metric_b': NB, **kwargs}
        made.append(Cam(context, **params))
        return made[-1]
    yield make
    for c in made:
        c.close()
    context.try_shutdown()


def _run_camera(c, topic, d, p, n=5):
    from ros_harness import header, image_msg
    from sensor_msgs.msg import CameraInfo, Image
    v, u = np.mgrid[0:NH, 0:NW].astype(np.float64)
    raw = _render(u, v, NK, d)
    headers = []
    for i in range(n):
        hdr = header(i, frame_id='cam_optical_frame')
        c.publisher(CameraInfo, c.node._info_topic).publish(_info_msg(hdr, d, p))
        c.publisher(Image, topic).publish(image_msg(raw, hdr))
        headers.append(hdr)
    return raw, headers


def _outputs(c, hdr):
    from dvd_ros.ros import messages
    key = (hdr.stamp.sec, hdr.stamp.nanosec)
    info = c.probe.by_stamp('depth/camera_info')[key]
    depth = messages.image_to_array(c.probe.by_stamp('depth/image')[key])
    cloud = messages.cloud_to_xyz(c.probe.by_stamp('depth/points')[key]).reshape(NH, NW, 3)
    return info, depth, cloud


def _depth_image_proc_cloud(depth, info):
    """depth_image_proc's point_cloud_xyz: centre and focal length from P (image_geometry)."""
    p = np.reshape(info.p, (3, 4))
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    return np.stack([(u - p[0, 2]) * depth / p[0, 0], (v - p[1, 2]) * depth / p[1, 1], depth],
                    axis=-1)


@pytest.mark.parametrize('p', [np.c_[NK, np.zeros(3)],
                               np.array([[36.0, 0, 30.0, 0], [0, 36.0, 24.5, 0], [0, 0, 1, 0]])])
def test_distorted_camera_in_the_node(node_cam, p):
    from ros_harness import wait_for
    d = (-0.25, 0.07, 0.001, -0.001, 0.0)
    c = node_cam(cli_args=['--ros-args', '-r', 'image:=/cam/image_raw'])
    _, headers = _run_camera(c, '/cam/image_raw', d, p)
    assert wait_for(lambda: c.probe.count('depth/points') >= len(headers))
    info, depth, cloud = _outputs(c, headers[0])
    # depth/camera_info is the rectified model: no distortion, K from P.
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), p[:, :3])
    np.testing.assert_allclose(np.reshape(info.p, (3, 4)), p)
    assert list(info.d) == [0.0] * 5 and np.allclose(np.reshape(info.r, (3, 3)), np.eye(3))
    inner = (slice(6, -6), slice(8, -8))  # the rectified border the raw view does not cover
    # The same cloud as an undistorted camera with projection P sees.
    np.testing.assert_allclose(cloud[inner], _expected_cloud(p)[inner], rtol=0.02, atol=2e-3)
    # depth_image_proc's formula (from P) on our depth and CameraInfo gives our cloud.
    np.testing.assert_allclose(cloud, _depth_image_proc_cloud(depth, info), rtol=1e-5,
                               atol=1e-6)
    assert c.node._rectifier.builds == 1  # maps made once for the 5 frames


def test_rect_topic_is_not_resampled_but_uses_p(node_cam):
    from ros_harness import wait_for

    from dvd_ros.ros import messages
    from dvd_ros.ros.stand_in import disparity_of
    d = (-0.25, 0.07, 0.001, -0.001, 0.0)
    p = np.array([[36.0, 0, 30.0, 0], [0, 36.0, 24.5, 0], [0, 0, 1, 0]])
    c = node_cam(cli_args=['--ros-args', '-r', 'image:=/cam/image_rect'])
    raw, headers = _run_camera(c, '/cam/image_rect', d, p)
    assert wait_for(lambda: c.probe.count('depth/points') >= len(headers))
    info, depth, cloud = _outputs(c, headers[0])
    key = (headers[0].stamp.sec, headers[0].stamp.nanosec)
    disparity = messages.image_to_array(c.probe.by_stamp('depth/disparity')[key])
    np.testing.assert_allclose(disparity, disparity_of(raw), atol=1e-6)  # pixels untouched
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), p[:, :3])
    np.testing.assert_allclose(cloud, _depth_image_proc_cloud(depth, info), rtol=1e-5,
                               atol=1e-6)
    assert c.node._rectifier.builds == 0


def test_rectify_off_keeps_the_input_model(node_cam):
    from ros_harness import wait_for
    d = (-0.25, 0.07, 0.001, -0.001, 0.0)
    p = np.c_[NK, np.zeros(3)]
    c = node_cam(rectify='off')
    _, headers = _run_camera(c, '/image', d, p)
    assert wait_for(lambda: c.probe.count('depth/points') >= len(headers))
    info, _, _ = _outputs(c, headers[0])
    assert list(info.d) == list(d) and c.node._rectifier.builds == 0


@pytest.mark.parametrize('move_hints', [True, False])
def test_hints_follow_the_rectified_pixels(node_cam, move_hints):
    from ros_harness import header, image_msg, wait_for
    from sensor_msgs.msg import CameraInfo, Image

    from dvd_ros.ros import messages
    a_true, b_true = 0.6, 0.2
    d = (-0.25, 0.07, 0.001, -0.001, 0.0)
    p = np.c_[NK, np.zeros(3)]
    c = node_cam(metric_mode='anchored', hint_type='image', hint_min_samples=20)
    if not move_hints:  # what the fit gets when raw hint pixels are read as rectified ones
        c.node._remapped.find = lambda stamp: None
    v, u = np.mgrid[0:NH, 0:NW].astype(np.float64)
    raw = _render(u, v, NK, d)
    hint = np.full((NH, NW), np.nan, np.float32)
    depth = 1.0 / (a_true * raw[..., 0] / 255.0 + b_true)  # metric depth seen by each raw pixel
    hint[::3, ::3] = depth[::3, ::3]
    for i in range(WINDOW_N):
        hdr = header(i, frame_id='cam_optical_frame')
        c.publisher(CameraInfo, c.node._info_topic).publish(_info_msg(hdr, d, p))
        c.publisher(Image, '/metric_hint').publish(messages.array_to_image(hint, '32FC1', hdr))
        c.publisher(Image, '/image').publish(image_msg(raw, hdr))
    assert wait_for(lambda: c.probe.count('depth/image') >= WINDOW_N)
    fit = c.node._fit
    error = abs(fit.a - a_true) / a_true + abs(fit.b - b_true) / b_true
    if move_hints:
        assert error < 0.02 and fit.rel_residual < 0.01, fit
    else:
        assert error > 0.05, fit  # the check above can fail

