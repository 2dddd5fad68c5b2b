"""Frame sources for offline processing: a video file, an image folder or a ROS 2 bag.

Every source knows its exact frame count before the first frame is read (the reference
stitching re-anchors its last window on the total length) and yields `SourceFrame` records in
order.  Errors name the offending file, topic or encoding and what to do about it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
import io
import math
import os
from pathlib import Path
import re
import sqlite3
import stat
import struct

import cv2
import numpy as np

from dvd_ros.errors import InputError

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
BAG_SUFFIXES = ('.mcap', '.db3')
SUPPORTED_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
DEFAULT_FPS = 30.0
DEFAULT_FRAME_ID = 'camera_optical_frame'
# Largest image (width x height) decoded: a guard against decompression bombs (a tiny PNG or
# JPEG that claims gigapixels); checked from the file header before decoding.  100 MP covers
# 8K video and most camera sensors; --max-pixels raises it.
DEFAULT_MAX_PIXELS = 100_000_000

# Errors the rosbags readers (and the sqlite3 / MCAP parsing under them) raise on a damaged
# file; they are turned into one InputError naming the bag.
_BAG_READ_ERRORS = (OSError, sqlite3.Error, struct.error, ValueError, KeyError, IndexError,
                    EOFError, UnicodeDecodeError, TypeError, AttributeError)


class SourceEndedEarly(InputError):
    """The source yielded fewer frames than it announced (damaged or truncated recording)."""


def _kind_of(mode):
    if not mode:
        return 'a broken symbolic link'
    kinds = ((stat.S_ISFIFO, 'a FIFO (named pipe)'), (stat.S_ISCHR, 'a character device'),
             (stat.S_ISBLK, 'a block device'), (stat.S_ISSOCK, 'a socket'),
             (stat.S_ISDIR, 'a directory'))
    for test, name in kinds:
        if test(mode):
            return name
    return 'not a regular file'


def check_regular_file(path, what='input'):
    """Raise InputError unless `path` is a regular file (a symlink to one is fine).

    Opening a FIFO or a device would block or read forever instead of failing.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise InputError(f'cannot read {what} {path}: {exc.strerror or exc}') from exc
    if not stat.S_ISREG(mode):
        raise InputError(f'{what} {path} is {_kind_of(mode)}, not a regular file; pass a '
                         'file (or folder) with the recorded data')


def read_regular_file(path, limit, what='image'):
    """Return the bytes of the regular file `path`, refusing FIFOs, devices and files > `limit`.

    The file is opened non-blocking and checked on the open descriptor, so a file swapped for
    a FIFO after it was listed cannot hang the read.
    """
    flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(f'cannot read {what} {path}: {exc.strerror or exc}') from exc
    with os.fdopen(fd, 'rb') as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f'{what} {path} is {_kind_of(st.st_mode)}, not a regular file; '
                             'remove it or replace it with the image file')
        if st.st_size > limit:
            raise InputError(f'{what} {path} is {st.st_size} bytes, more than {limit} bytes '
                             'an image within the pixel limit can take; check the file or '
                             'raise --max-pixels')
        return fh.read(limit + 1)


def check_pixels(width, height, max_pixels, what):
    """Raise InputError when a `width` x `height` image is above `max_pixels` (before decoding).

    :param what: names the image in the message
    """
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f'{what} is {width}x{height} = {width * height} pixels, above the limit '
                         f'of {max_pixels} pixels (a guard against decompression bombs); pass '
                         f'--max-pixels {width * height} (max_pixels= in Python) if it is '
                         'genuine')


def _max_bytes(max_pixels):
    # A PNG of incompressible RGBA16 data is ~8 bytes per pixel plus chunk overhead.
    return 1 << 62 if max_pixels is None else 8 * max_pixels + (16 << 20)


@dataclass(frozen=True)
class SourceFrame:
    """One input frame with the metadata the outputs need.

    `rgb` is (H, W, 3) uint8 RGB; `stamp_ns` the header stamp (ns); `log_time_ns` the bag
    receive time (ns; equal to `stamp_ns` for video and folders); `camera_info` the rosbags
    `sensor_msgs/msg/CameraInfo` in force for this frame, or None.
    """

    index: int
    stamp_ns: int
    frame_id: str
    rgb: np.ndarray
    camera_info: object | None = None
    log_time_ns: int = 0


