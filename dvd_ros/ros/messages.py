"""Conversions between ROS messages (Image, CameraInfo, PointCloud2) and numpy arrays.

Message payloads are filled from ``arr.tobytes()`` and read with ``np.frombuffer``: assigning a
numpy array to a ``uint8[]`` field goes element by element and is ~100x slower.
"""

import sys

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from dvd_ros.errors import InputError
from dvd_ros.rectify import CameraModel

# encoding -> (channels, dtype) of one pixel, as sensor_msgs/image_encodings.hpp defines them.
ENCODINGS = {
    'rgb8': (3, np.uint8),
    'bgr8': (3, np.uint8),
    'rgba8': (4, np.uint8),
    'bgra8': (4, np.uint8),
    'mono8': (1, np.uint8),
    'mono16': (1, np.uint16),
    '32FC1': (1, np.float32),
    '16UC1': (1, np.uint16),
}
# What the node accepts as camera input, and as a sparse metric depth hint.
COLOR_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
DEPTH_ENCODINGS = ('32FC1', '16UC1')

# PointField datatype code -> numpy dtype (sensor_msgs/PointField constants).
POINTFIELD_DTYPES = {
    PointField.INT8: np.int8, PointField.UINT8: np.uint8,
    PointField.INT16: np.int16, PointField.UINT16: np.uint16,
    PointField.INT32: np.int32, PointField.UINT32: np.uint32,
    PointField.FLOAT32: np.float32, PointField.FLOAT64: np.float64,
}

_HOST_BIGENDIAN = sys.byteorder == 'big'
_CV_TO_RGB = {'bgr8': cv2.COLOR_BGR2RGB, 'bgra8': cv2.COLOR_BGRA2RGB, 'rgba8': cv2.COLOR_RGBA2RGB}


class ImageError(InputError):
    """A message that cannot be converted; ``cause`` is a short key for per-cause logging."""

    def __init__(self, cause, message):
        super().__init__(message)
        self.cause = cause


def image_to_array(msg, allowed=None):
    """Return the pixels of ``msg`` as ``(H, W)`` or ``(H, W, C)`` in the encoding's dtype.

    Row padding (``step`` larger than a row) is skipped and big-endian data is byte-swapped to
    the host order. The result may share memory with ``msg.data`` and is read-only.

    :param msg: sensor_msgs/Image.
    :param allowed: encodings to accept (default: every encoding in :data:`ENCODINGS`).
    :return: numpy array, native byte order.
    :raises ImageError: unknown encoding, zero size, step or data length inconsistent.
    """
    allowed = tuple(ENCODINGS) if allowed is None else tuple(allowed)
    encoding = msg.encoding
    if encoding not in allowed:
        raise ImageError('encoding', f'unsupported image encoding {encoding!r}; publish one of '
                         f'{", ".join(allowed)} (e.g. through image_proc / a format converter)')
    channels, dtype = ENCODINGS[encoding]
    arr = pixel_rows(msg, channels, dtype)
    return arr[:, :, 0] if channels == 1 else arr


def pixel_rows(msg, channels, dtype, rows=None):
    """Return the pixels of ``msg`` as ``(rows, W, channels)`` of ``dtype``, read-only view.

    The layout is given, not read from ``msg.encoding``, so planar and packed formats (NV12's
    ``height * 3 / 2`` rows, YUV 4:2:2's two bytes per pixel) share the size checks.

    :param msg: sensor_msgs/Image (``height``, ``width``, ``step``, ``is_bigendian``, ``data``).
    :param channels: values per pixel.
    :param dtype: numpy dtype of one value.
    :param rows: rows of ``step`` bytes in ``data``; default ``msg.height``.
    :return: numpy array in native byte order.
    :raises ImageError: zero size, step or data length inconsistent.
    """
    encoding = msg.encoding
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageError('zero_size', f'zero-size image ({width}x{height}, {encoding}); '
                         'check the camera driver')
    rows = height if rows is None else int(rows)
    dtype = np.dtype(dtype)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageError('step', f'image step {step} is smaller than one row of {width} '
                         f'{encoding} pixels ({row_bytes} bytes); the message header is wrong')
    size = len(msg.data)
    if size < step * rows:
        raise ImageError('truncated', f'truncated image data: {size} bytes, expected step*rows '
                         f'= {step}*{rows} = {step * rows} for {width}x{height} {encoding}')
    if size != step * rows:
        raise ImageError('step', f'image data length {size} does not match step*rows = '
                         f'{step}*{rows} = {step * rows}; the message header is wrong')
    if dtype.itemsize > 1 and bool(msg.is_bigendian) != _HOST_BIGENDIAN:
        dtype = dtype.newbyteorder()
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    arr = np.ndarray((rows, width, channels), dtype=dtype, buffer=buf,
                     strides=(step, channels * dtype.itemsize, dtype.itemsize))
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder('='))
    return arr


