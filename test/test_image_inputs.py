"""Camera encodings and CompressedImage decoding: round trips against OpenCV's conversions."""

import struct
import threading
import time

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from dvd_ros.ros import image_inputs  # noqa: E402
from dvd_ros.ros.image_inputs import (  # noqa: E402
    BackgroundDecoder,
    camera_to_rgb,
    compressed_depth_to_metres,
    compressed_to_rgb,
)
from dvd_ros.ros.messages import ImageError  # noqa: E402

H, W = 12, 16


def _smooth(block=2, seed=0):
    """Return an (H, W, 3) uint8 RGB image constant over ``block x block`` pixel blocks."""
    rng = np.random.default_rng(seed)
    small = rng.integers(20, 236, (H // block, W // block, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, block, axis=0), block, axis=1)


def _msg(data, encoding, width=W, height=H, step=None, bigendian=False):
    """Build an Image from ``(rows, row_bytes)``-shaped bytes, optional row padding."""
    rows = np.ascontiguousarray(data).view(np.uint8).reshape(data.shape[0], -1)
    step = rows.shape[1] if step is None else step
    padded = np.zeros((rows.shape[0], step), np.uint8)
    padded[:, :rows.shape[1]] = rows
    msg = Image(height=height, width=width, encoding=encoding, step=step,
                is_bigendian=int(bigendian))
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('encoding, to_yuv', [('yuv422_yuy2', cv2.COLOR_RGB2YUV_YUY2),
                                              ('yuyv', cv2.COLOR_RGB2YUV_YUY2),
                                              ('uyvy', cv2.COLOR_RGB2YUV_UYVY),
                                              ('yuv422', cv2.COLOR_RGB2YUV_UYVY)])
@pytest.mark.parametrize('padding', [0, 6])
def test_yuv422_round_trip(encoding, to_yuv, padding):
    rgb = _smooth(block=2)  # constant over pixel pairs: 4:2:2 chroma loses nothing
    packed = cv2.cvtColor(rgb, to_yuv)
    assert packed.shape == (H, W, 2)
    got = camera_to_rgb(_msg(packed, encoding, step=2 * W + padding))
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb).max() <= 3  # 8-bit YUV rounding


def test_yuyv_and_uyvy_are_not_swapped():
    rgb = _smooth(block=2, seed=3)
    yuyv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_YUY2)
    wrong = camera_to_rgb(_msg(yuyv, 'uyvy'))
    assert np.abs(wrong.astype(int) - rgb).max() > 20