def rosbags_typestore():
    """Return the newest ROS 2 typestore this rosbags release ships (message definitions)."""
    from rosbags.typesys import Stores, get_typestore

    for name in ('ROS2_KILTED', 'ROS2_JAZZY', 'ROS2_HUMBLE'):
        if hasattr(Stores, name):
            return get_typestore(getattr(Stores, name))
    return get_typestore(Stores.LATEST)


def classify_input(path):
    """Return 'bag', 'folder' or 'video' for an input path.

    :param path: a rosbag2 directory (with metadata.yaml), an .mcap/.db3 file, an image
        folder or a video file
    :return: the kind of source
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f'input {str(path)!r} does not exist; pass a video file, an image '
                         'folder or a ROS 2 bag (directory, .mcap or .db3)')
    if path.is_dir():
        if (path / 'metadata.yaml').exists():
            return 'bag'
        return 'folder'
    check_regular_file(path)
    if path.suffix.lower() in BAG_SUFFIXES:
        return 'bag'
    return 'video'


def open_source(path, topic=None, camera_info_topic=None, fps=None, frame_id=None,
                max_pixels=DEFAULT_MAX_PIXELS):
    """Open the right frame source for `path` (see `classify_input`).

    :param path: input path
    :param topic: image topic of a bag (None: the only image topic)
    :param camera_info_topic: CameraInfo topic of a bag (None: `<namespace>/camera_info`)
    :param fps: frame rate of a folder (video: from the file unless given)
    :param frame_id: header frame_id for video and folder frames
    :param max_pixels: largest width x height decoded (None: no limit)
    :return: a `VideoSource`, `FolderSource` or `BagSource`
    """
    kind = classify_input(path)
    if kind == 'bag':
        return BagSource(path, topic=topic, camera_info_topic=camera_info_topic,
                         max_pixels=max_pixels)
    if topic is not None or camera_info_topic is not None:
        raise InputError(f'--topic/--camera-info-topic apply to ROS 2 bags only, but {path} '
                         f'is a {kind}; drop the option')
    if kind == 'folder':
        return FolderSource(path, fps=fps, frame_id=frame_id, max_pixels=max_pixels)
    return VideoSource(path, fps=fps, frame_id=frame_id, max_pixels=max_pixels)


def _check_fps(fps):
    if fps is None:
        return None
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f'fps must be a positive number, got {fps}; pass e.g. --fps 30')
    return fps


def _stamp(index, fps):
    return round(index * 1e9 / fps)


class VideoSource:
    """Frames of a video file decoded with OpenCV (BGR converted to RGB).

    The frame count is measured by grabbing every frame once, because container headers
    (CAP_PROP_FRAME_COUNT) are often wrong and the stitching needs the exact length.  When
    decoding stops before the frame count the container lists (a damaged middle stops the
    decoder), the decodable frames are processed and `shortfall` says what is missing.
    """

    kind = 'video'

    def __init__(self, path, fps=None, frame_id=None, max_pixels=DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.frame_id = frame_id or DEFAULT_FRAME_ID
        check_regular_file(self.path)
        cap = self._open()
        try:
            width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            check_pixels(width, height, max_pixels, f'video {self.path}')
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            listed = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            count = 0
            while cap.grab():
                count += 1
        finally:
            cap.release()
        if count == 0 or width <= 0 or height <= 0:
            raise InputError(f'video {self.path} has no decodable frames; check the file with '
                             '`ffprobe` or convert it to MP4 (H.264)')
        self.size = (width, height)
        self.count = count
        self.listed = int(listed) if math.isfinite(listed) and listed > 0 else None
        self.shortfall = None
        if self.listed is not None and self.listed > count:
            self.shortfall = (f'video {self.path} lists {self.listed} frames but decoding '
                              f'stopped after {count}: the file is damaged or truncated from '
                              'there on (re-encode or repair it); only those frames were '
                              'processed')
        given = _check_fps(fps)
        if given is not None:
            self.fps = given
        elif file_fps and math.isfinite(file_fps) and file_fps > 0:
            self.fps = float(file_fps)
        else:
            self.fps = DEFAULT_FPS

    def _open(self):
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f'cannot open video {self.path} (not a video OpenCV can decode, or '
                             'unreadable); pass a video file, an image folder or a ROS 2 bag')
        return cap

    def __len__(self):
        return self.count

    def describe(self):
        """Return a one-line description for logs."""
        w, h = self.size
        return f'video {self.path.name}: {self.count} frames {w}x{h} @ {self.fps:.3g} fps'

    def __iter__(self) -> Iterator[SourceFrame]:
        cap = self._open()
        try:
            for index in range(self.count):
                ok, bgr = cap.read()
                if not ok:
                    raise SourceEndedEarly(f'video {self.path} ended at frame {index} of '
                                           f'{self.count} on the second read; the file is '
                                           'damaged, re-encode it')
                if bgr.ndim == 2:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
                else:
                    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                stamp = _stamp(index, self.fps)
                yield SourceFrame(index, stamp, self.frame_id, rgb, None, stamp)
        finally:
            cap.release()


def _png_size(head):
    if head[:8] != b'\x89PNG\r\n\x1a\n' or head[12:16] != b'IHDR':
        return None
    width, height = struct.unpack('>II', head[16:24])
    return width, height


def _exif_transposes(segment):
    """Return whether an APP1 payload's EXIF Orientation (5..8) swaps width and height."""
    tiff = segment[6:]
    if not segment.startswith(b'Exif\x00\x00') or tiff[:2] not in (b'II', b'MM'):
        return False
    fmt = '<' if tiff[:2] == b'II' else '>'
    try:
        (ifd,) = struct.unpack_from(fmt + 'I', tiff, 4)
        (entries,) = struct.unpack_from(fmt + 'H', tiff, ifd)
        for i in range(entries):
            tag, kind, _, value = struct.unpack_from(fmt + 'HHI4s', tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:  # Orientation, SHORT
                return struct.unpack_from(fmt + 'H', value)[0] in (5, 6, 7, 8)
    except struct.error:
        return False
    return False


def _jpeg_size(fh):
    """Return (width, height) from the JPEG in the binary file object `fh`, or None."""
    # Walk the JPEG markers up to the first start-of-frame segment (holds height and width).
    # OpenCV decodes with the EXIF orientation applied, so a rotated file's size is swapped.
    transposed = False
    if fh.read(2) != b'\xff\xd8':
        return None
    while True:
        byte = fh.read(1)
        while byte and byte != b'\xff':
            byte = fh.read(1)
        while byte == b'\xff':
            byte = fh.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, 0xd8) or 0xd0 <= marker <= 0xd7:
            continue
        length_bytes = fh.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack('>H', length_bytes)
        if length < 2:  # a segment length counts its own two bytes
            return None
        if 0xc0 <= marker <= 0xcf and marker not in (0xc4, 0xc8, 0xcc):
            segment = fh.read(5)
            if len(segment) < 5:
                return None
            height, width = struct.unpack('>HH', segment[1:5])
            return (height, width) if transposed else (width, height)
        if marker == 0xe1 and not transposed:
            transposed = _exif_transposes(fh.read(length - 2))
            continue
        fh.seek(length - 2, 1)


