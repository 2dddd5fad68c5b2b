"""Camera inputs as robots send them: raw encodings beyond packed RGB, and CompressedImage.

Raw ``sensor_msgs/Image`` encodings (names of ``sensor_msgs/image_encodings.hpp``): the packed
RGB family of :mod:`dvd_ros.ros.messages`, YUV 4:2:2 (``yuv422_yuy2``/``yuyv`` and
``uyvy``/``yuv422``: usb_cam, gscam), ``nv12`` (Jetson), Bayer mosaics (machine-vision cameras,
demosaiced here), 16-bit colour (``rgb16``, ``bgr16``, ``rgba16``, ``bgra16``: the 8 high bits
are kept, as for ``mono16``) and cv_bridge's generic ``8UC1``/``8UC3``, read as ``mono8``/
``bgr8`` with one warning because the channel order is a guess.

``sensor_msgs/CompressedImage`` as image_transport's ``compressed`` plugin writes it (JPEG or
PNG, ``format`` like ``"bgr8; jpeg compressed bgr8"``) and ``compressedDepth`` (a 12-byte
header, then a 16-bit PNG: millimetres for ``16UC1``, quantised inverse depth for ``32FC1``)
for metric hints. A decompression bomb is refused from the size its header declares, before
decoding.
"""

from collections import deque
import struct
import threading

import cv2
import numpy as np

from dvd_ros.ros import messages
from dvd_ros.ros.messages import ImageError

# OpenCV names a Bayer pattern by the 2x2 block starting at pixel (1, 1), ROS by the block at
# (0, 0): ROS rggb is OpenCV's BG.
BAYER = {
    'bayer_rggb8': cv2.COLOR_BayerBG2RGB,
    'bayer_bggr8': cv2.COLOR_BayerRG2RGB,
    'bayer_gbrg8': cv2.COLOR_BayerGR2RGB,
    'bayer_grbg8': cv2.COLOR_BayerGB2RGB,
}
YUV422 = {
    'yuv422_yuy2': cv2.COLOR_YUV2RGB_YUY2,
    'yuyv': cv2.COLOR_YUV2RGB_YUY2,
    'uyvy': cv2.COLOR_YUV2RGB_UYVY,
    'yuv422': cv2.COLOR_YUV2RGB_UYVY,  # ROS' YUV422 is UYVY byte order
}
COLOR16 = {'rgb16': (3, False), 'bgr16': (3, True), 'rgba16': (4, False),
           'bgra16': (4, True)}
# cv_bridge's passthrough encodings: the channel order is not stated, so it is assumed.
GENERIC = {'8UC1': 'mono8', '8UC3': 'bgr8', '8UC4': 'bgra8'}
EXTRA_ENCODINGS = tuple(BAYER) + tuple(YUV422) + ('nv12',) + tuple(COLOR16) + tuple(GENERIC)
# Every encoding the node accepts as camera input.
CAMERA_ENCODINGS = tuple(messages.COLOR_ENCODINGS) + EXTRA_ENCODINGS

# A compressed image may declare at most this many pixels (a 64 MP photo passes; a 1 kB PNG
# declaring 100000 x 100000 pixels does not get decoded).
MAX_PIXELS = 64_000_000
# compressed_depth_image_transport's ConfigHeader: int32 format, float32 depthQuantA, depthQuantB.
_DEPTH_HEADER = struct.Struct('<iff')


