"""Image / CameraInfo / PointCloud2 <-> numpy conversions."""

import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from dvd_ros.errors import InputError  # noqa: E402
from dvd_ros.ros import messages  # noqa: E402
from dvd_ros.ros.messages import ImageError  # noqa: E402


def _image(arr, encoding, step=None, bigendian=False):
    """Build an Image by hand (independent of array_to_image), optional row padding."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    if bigendian and arr.dtype.itemsize > 1:
        arr = arr.astype(arr.dtype.newbyteorder('>'))
    row = arr.reshape(h, -1).view(np.uint8)
    step = row.shape[1] if step is None else step
    padded = np.zeros((h, step), np.uint8)
    padded[:, :row.shape[1]] = row
    msg = Image(height=h, width=w, encoding=encoding, step=step,
                is_bigendian=int(bigendian))
    msg.data = padded.tobytes()
    return msg


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('padding', [0, 3])
def test_rgb_like_encodings_give_rgb(padding):
    alpha = np.full((5, 7, 1), 9, np.uint8)
    cases = {
        'rgb8': RGB,
        'bgr8': RGB[:, :, ::-1],
        'rgba8': np.concatenate([RGB, alpha], axis=2),
        'bgra8': np.concatenate([RGB[:, :, ::-1], alpha], axis=2),
    }
    for encoding, arr in cases.items():
        step = arr.shape[1] * arr.shape[2] + padding
        out = messages.image_to_rgb(_image(arr, encoding, step=step))
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3), encoding
        np.testing.assert_array_equal(out, RGB, err_msg=encoding)
        assert out.flags.c_contiguous


@pytest.mark.parametrize('bigendian', [False, True])
def test_mono_encodings(bigendian):
    mono8 = RGB[:, :, 0]
    out = messages.image_to_rgb(_image(mono8, 'mono8'))
    np.testing.assert_array_equal(out, np.repeat(mono8[:, :, None], 3, axis=2))
    mono16 = (mono8.astype(np.uint16) << 8) | 0x5A
    out = messages.image_to_rgb(_image(mono16, 'mono16', step=7 * 2 + 2, bigendian=bigendian))
    np.testing.assert_array_equal(out[:, :, 1], mono8)


@pytest.mark.parametrize('bigendian', [False, True])
def test_depth_encodings(bigendian):
    depth = RNG.uniform(0.5, 5, (4, 6)).astype(np.float32)
    depth[0, 0] = 0.0
    depth[1, 1] = np.nan
    out = messages.image_to_depth(_image(depth, '32FC1', step=6 * 4 + 8, bigendian=bigendian))
    assert np.isnan(out[0, 0]) and np.isnan(out[1, 1])
    np.testing.assert_array_equal(out[2:], depth[2:])
    mm = (np.nan_to_num(depth) * 1000).astype(np.uint16)
    out = messages.image_to_depth(_image(mm, '16UC1', bigendian=bigendian))
    assert np.isnan(out[0, 0])
    np.testing.assert_allclose(out[2:], mm[2:] / 1000.0, rtol=1e-6)


def test_unknown_encoding_is_clear():
    msg = _image(RGB, 'yuv422')
    with pytest.raises(ImageError, match="unsupported image encoding 'yuv422'") as info:
        messages.image_to_rgb(msg)
    assert info.value.cause == 'encoding'
    assert isinstance(info.value, InputError)
    # A depth encoding is not a camera image.
    with pytest.raises(ImageError, match='32FC1'):
        messages.image_to_rgb(_image(np.zeros((2, 2), np.float32), '32FC1'))


def test_zero_size():
    msg = Image(height=0, width=7, encoding='rgb8', step=21)
    with pytest.raises(ImageError, match='zero-size') as info:
        messages.image_to_rgb(msg)
    assert info.value.cause == 'zero_size'


def test_truncated_data():
    msg = _image(RGB, 'rgb8')
    msg.data = bytes(msg.data)[:-5]
    with pytest.raises(ImageError, match='truncated') as info:
        messages.image_to_rgb(msg)
    assert info.value.cause == 'truncated'


def test_step_mismatch():
    msg = _image(RGB, 'rgb8')
    msg.step = 7 * 3 - 1  # smaller than a row
    with pytest.raises(ImageError, match='step') as info:
        messages.image_to_rgb(msg)
    assert info.value.cause == 'step'
    msg = _image(RGB, 'rgb8')
    msg.data = bytes(msg.data) + b'\0' * 4  # more data than step * height
    with pytest.raises(ImageError, match='does not match step') as info:
        messages.image_to_rgb(msg)
    assert info.value.cause == 'step'


def test_array_to_image_round_trip():
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 3, 4
    depth = RNG.uniform(0, 1, (4, 6)).astype(np.float32)
    msg = messages.array_to_image(depth, '32FC1', header)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (4, 6, 24, '32FC1')
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 3
    assert msg.is_bigendian == (sys.byteorder == 'big')
    np.testing.assert_array_equal(messages.image_to_array(msg), depth)
    mm = RNG.integers(0, 60000, (4, 6)).astype(np.uint16)
    np.testing.assert_array_equal(
        messages.image_to_array(messages.array_to_image(mm, '16UC1', header)), mm)
    msg = messages.array_to_image(RGB, 'rgb8', header)
    assert msg.step == 21
    np.testing.assert_array_equal(messages.image_to_rgb(msg), RGB)
    with pytest.raises(InputError, match='32FC1 needs'):
        messages.array_to_image(depth.astype(np.float64), '32FC1', header)


def test_restamp_camera_info_scales_only_when_size_differs():
    from dvd_ros.geometry import PinholeIntrinsics

    info = CameraInfo(width=640, height=480, distortion_model='plumb_bob')
    info.k = [500.0, 0, 320, 0, 510, 240, 0, 0, 1]
    info.p = [500.0, 0, 320, 0, 0, 510, 240, 0, 0, 0, 1, 0]
    info.d = [0.1, 0, 0, 0, 0]
    header = Header(frame_id='out')
    same = PinholeIntrinsics.from_K(messages.camera_info_matrix(info), 640, 480)
    out = messages.restamp_camera_info(info, header, same)
    assert out.header.frame_id == 'out' and (out.width, out.height) == (640, 480)
    np.testing.assert_array_equal(out.k, info.k)
    np.testing.assert_array_equal(out.p, info.p)
    half = same.scaled(320, 240)
    out = messages.restamp_camera_info(info, header, half)
    assert (out.width, out.height) == (320, 240)
    k = np.asarray(out.k).reshape(3, 3)
    np.testing.assert_allclose([k[0, 0], k[1, 1], k[0, 2], k[1, 2]],
                               [half.fx, half.fy, half.cx, half.cy])
    assert list(out.d) == list(info.d)



def test_restamp_camera_info_without_size():
    from dvd_ros.geometry import PinholeIntrinsics

    # Width/height 0: the node reads K as given for the image size (depth_node._intrinsics).
    info = CameraInfo(width=0, height=0)
    info.k = [50.0, 0, 31.5, 0, 50, 23.5, 0, 0, 1]
    info.p = [50.0, 0, 31.5, 0, 0, 50, 23.5, 0, 0, 0, 1, 0]
    intr = PinholeIntrinsics.from_K(messages.camera_info_matrix(info), 64, 48)
    out = messages.restamp_camera_info(info, Header(), intr)
    assert (out.width, out.height) == (64, 48)
    np.testing.assert_array_equal(out.k, info.k)
    np.testing.assert_array_equal(out.p, info.p)

def _cloud(points, bigendian=False, extra=4):
    """Hand-built cloud: x, y, z float32 then `extra` padding bytes per point."""
    n = points.shape[0]
    dtype = np.dtype([('x', '>f4' if bigendian else '<f4'), ('y', '>f4' if bigendian else
                                                             '<f4'),
                      ('z', '>f4' if bigendian else '<f4'), ('pad', 'u1', (extra,))])
    rec = np.zeros(n, dtype)
    rec['x'], rec['y'], rec['z'] = points.T
    msg = PointCloud2(height=1, width=n, point_step=dtype.itemsize, row_step=dtype.itemsize * n,
                      is_bigendian=bigendian)
    msg.fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, c in enumerate('xyz')]
    msg.data = rec.tobytes()
    return msg


@pytest.mark.parametrize('bigendian', [False, True])
def test_cloud_to_xyz(bigendian):
    pts = RNG.normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_array_equal(messages.cloud_to_xyz(_cloud(pts, bigendian)), pts)
    msg = _cloud(pts)
    msg.data = bytes(msg.data)[:-20]
    with pytest.raises(ImageError, match='truncated'):
        messages.cloud_to_xyz(msg)
    msg = _cloud(pts)
    msg.fields = msg.fields[:2]
    with pytest.raises(ImageError, match='lacks'):
        messages.cloud_to_xyz(msg)



def test_cloud_field_outside_point_is_an_image_error():
    msg = _cloud(np.zeros((2, 3), np.float32), extra=0)
    msg.fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT64, count=1)
                  for i, c in enumerate('xyz')]
    with pytest.raises(ImageError, match="'z'.*point_step 12"):
        messages.cloud_to_xyz(msg)

def test_rescaled_p_matches_k_and_fov_info():
    from dvd_ros.geometry import PinholeIntrinsics

    info = CameraInfo(width=640, height=480)
    info.k = [500.0, 0, 319.5, 0, 500, 239.5, 0, 0, 1]
    info.p = [500.0, 0, 319.5, -25.0, 0, 500, 239.5, 0, 0, 0, 1, 0]
    intr = PinholeIntrinsics.from_K(messages.camera_info_matrix(info), 640, 480).scaled(160, 120)
    out = messages.restamp_camera_info(info, Header(), intr)
    p = np.asarray(out.p).reshape(3, 4)
    np.testing.assert_allclose(p[:, :3], np.asarray(out.k).reshape(3, 3))
    assert p[0, 3] == pytest.approx(-25.0 / 4)  # Tx scales with the width
    fov = PinholeIntrinsics.from_fov(64, 48, 90.0)
    made = messages.camera_info_from_intrinsics(fov, Header(frame_id='f'))
    assert (made.width, made.height, made.header.frame_id) == (64, 48, 'f')
    np.testing.assert_allclose(messages.camera_info_matrix(made), fov.K)