def test_nv12_round_trip():
    rgb = _smooth(block=2, seed=1)  # constant over 2x2 blocks: 4:2:0 chroma loses nothing
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # Y plane, then U, then V planes
    y = i420[:H]
    u = i420[H:H + H // 4].reshape(H // 2, W // 2)
    v = i420[H + H // 4:].reshape(H // 2, W // 2)
    nv12 = np.concatenate([y, np.stack([u, v], axis=2).reshape(H // 2, W)])
    got = camera_to_rgb(_msg(nv12, 'nv12', step=W))
    assert np.abs(got.astype(int) - rgb).max() <= 3


def _mosaic(rgb, pattern):
    """Sample ``rgb`` through a Bayer pattern named like ROS (``rggb``: R at (0, 0))."""
    index = {'r': 0, 'g': 1, 'b': 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[pattern[k]]]
    return out


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_round_trip(pattern):
    # A flat colour with distinct channels: any pattern mix-up changes the colour.
    flat = np.empty((H, W, 3), np.uint8)
    flat[...] = (200, 110, 30)
    got = camera_to_rgb(_msg(_mosaic(flat, pattern), f'bayer_{pattern}8'))
    np.testing.assert_array_equal(got[2:-2, 2:-2], flat[2:-2, 2:-2])
    # A smooth gradient survives demosaicing inside the border.
    y, x = np.mgrid[0:H, 0:W]
    ramp = np.stack([40 + 8 * x, 60 + 6 * y, 200 - 5 * x], axis=2).astype(np.uint8)
    got = camera_to_rgb(_msg(_mosaic(ramp, pattern), f'bayer_{pattern}8'))
    assert np.abs(got[2:-2, 2:-2].astype(int) - ramp[2:-2, 2:-2]).max() <= 2


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16', 'rgba16', 'bgra16'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16_bit_colour_keeps_the_high_byte(encoding, bigendian):
    rgb = _smooth(block=1, seed=2)
    wide = rgb.astype(np.uint16) * 257 + 1  # low byte must not matter
    pixels = wide[:, :, ::-1] if encoding.startswith('bgr') else wide
    if encoding.endswith('a16'):
        pixels = np.concatenate([pixels, np.full((H, W, 1), 7, np.uint16)], axis=2)
    data = pixels.astype('>u2' if bigendian else '<u2').reshape(H, -1)
    got = camera_to_rgb(_msg(data, encoding, bigendian=bigendian))
    np.testing.assert_array_equal(got, rgb)


def test_generic_8uc_encodings_read_as_mono8_and_bgr8_with_a_warning():
    rgb = _smooth(block=1, seed=4)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    warnings = []
    got = camera_to_rgb(_msg(bgr, '8UC3'), warn=warnings.append)
    np.testing.assert_array_equal(got, rgb)
    mono = rgb[:, :, 1]
    got = camera_to_rgb(_msg(mono, '8UC1'), warn=warnings.append)
    np.testing.assert_array_equal(got, np.repeat(mono[:, :, None], 3, axis=2))
    assert len(warnings) == 2 and "read as 'bgr8'" in warnings[0] and 'mono8' in warnings[1]


def test_bad_extra_encodings():
    with pytest.raises(ImageError, match="unsupported image encoding 'yuv444'") as info:
        camera_to_rgb(_msg(_smooth(), 'yuv444'))
    assert info.value.cause == 'encoding'
    odd = np.zeros((H, W - 1, 2), np.uint8)
    with pytest.raises(ImageError, match='even width') as info:
        camera_to_rgb(_msg(odd, 'yuv422_yuy2', width=W - 1))
    assert info.value.cause == 'odd_size'
    short = np.zeros((H, W), np.uint8)  # nv12 needs H * 3 / 2 rows
    with pytest.raises(ImageError, match='truncated') as info:
        camera_to_rgb(_msg(short, 'nv12'))
    assert info.value.cause == 'truncated'


def _compressed(data, fmt):
    msg = CompressedImage(format=fmt)
    msg.data = bytes(data)
    return msg


@pytest.mark.parametrize('codec', ['.png', '.jpg'])
def test_compressed_round_trip(codec):
    rgb = _smooth(block=4, seed=5)
    ok, data = cv2.imencode(codec, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    kind = 'png' if codec == '.png' else 'jpeg'
    got = compressed_to_rgb(_compressed(data, f'bgr8; {kind} compressed bgr8'))
    assert got.shape == (H, W, 3)
    # What OpenCV decodes, in RGB order (exactly the input for the lossless PNG).
    np.testing.assert_array_equal(got, cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])
    if kind == 'png':
        np.testing.assert_array_equal(got, rgb)
    error = np.abs(got.astype(int) - rgb).mean()
    assert error < np.abs(got[:, :, ::-1].astype(int) - rgb).mean() / 3  # channels not swapped
    # Plain "jpeg"/"png" (older publishers) is BGR in the codec too.
    again = compressed_to_rgb(_compressed(data, kind))
    np.testing.assert_array_equal(again, got)


def test_compressed_rgb_order_and_mono():
    rgb = _smooth(block=1, seed=6)
    ok, data = cv2.imencode('.png', rgb)  # the codec holds RGB order
    got = compressed_to_rgb(_compressed(data, 'rgb8; png compressed rgb8'))
    np.testing.assert_array_equal(got, rgb)
    mono16 = (rgb[:, :, 0].astype(np.uint16) << 8) | 5
    ok, data = cv2.imencode('.png', mono16)
    got = compressed_to_rgb(_compressed(data, 'mono16; png compressed mono16'))
    np.testing.assert_array_equal(got, np.repeat(rgb[:, :, :1], 3, axis=2))


def _depth_msg(png16, fmt, quant=(0.0, 0.0)):
    ok, data = cv2.imencode('.png', png16)
    return _compressed(struct.pack('<iff', 0, *quant) + data.tobytes(), fmt)


def test_compressed_depth_16uc1_and_32fc1():
    mm = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 7
    got = compressed_depth_to_metres(_depth_msg(mm, '16UC1; compressedDepth png'))
    assert np.isnan(got[0, 0])
    np.testing.assert_allclose(got.reshape(-1)[1:], mm.reshape(-1)[1:] * 1e-3, rtol=1e-6)
    # 32FC1: q = a / z + b, as compressed_depth_image_transport quantises (depth_max 10 m).
    z = np.linspace(0.5, 9.0, H * W).reshape(H, W).astype(np.float32)
    quant_a = 100.0 * 101.0
    quant_b = 1.0 - quant_a / 10.0
    q = np.round(quant_a / z + quant_b).astype(np.uint16)
    q[0, 0] = 0
    got = compressed_depth_to_metres(_depth_msg(q, '32FC1; compressedDepth', (quant_a, quant_b)))
    assert np.isnan(got[0, 0])
    np.testing.assert_allclose(got.reshape(-1)[1:], z.reshape(-1)[1:], rtol=0.01)


def test_compressed_errors_have_causes():
    cases = [
        (_compressed(b'\x01\x02', 'theora'), 'compressed_format', compressed_to_rgb),
        (_compressed(b'', 'jpeg'), 'compressed_empty', compressed_to_rgb),
        (_compressed(b'\xff\xd8\xff\x00garbage', 'jpeg'), 'compressed_corrupt',
         compressed_to_rgb),
        (_compressed(b'abc', '16UC1; compressedDepth rvl'), 'compressed_format',
         compressed_depth_to_metres),
        (_compressed(b'abc', '16UC1; compressedDepth'), 'compressed_corrupt',
         compressed_depth_to_metres),
    ]
    for msg, cause, decode in cases:
        with pytest.raises(ImageError) as info:
            decode(msg)
        assert info.value.cause == cause, (msg.format, str(info.value))


@pytest.mark.parametrize('codec', ['.png', '.jpg'])
def test_decompression_bomb_refused_before_decoding(codec):
    ok, data = cv2.imencode(codec, _smooth())
    data = bytearray(data.tobytes())
    assert image_inputs.declared_size(data) == (W, H)
    if codec == '.png':
        data[16:24] = struct.pack('>II', 100_000, 100_000)
    else:
        i = next(i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xC0)
        data[i + 5:i + 9] = struct.pack('>HH', 60_000, 60_000)
    with pytest.raises(ImageError, match='refusing to decode') as info:
        compressed_to_rgb(_compressed(data, 'jpeg' if codec == '.jpg' else 'png'))
    assert info.value.cause == 'compressed_too_large'


def test_background_decoder_keeps_order_and_drops_the_oldest():
    gate = threading.Event()
    seen = []

    def handle(item):
        gate.wait(5)
        seen.append(item)
    decoder = BackgroundDecoder(handle, capacity=2)
    try:
        dropped = [decoder.submit(i) for i in range(5)]
        # Item 0 is being handled (waiting on the gate); 1 and 2 were pushed out by 3 and 4.
        gate.set()
        end = time.monotonic() + 5
        while not decoder.idle and time.monotonic() < end:
            time.sleep(0.01)
        assert seen[-2:] == [3, 4] and sum(dropped) == 5 - len(seen)
        assert seen == sorted(seen)
    finally:
        assert decoder.stop()


def test_background_decoder_survives_a_failing_handler():
    errors, seen = [], []

    def handle(item):
        if item == 0:
            raise RuntimeError('boom')
        seen.append(item)
    decoder = BackgroundDecoder(handle, on_error=errors.append)
    try:
        decoder.submit(0)
        decoder.submit(1)
        end = time.monotonic() + 5
        while seen != [1] and time.monotonic() < end:
            time.sleep(0.01)
        assert seen == [1] and str(errors[0]) == 'boom'
    finally:
        assert decoder.stop()