def image_to_rgb(msg):
    """Convert a camera image to ``(H, W, 3) uint8`` RGB (mono16 keeps its 8 high bits).

    :param msg: sensor_msgs/Image in one of :data:`COLOR_ENCODINGS`.
    :return: (H, W, 3) uint8 C-contiguous RGB.
    :raises ImageError: see :func:`image_to_array`.
    """
    arr = image_to_array(msg, COLOR_ENCODINGS)
    encoding = msg.encoding
    if encoding == 'rgb8':
        rgb = arr
    elif encoding in _CV_TO_RGB:
        # OpenCV reads padded rows in place and is ~10x faster than a numpy channel reversal.
        return cv2.cvtColor(arr, _CV_TO_RGB[encoding])
    else:
        mono = arr if encoding == 'mono8' else (arr >> 8).astype(np.uint8)
        rgb = np.repeat(mono[:, :, None], 3, axis=2)
    return np.ascontiguousarray(rgb)


def image_to_depth(msg):
    """Convert a REP 118 depth image to ``(H, W) float32`` metres, NaN where no data.

    32FC1 is metres (non-finite and <= 0 -> NaN); 16UC1 is millimetres (0 -> NaN).

    :param msg: sensor_msgs/Image, 32FC1 or 16UC1.
    :return: (H, W) float32, metres.
    """
    arr = image_to_array(msg, DEPTH_ENCODINGS)
    if msg.encoding == '16UC1':
        depth = arr.astype(np.float32) * np.float32(1e-3)
    else:
        depth = arr.astype(np.float32, copy=True)
    depth[~(depth > 0) | ~np.isfinite(depth)] = np.nan
    return depth


def array_to_image(arr, encoding, header):
    """Build a sensor_msgs/Image from an array: 32FC1 / 16UC1 ``(H, W)``, rgb8 ``(H, W, 3)``.

    :param arr: pixels; dtype and shape must match ``encoding``.
    :param encoding: one of :data:`ENCODINGS`.
    :param header: std_msgs/Header copied into the message.
    :return: sensor_msgs/Image, unpadded rows, host byte order.
    """
    if encoding not in ENCODINGS:
        raise InputError(f'cannot encode {encoding!r}; use one of {sorted(ENCODINGS)}')
    channels, dtype = ENCODINGS[encoding]
    arr = np.asarray(arr)
    expected_ndim = 2 if channels == 1 else 3
    if (arr.dtype != dtype or arr.ndim != expected_ndim
            or (channels > 1 and arr.shape[2] != channels) or arr.size == 0):
        raise InputError(f'{encoding} needs a non-empty {np.dtype(dtype).name} array of '
                         f'{"(H, W)" if channels == 1 else f"(H, W, {channels})"}, '
                         f'got {arr.dtype.name} {arr.shape}')
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(_HOST_BIGENDIAN)
    msg.step = msg.width * channels * arr.dtype.itemsize
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


def camera_info_matrix(info):
    """Return ``K`` of a CameraInfo as a (3, 3) float64 array."""
    return np.asarray(info.k, dtype=np.float64).reshape(3, 3)


def restamp_camera_info(info, header, intrinsics=None):
    """Copy a CameraInfo with a new header; rescale it when ``intrinsics`` has another size.

    :param info: sensor_msgs/CameraInfo of the input image.
    :param header: std_msgs/Header of the output image.
    :param intrinsics: ``geometry.PinholeIntrinsics`` of the output image, or None to keep the
        input calibration unchanged.
    :return: new sensor_msgs/CameraInfo.
    """
    out = CameraInfo()
    out.header = header
    out.height, out.width = info.height, info.width
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    out.k = np.array(info.k, dtype=np.float64)
    out.r = np.array(info.r, dtype=np.float64)
    out.p = np.array(info.p, dtype=np.float64)
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    out.roi = info.roi
    if intrinsics is None:
        return out
    # A CameraInfo without a size (0) has K for the image as it is: nothing to rescale.
    width, height = info.width or intrinsics.width, info.height or intrinsics.height
    out.width, out.height = int(intrinsics.width), int(intrinsics.height)
    if (intrinsics.width, intrinsics.height) != (width, height):
        sx = intrinsics.width / float(width)
        sy = intrinsics.height / float(height)
        out.k = np.array([intrinsics.fx, 0.0, intrinsics.cx,
                          0.0, intrinsics.fy, intrinsics.cy,
                          0.0, 0.0, 1.0], dtype=np.float64)
        p = np.asarray(info.p, dtype=np.float64).reshape(3, 4).copy()
        # Same pixel-centre convention as PinholeIntrinsics.scaled, so K and P stay consistent.
        for row, s in ((0, sx), (1, sy)):
            p[row, row] *= s
            p[row, 2] = (p[row, 2] + 0.5) * s - 0.5
            p[row, 3] *= s
        out.p = p.reshape(-1)
    return out