def image_bytes_size(data):
    """Return (width, height) of PNG or JPEG bytes from their header, or None if unparsable."""
    head = bytes(data[:24])
    if head.startswith(b'\x89PNG'):
        return _png_size(head)
    if head.startswith(b'\xff\xd8'):
        return _jpeg_size(io.BytesIO(data))
    return None


def image_file_size(path):
    """Return (width, height) of a PNG or JPEG file from its header, or None if unparsable.

    Only a regular file is read (InputError for a FIFO, device or directory), and only up to
    the size fields.
    """
    flags = os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputError(f'cannot read image {path}: {exc.strerror or exc}') from exc
    with os.fdopen(fd, 'rb') as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f'{path} is {_kind_of(mode)}, not an image file; remove it')
        head = fh.read(24)
        if head.startswith(b'\xff\xd8'):
            fh.seek(0)
            return _jpeg_size(fh)
    return _png_size(head) if head.startswith(b'\x89PNG') else None


def decode_image_bytes(data, what, max_pixels, size=None):
    """Decode PNG/JPEG bytes to BGR after checking the header's size against `max_pixels`.

    :param data: the encoded bytes
    :param what: names the image in messages
    :param size: (width, height) already read from the header, if known
    :return: (H, W, 3) uint8 BGR, or None when OpenCV cannot decode it
    """
    size = size or image_bytes_size(data)
    if size is None:
        raise InputError(f'{what} has no readable PNG or JPEG header; the data is damaged')
    check_pixels(size[0], size[1], max_pixels, what)
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def frame_order(path):
    """Return the sort key of an image file: numbers by value (`f_9` before `f_10`), then name."""
    parts = re.split(r'(\d+)', path.name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)], path.name