def camera_to_rgb(msg, warn=None):
    """Convert a camera ``sensor_msgs/Image`` in any :data:`CAMERA_ENCODINGS` to RGB.

    :param msg: sensor_msgs/Image.
    :param warn: called with one message when an encoding's meaning is assumed (``8UC3``).
    :return: (H, W, 3) uint8 C-contiguous RGB.
    :raises ImageError: unknown encoding (cause ``encoding``), inconsistent sizes.
    """
    encoding = msg.encoding
    if encoding in messages.COLOR_ENCODINGS:
        return messages.image_to_rgb(msg)
    if encoding in GENERIC:
        assumed = GENERIC[encoding]
        if warn is not None:
            warn(f'image encoding {encoding!r} does not say the channel order: read as '
                 f'{assumed!r}; publish {assumed} (or rgb8) to make it explicit')
        channels = 1 if assumed == 'mono8' else int(encoding[3])
        arr = messages.pixel_rows(msg, channels, np.uint8)
        if channels == 1:
            return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if channels == 3 else cv2.COLOR_BGRA2RGB)
    if encoding in BAYER:
        mosaic = messages.pixel_rows(msg, 1, np.uint8)[:, :, 0]
        _check_even(msg, encoding, rows=False)
        return cv2.cvtColor(np.ascontiguousarray(mosaic), BAYER[encoding])
    if encoding in YUV422:
        _check_even(msg, encoding, rows=False)
        packed = messages.pixel_rows(msg, 2, np.uint8)
        return cv2.cvtColor(np.ascontiguousarray(packed), YUV422[encoding])
    if encoding == 'nv12':
        _check_even(msg, encoding, rows=True)
        planes = messages.pixel_rows(msg, 1, np.uint8, rows=int(msg.height) * 3 // 2)
        return cv2.cvtColor(np.ascontiguousarray(planes[:, :, 0]), cv2.COLOR_YUV2RGB_NV12)
    if encoding in COLOR16:
        channels, bgr = COLOR16[encoding]
        arr = messages.pixel_rows(msg, channels, np.uint16)
        rgb = arr[:, :, 2::-1] if bgr else arr[:, :, :3]
        return np.ascontiguousarray((rgb >> 8).astype(np.uint8))
    raise ImageError('encoding', f'unsupported image encoding {encoding!r}; publish one of '
                     f'{", ".join(CAMERA_ENCODINGS)} (e.g. through image_proc / a format '
                     'converter), or compressed with image_transport compressed')


def _check_even(msg, encoding, rows):
    width, height = int(msg.width), int(msg.height)
    if width % 2 or (rows and height % 2):
        need = 'width and height' if rows else 'width'
        raise ImageError('odd_size', f'{encoding} needs an even {need}, got {width}x{height}; '
                         'the camera driver publishes a malformed image')


def declared_size(data):
    """Return ``(width, height)`` declared by a PNG or JPEG header, or None if not found.

    :param data: the compressed bytes.
    :return: (width, height) in pixels, or None (unknown container or no size marker).
    """
    data = bytes(data[:1 << 16]) if len(data) > 1 << 16 else bytes(data)
    if data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) >= 24:
        width, height = struct.unpack('>II', data[16:24])
        return width, height
    if data[:2] != b'\xff\xd8':
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack('>H', data[i + 2:i + 4])[0]
        # Start-of-frame markers (baseline, progressive, ...) carry the size; 0xC4/0xC8/0xCC
        # share the range but are tables.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(data):
            height, width = struct.unpack('>HH', data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def _decode(data, what, flags=cv2.IMREAD_UNCHANGED, max_pixels=MAX_PIXELS):
    buf = np.frombuffer(bytes(data) if not isinstance(data, (bytes, bytearray)) else data,
                        np.uint8)
    if buf.size == 0:
        raise ImageError('compressed_empty', f'empty {what} (0 bytes); check the publisher')
    size = declared_size(buf)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError('compressed_too_large', f'{what} declares {size[0]}x{size[1]} pixels, '
                         f'more than {max_pixels}; refusing to decode it (a corrupt or hostile '
                         'message)')
    image = cv2.imdecode(buf, flags)
    if image is None:
        raise ImageError('compressed_corrupt', f'cannot decode {what} ({buf.size} bytes): '
                         'not a valid JPEG/PNG (truncated or corrupt data)')
    return image


def compressed_to_rgb(msg, max_pixels=MAX_PIXELS):
    """Decode an image_transport ``compressed`` message (JPEG or PNG) to RGB.

    ``format`` is ``"<encoding>; <jpeg|png> compressed <codec order>"`` (or just ``jpeg`` /
    ``png``); the codec holds BGR unless the order says ``rgb``. 16-bit PNG keeps its high byte.

    :param msg: sensor_msgs/CompressedImage.
    :param max_pixels: larger declared images are refused before decoding.
    :return: (H, W, 3) uint8 RGB.
    :raises ImageError: causes ``compressed_format``, ``compressed_empty``,
        ``compressed_too_large``, ``compressed_corrupt``.
    """
    fmt = msg.format.lower()
    if 'compresseddepth' in fmt or not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise ImageError('compressed_format', f'unsupported CompressedImage format '
                         f'{msg.format!r}; the camera input takes jpeg or png (image_transport '
                         '"compressed"), set image_transport raw for other transports')
    image = _decode(msg.data, f'{msg.format!r} CompressedImage', max_pixels=max_pixels)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    codec_rgb = 'compressed rgb' in fmt
    image = image[:, :, :3]
    return np.ascontiguousarray(image if codec_rgb else image[:, :, ::-1])


def compressed_depth_to_metres(msg, max_pixels=MAX_PIXELS):
    """Decode a ``compressedDepth`` message (16UC1 mm or 32FC1 m, PNG) to metres.

    :param msg: sensor_msgs/CompressedImage, format ``"16UC1; compressedDepth[ png]"`` or
        ``"32FC1; compressedDepth[ png]"``.
    :param max_pixels: larger declared images are refused before decoding.
    :return: (H, W) float32 metres, NaN where there is no data.
    :raises ImageError: as :func:`compressed_to_rgb`.
    """
    fmt = msg.format.lower().replace(' ', '')
    encoding = fmt.split(';')[0]
    if 'compresseddepth' not in fmt or encoding not in ('16uc1', '32fc1') or 'rvl' in fmt:
        raise ImageError('compressed_format', f'unsupported metric_hint format {msg.format!r}; '
                         'take "16UC1; compressedDepth" or "32FC1; compressedDepth" (png), or '
                         'set hint_transport raw')
    data = bytes(msg.data)
    if len(data) <= _DEPTH_HEADER.size:
        raise ImageError('compressed_corrupt', f'compressedDepth message of {len(data)} bytes is '
                         'shorter than its 12-byte header; check the publisher')
    _, quant_a, quant_b = _DEPTH_HEADER.unpack_from(data)
    raw = _decode(data[_DEPTH_HEADER.size:], f'{msg.format!r} metric_hint',
                  max_pixels=max_pixels)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ImageError('compressed_corrupt', f'compressedDepth PNG holds {raw.dtype} '
                         f'{raw.shape}, expected one 16-bit channel')
    if encoding == '16uc1':
        depth = raw.astype(np.float32) * np.float32(1e-3)
        depth[raw == 0] = np.nan
        return depth
    # 32FC1 is stored as quantised inverse depth q = a / z + b (0 = no data).
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = (np.float32(quant_a) / (raw.astype(np.float32) - np.float32(quant_b)))
    depth[(raw == 0) | ~np.isfinite(depth) | ~(depth > 0)] = np.nan
    return depth.astype(np.float32)


class BackgroundDecoder:
    """Decode messages on one thread of its own, so the executor never waits for a codec.

    ``submit`` queues at most ``capacity`` messages (the OLDEST goes when full, returned so it
    can be counted); the thread calls ``handle(item)`` for each in arrival order.

    :param handle: called on the decoder thread with each submitted item.
    :param capacity: items waiting at most.
    :param name: thread name.
    :param on_error: called with an exception ``handle`` raised (the thread goes on).
    """

    def __init__(self, handle, capacity=8, name='image_decoder', on_error=None):
        self.handle = handle
        self.on_error = on_error
        self.capacity = max(1, int(capacity))
        self._items = deque()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item):
        """Queue ``item``; return the number of older items dropped to make room (0 or 1)."""
        with self._cond:
            self._items.append(item)
            dropped = 0
            while len(self._items) > self.capacity:
                self._items.popleft()
                dropped += 1
            self._cond.notify()
        return dropped

    @property
    def idle(self):
        """Return True when nothing is queued or being decoded."""
        with self._cond:
            return not self._items and not self._busy

    def _run(self):
        while True:
            with self._cond:
                while not self._items and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self.handle(item)
            except Exception as exc:  # noqa: BLE001 - a dead decoder would silence the input
                if self.on_error is not None:
                    self.on_error(exc)
            finally:
                with self._cond:
                    self._busy = False

    def stop(self, timeout=0.5):
        """Stop the thread (queued items are abandoned); return True when it ended."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()