def camera_model(info, width, height):
    """Return the :class:`~dvd_ros.rectify.CameraModel` of a CameraInfo.

    :param info: sensor_msgs/CameraInfo.
    :param width: image width, used when the CameraInfo has none (0).
    :param height: image height, likewise.
    :raises InputError: non-finite or malformed calibration.
    """
    return CameraModel.from_arrays(info.width or width, info.height or height, info.k, info.d,
                                   info.r, info.p, info.distortion_model or 'plumb_bob')


def camera_info_of_model(model, like):
    """Build a CameraInfo of ``model`` with the header, binning and ROI of ``like``.

    :param model: :class:`~dvd_ros.rectify.CameraModel`.
    :param like: sensor_msgs/CameraInfo to take the other fields from.
    :return: new sensor_msgs/CameraInfo.
    """
    out = CameraInfo()
    out.header = like.header
    out.width, out.height = int(model.width), int(model.height)
    out.distortion_model = model.distortion_model
    out.d = [float(c) for c in model.d]
    out.k = np.array(model.k, dtype=np.float64)
    out.r = np.array(model.r, dtype=np.float64)
    out.p = np.array(model.p, dtype=np.float64)
    out.binning_x, out.binning_y = like.binning_x, like.binning_y
    out.roi = like.roi
    return out


def camera_info_from_intrinsics(intrinsics, header):
    """Build a distortion-free CameraInfo (plumb_bob, zero D) for ``intrinsics``."""
    info = CameraInfo()
    info.header = header
    info.width, info.height = int(intrinsics.width), int(intrinsics.height)
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = np.array([intrinsics.fx, 0.0, intrinsics.cx, 0.0, intrinsics.fy, intrinsics.cy,
                       0.0, 0.0, 1.0], dtype=np.float64)
    info.r = np.eye(3).reshape(-1)
    info.p = np.array([intrinsics.fx, 0.0, intrinsics.cx, 0.0,
                       0.0, intrinsics.fy, intrinsics.cy, 0.0,
                       0.0, 0.0, 1.0, 0.0], dtype=np.float64)
    return info


def cloud_message(packed, header):
    """Build a sensor_msgs/PointCloud2 from a ``geometry.PackedCloud``.

    :param packed: PackedCloud(data, fields[(name, offset, datatype)], point_step, row_step,
        height, width, is_dense, is_bigendian).
    :param header: std_msgs/Header (frame_id = the camera optical frame).
    :return: sensor_msgs/PointCloud2.
    """
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = int(packed.height), int(packed.width)
    msg.fields = [PointField(name=name, offset=int(offset), datatype=int(datatype), count=1)
                  for name, offset, datatype in packed.fields]
    msg.is_bigendian = bool(packed.is_bigendian)
    msg.point_step = int(packed.point_step)
    msg.row_step = int(packed.row_step)
    msg.data = packed.data
    msg.is_dense = bool(packed.is_dense)
    return msg


def cloud_to_xyz(msg):
    """Read the x, y, z fields of a PointCloud2 as ``(N, 3) float32`` (NaN rows kept).

    :param msg: sensor_msgs/PointCloud2 with x, y, z fields of one numeric type.
    :return: (height * width, 3) float32.
    :raises ImageError: missing fields, or data shorter than the header says.
    """
    fields = {f.name: f for f in msg.fields}
    missing = [name for name in 'xyz' if name not in fields]
    if missing:
        raise ImageError('cloud_fields', f'point cloud lacks field(s) {missing}; need x, y, z')
    n = int(msg.height) * int(msg.width)
    point_step = int(msg.point_step)
    if n == 0:
        return np.zeros((0, 3), np.float32)
    needed = (int(msg.height) - 1) * int(msg.row_step) + int(msg.width) * point_step
    if len(msg.data) < needed or point_step <= 0:
        raise ImageError('truncated', f'truncated point cloud: {len(msg.data)} bytes, header '
                         f'needs {needed}')
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    out = np.empty((int(msg.height), int(msg.width), 3), np.float32)
    for i, name in enumerate('xyz'):
        field = fields[name]
        if field.datatype not in POINTFIELD_DTYPES:
            raise ImageError('cloud_fields', f'point field {name!r} has unknown datatype '
                             f'{field.datatype}')
        dtype = np.dtype(POINTFIELD_DTYPES[field.datatype])
        if not 0 <= int(field.offset) <= point_step - dtype.itemsize:
            raise ImageError('cloud_fields', f'point field {name!r} ({dtype.itemsize} bytes at '
                             f'offset {field.offset}) does not fit in point_step {point_step}; '
                             'the cloud header is wrong')
        if dtype.itemsize > 1 and bool(msg.is_bigendian) != _HOST_BIGENDIAN:
            dtype = dtype.newbyteorder()
        view = np.ndarray((int(msg.height), int(msg.width)), dtype=dtype, buffer=buf,
                          offset=int(field.offset),
                          strides=(int(msg.row_step), point_step))
        out[:, :, i] = view
    return out.reshape(-1, 3)