class FolderSource:
    """Frames from an image folder: PNG/JPEG files in name order, numbers compared by value.

    Zero-padded names sort as plain text would; unpadded ones (`frame_%d.png`) keep their
    frame order too.
    """

    kind = 'folder'

    def __init__(self, path, fps=None, frame_id=None, max_pixels=DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.frame_id = frame_id or DEFAULT_FRAME_ID
        self.fps = _check_fps(fps) or DEFAULT_FPS
        self.max_pixels = max_pixels
        images = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        for p in images:
            # A FIFO or device named like an image would block or never end when read.
            mode = os.stat(p).st_mode if p.exists() else 0
            if not stat.S_ISREG(mode):
                raise InputError(f'{p} is {_kind_of(mode)}, not an image file; remove it from '
                                 f'{self.path}')
        self.files = sorted(images, key=frame_order)
        if not self.files:
            raise InputError(f'image folder {self.path} holds no .png/.jpg/.jpeg files; point '
                             'INPUT at the folder with the frames')
        self.size = None
        for file in self.files:
            size = image_file_size(file)
            if size is None:
                raise InputError(f'{file} is not a readable PNG or JPEG image; remove it from '
                                 f'{self.path}')
            if self.size is None:
                check_pixels(size[0], size[1], max_pixels, f'image {file}')
                self.size = size
            elif size != self.size:
                raise InputError(
                    f'image {file.name} is {size[0]}x{size[1]} but {self.files[0].name} is '
                    f'{self.size[0]}x{self.size[1]}; all frames of a folder must have the same '
                    'size (resize them or split the folder)')

    def __len__(self):
        return len(self.files)

    def describe(self):
        """Return a one-line description for logs."""
        w, h = self.size
        return f'folder {self.path.name}: {len(self.files)} images {w}x{h} @ {self.fps:.3g} fps'

    def __iter__(self) -> Iterator[SourceFrame]:
        for index, file in enumerate(self.files):
            # Read through a checked descriptor and re-check the header: the file may have
            # been replaced since it was listed.
            data = read_regular_file(file, _max_bytes(self.max_pixels))
            bgr = decode_image_bytes(data, f'image {file}', self.max_pixels)
            if bgr is None:
                raise InputError(f'cannot decode image {file}; the file is damaged, replace or '
                                 'remove it')
            if (bgr.shape[1], bgr.shape[0]) != self.size:
                raise InputError(f'image {file.name} decodes to {bgr.shape[1]}x{bgr.shape[0]}, '
                                 f'expected {self.size[0]}x{self.size[1]}; fix the file')
            stamp = _stamp(index, self.fps)
            yield SourceFrame(index, stamp, self.frame_id, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                              None, stamp)


def image_namespace(topic):
    """Return the namespace of an image topic: `/cam/image_raw[/compressed]` -> `/cam`."""
    parts = topic.rstrip('/').split('/')
    if parts[-1] in ('compressed', 'compressedDepth', 'theora', 'zstd') and len(parts) > 2:
        parts = parts[:-1]
    return '/'.join(parts[:-1])


def image_msg_to_rgb(msg, max_pixels=DEFAULT_MAX_PIXELS):
    """Convert a rosbags `sensor_msgs/msg/Image` to (H, W, 3) uint8 RGB.

    mono16 maps 0..65535 linearly to 0..255 (a fixed scale, so brightness cannot flicker
    between frames).
    """
    encoding = msg.encoding.lower()
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 2}
    if encoding not in channels:
        raise InputError(f'unsupported image encoding {msg.encoding!r}; supported: '
                         f'{", ".join(SUPPORTED_ENCODINGS)} and CompressedImage jpeg/png '
                         '(convert the topic, e.g. with image_proc, or pick another --topic)')
    row_bytes = width * channels[encoding]
    data = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    if height <= 0 or width <= 0 or step < row_bytes or data.size < step * height:
        raise InputError(f'image message is inconsistent: {width}x{height} {msg.encoding} step '
                         f'{step} with {data.size} data bytes; the recording is damaged')
    check_pixels(width, height, max_pixels, f'a {msg.encoding} Image message')
    rows = data[:step * height].reshape(height, step)[:, :row_bytes]
    if encoding == 'mono16':
        dtype = '>u2' if msg.is_bigendian else '<u2'
        mono = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
        gray = ((mono.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    pixels = rows.reshape(height, width, -1)
    if encoding == 'mono8':
        return np.repeat(pixels, 3, axis=2)
    if encoding in ('bgr8', 'bgra8'):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    return np.ascontiguousarray(pixels[:, :, :3])


def compressed_msg_to_rgb(msg, max_pixels=DEFAULT_MAX_PIXELS):
    """Convert a rosbags `sensor_msgs/msg/CompressedImage` (jpeg/png) to (H, W, 3) uint8 RGB.

    The size in the PNG/JPEG header is checked against `max_pixels` before decoding.
    """
    fmt = msg.format.lower()
    if 'compresseddepth' in fmt or not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise InputError(f'unsupported CompressedImage format {msg.format!r}; supported: jpeg, '
                         'png colour images (pick another --topic)')
    data = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    bgr = decode_image_bytes(data.tobytes(), f'a {msg.format!r} CompressedImage', max_pixels)
    if bgr is None:
        raise InputError(f'cannot decode a {msg.format!r} CompressedImage ({data.size} bytes); '
                         'the recording is damaged')
    # image_transport's "rgb8; jpeg compressed rgb8" stores RGB order in the codec.
    if 'compressed rgb' in fmt:
        return np.ascontiguousarray(bgr)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def check_bag_files(path):
    """Raise InputError when a bag (file or folder) holds anything but regular files and folders.

    rosbags opens `metadata.yaml` and the storage files by name; a FIFO or device there would
    block the reader forever.
    """
    path = Path(path)
    if not path.is_dir():
        check_regular_file(path, 'ROS 2 bag')
        return
    check_regular_file(path / 'metadata.yaml', 'bag metadata')
    for entry in os.scandir(path):
        mode = os.stat(entry.path).st_mode if os.path.exists(entry.path) else 0
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InputError(f'bag folder {path} holds {entry.name}, {_kind_of(mode)}; a rosbag2 '
                             'folder holds regular files only (remove it)')


def open_bag_reader(path):
    """Open a rosbag2 (directory, .mcap or .db3) with rosbags; damaged files raise InputError.

    :param path: bag path
    :return: an open `rosbags.rosbag2.Reader` (close it)
    """
    from rosbags.rosbag2 import Reader
    from rosbags.rosbag2.errors import ReaderError

    path = Path(path)
    check_bag_files(path)
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, FileNotFoundError, *_BAG_READ_ERRORS) as exc:
        raise InputError(f'cannot read ROS 2 bag {path}: {exc} (the file is truncated, corrupt '
                         'or not a rosbag2 MCAP/sqlite3 bag; re-record it or repair it '
                         '(`mcap recover`, `ros2 bag reindex`))') from exc
    return reader


def bag_messages(reader, connections, path):
    """Yield (connection, log_time_ns, raw) from an open reader, damaged data -> InputError."""
    from rosbags.rosbag2.errors import ReaderError

    iterator = reader.messages(connections=connections)
    count = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except (ReaderError, *_BAG_READ_ERRORS) as exc:
            raise InputError(f'ROS 2 bag {path} is damaged after {count} messages: {exc} '
                             '(re-record it or repair it: `mcap recover`, '
                             '`ros2 bag reindex`)') from exc
        count += 1
        yield item


class BagSource:
    """Image frames of one topic of a ROS 2 bag, with the matching CameraInfo.

    :param path: rosbag2 directory, .mcap or .db3 file
    :param topic: image topic (None: the only sensor_msgs Image/CompressedImage topic)
    :param camera_info_topic: CameraInfo topic (None: `<image namespace>/camera_info`, optional)
    """

    kind = 'bag'

    def __init__(self, path, topic=None, camera_info_topic=None,
                 max_pixels=DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.typestore = rosbags_typestore()
        reader = open_bag_reader(self.path)
        try:
            topics = {c.topic: c.msgtype for c in reader.connections}
            images = sorted(t for t, m in topics.items() if m in IMAGE_TYPES)
            listing = ', '.join(f'{t} ({topics[t].rsplit("/", 1)[-1]})' for t in images)
            listing = listing or 'none'
            if topic is None:
                if len(images) != 1:
                    raise InputError(f'bag {self.path} has {len(images)} image topics: {listing}; '
                                     'choose one with --topic')
                topic = images[0]
            elif topic not in topics:
                raise InputError(f'topic {topic!r} is not in bag {self.path}; image topics: '
                                 f'{listing}')
            elif topic not in images:
                raise InputError(f'topic {topic!r} in bag {self.path} is {topics[topic]}, not an '
                                 f'image; image topics: {listing}')
            self.topic = topic
            self.msgtype = topics[topic]
            self.image_connections = [c for c in reader.connections if c.topic == topic]
            self.count = sum(c.msgcount for c in self.image_connections)
            if camera_info_topic is None:
                guess = f'{image_namespace(topic)}/camera_info'
                camera_info_topic = guess if topics.get(guess) == CAMERA_INFO_TYPE else None
            elif topics.get(camera_info_topic) != CAMERA_INFO_TYPE:
                infos = sorted(t for t, m in topics.items() if m == CAMERA_INFO_TYPE)
                raise InputError(f'{camera_info_topic!r} is not a CameraInfo topic of bag '
                                 f'{self.path}; CameraInfo topics: {", ".join(infos) or "none"}')
            self.camera_info_topic = camera_info_topic
            self.info_connections = [c for c in reader.connections
                                     if c.topic == camera_info_topic]
            self.first_camera_info = self._first_camera_info(reader)
            # Decode one frame now: an unsupported encoding fails before any output exists.
            self.size = self._probe_size(reader) if self.count else None
            self.storage = self._storage_name(reader)
            self.start_ns = reader.start_time if reader.message_count else 0
            duration = reader.duration if reader.message_count else 0
        finally:
            reader.close()
        if self.count == 0:
            raise InputError(f'image topic {topic!r} of bag {self.path} has no messages; choose '
                             f'another --topic ({listing})')
        # Frame rate for the MP4 only; stamps always come from the messages.
        seconds = duration / 1e9
        self.fps = (self.count - 1) / seconds if self.count > 1 and seconds > 0 else DEFAULT_FPS

    def _storage_name(self, reader):
        name = type(reader.storage).__name__.lower()
        if 'mcap' in name:
            return 'mcap'
        if 'sqlite' in name:
            return 'sqlite3'
        storages = getattr(reader.storage, 'storages', [])
        if storages and 'sqlite' in type(storages[0]).__name__.lower():
            return 'sqlite3'
        return 'mcap'

    def _first_camera_info(self, reader):
        if not self.info_connections:
            return None
        for conn, _, raw in bag_messages(reader, self.info_connections, self.path):
            return self._deserialize(raw, conn.msgtype)
        return None

    def _probe_size(self, reader):
        for conn, _, raw in bag_messages(reader, self.image_connections, self.path):
            rgb = self.decode(self._deserialize(raw, conn.msgtype))
            return rgb.shape[1], rgb.shape[0]
        return None

    def _deserialize(self, raw, msgtype):
        try:
            return self.typestore.deserialize_cdr(raw, msgtype)
        except Exception as exc:  # rosbags raises assorted errors on malformed CDR
            raise InputError(f'cannot deserialize a {msgtype} message of bag {self.path}: {exc} '
                             '(the recording is damaged)') from exc

    def __len__(self):
        return self.count

    def describe(self):
        """Return a one-line description for logs."""
        info = self.camera_info_topic or 'no CameraInfo'
        return (f'bag {self.path.name} ({self.storage}): {self.topic} {self.count} frames, '
                f'{info}, ~{self.fps:.3g} fps')

    def decode(self, msg):
        """Convert an image message of this topic to (H, W, 3) uint8 RGB."""
        if self.msgtype == 'sensor_msgs/msg/CompressedImage':
            return compressed_msg_to_rgb(msg, self.max_pixels)
        return image_msg_to_rgb(msg, self.max_pixels)

    def __iter__(self) -> Iterator[SourceFrame]:
        reader = open_bag_reader(self.path)
        try:
            camera_info = self.first_camera_info
            index = 0
            conns = self.image_connections + self.info_connections
            for conn, log_time, raw in bag_messages(reader, conns, self.path):
                msg = self._deserialize(raw, conn.msgtype)
                if conn.msgtype == CAMERA_INFO_TYPE:
                    camera_info = msg
                    continue
                rgb = self.decode(msg)
                size = (rgb.shape[1], rgb.shape[0])
                if size != self.size:
                    raise InputError(f'image {index} of {self.topic} is {size[0]}x{size[1]}, '
                                     f'earlier ones {self.size[0]}x{self.size[1]}; a topic must '
                                     'keep one size (split the bag)')
                stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
                yield SourceFrame(index, stamp, msg.header.frame_id, rgb, camera_info, log_time)
                index += 1
            if index != self.count:
                raise SourceEndedEarly(
                    f'bag {self.path} yielded {index} of the {self.count} messages its index '
                    f'lists for {self.topic}; the bag is truncated (repair it, e.g. '
                    '`ros2 bag reindex`)')
        finally:
            reader.close()
