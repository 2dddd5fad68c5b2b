"""Output writers for offline processing: PNG/npz per frame, colorized MP4, PLY, a new bag.

Every writer takes finished frames one at a time (`write(result)`) and `close(complete)`;
after `close` its files are valid even when the run was interrupted: per-frame files are
written under a temporary name and renamed, the MP4 and the bag are finalised, the fused PLY
gets its header with the true vertex count.
"""

import csv
from dataclasses import dataclass
import math
import os
from pathlib import Path
import shutil
import zipfile

import cv2
import numpy as np

from dvd_ros.errors import InputError

OUTPUT_KINDS = ('png16', 'npz', 'mp4', 'ply', 'ply-fused', 'bag')
# Outputs that need metric depth (relative disparity has no geometry).
METRIC_OUTPUTS = ('ply', 'ply-fused')
# 16-bit disparity PNG: value = disparity * DISPARITY_PNG_SCALE, so 0..65535 covers disparity
# 0..2 (a single window spans 0..1; stitched windows may overshoot 1 a little).
DISPARITY_PNG_SCALE = 32768.0
DEPTH_PNG_SCALE = 1000.0  # 16-bit depth PNG in millimetres (REP 118 16UC1)
FRAME_NAME = '{:06d}'


@dataclass
class DepthResult:
    """One finished output frame handed to the writers.

    `disparity` (H, W) float32 relative (1 ~ near); `depth` (H, W) float32 metres, NaN
    invalid, or None without a metric conversion; `points` (h, w, 3) float32 metres in the
    optical frame, NaN invalid, with `point_rgb` (h, w, 3) uint8, or None; `intrinsics` a
    `geometry.PinholeIntrinsics` or None.
    """

    frame: object  # sources.SourceFrame
    disparity: np.ndarray
    depth: np.ndarray | None = None
    intrinsics: object | None = None
    points: np.ndarray | None = None
    point_rgb: np.ndarray | None = None


def parse_outputs(text):
    """Parse a comma separated output list ('png16,npz,mp4,ply,ply-fused,bag') into a tuple."""
    kinds = tuple(dict.fromkeys(k.strip() for k in str(text).split(',') if k.strip()))
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown or not kinds:
        raise InputError(f'unknown output(s) {unknown or text!r}; choose any of '
                         f'{",".join(OUTPUT_KINDS)}')
    return kinds


def check_output_dir(path):
    """Create `path` if needed and check it is a writable directory (InputError otherwise)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f'output {path} exists and is not a directory; pass a directory as '
                         '--out')
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f'cannot create output directory {path}: {exc.strerror or exc}; pass a '
                         'writable --out') from exc
    probe = path / '.dvd_ros_write_test'
    try:
        probe.write_bytes(b'')
        probe.unlink()
    except OSError as exc:
        raise InputError(f'output directory {path} is not writable ({exc.strerror or exc}); '
                         'pass a writable --out') from exc
    return path


def _fresh_path(path, overwrite):
    """Return `path` after making sure nothing of a previous run is there."""
    if path.exists():
        if not overwrite:
            raise InputError(f'{path} already exists; use another --out or pass --overwrite')
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return path


def discard_output(path):
    """Remove an output file or folder this run created (before any frame was written)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _replace_atomically(tmp, dst):
    os.replace(tmp, dst)


def _check_size(path, expected):
    """Raise OSError unless the file `path` has `expected` bytes (a write cut short)."""
    size = os.path.getsize(path)
    if size != expected:
        raise OSError(f'{path} has {size} of {expected} bytes (disk full?)')


class FrameTableWriter:
    """`frames.csv`: index, header stamp, bag log time and frame_id of every written frame."""

    def __init__(self, out_dir, overwrite=False):
        self.path = _fresh_path(Path(out_dir) / 'frames.csv', overwrite)
        # Closed in close(); newline='' lets csv write its own line ends.
        self._fh = open(self.path, 'w', encoding='utf-8', newline='')  # noqa: SIM115
        # csv quotes a frame_id holding a comma or quote; plain ids are written as is.
        self._csv = csv.writer(self._fh, lineterminator='\n')
        self._csv.writerow(('index', 'stamp_ns', 'log_time_ns', 'frame_id'))
        self.count = 0

    def write(self, result):
        """Append one row (flushed, so an interrupted run keeps every finished row)."""
        f = result.frame
        self._csv.writerow((f.index, f.stamp_ns, f.log_time_ns, f.frame_id))
        self._fh.flush()
        self.count += 1

    def close(self, complete=True):
        """Close the file and check it holds a row per written frame."""
        if self._fh.closed:
            return
        self._fh.close()
        with open(self.path, encoding='utf-8', newline='') as fh:
            rows = sum(1 for _ in csv.reader(fh)) - 1
        if rows != self.count:
            raise OSError(f'{self.path} holds {rows} rows for {self.count} written frames '
                          '(disk full?)')


class Png16Writer:
    """16-bit PNGs per frame: `disparity/` (x32768) always, `depth/` (mm, 0 = none) if metric.

    Depth beyond 65.535 m and disparity above 2.0 do not fit in 16 bits; such pixels are
    written as 0 / 65535 and counted in `saturated` (reported by the pipeline), never hidden.
    """

    def __init__(self, out_dir, overwrite=False):
        out_dir = Path(out_dir)
        self.disparity_dir = _fresh_path(out_dir / 'disparity', overwrite)
        self.depth_dir = _fresh_path(out_dir / 'depth', overwrite)
        self.disparity_dir.mkdir(parents=True)
        self.path = self.disparity_dir
        self._depth_made = False
        self.count = 0
        self.saturated = {'disparity': 0, 'depth': 0}

    @staticmethod
    def _write_png(path, image):
        from dvd_ros.offline.sources import image_file_size

        tmp = path.with_name(path.stem + '.tmp.png')
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f'cannot write {tmp}')
        h, w = image.shape[:2]
        if image_file_size(tmp) != (w, h):
            raise OSError(f'{tmp} was not written completely (disk full?)')
        _replace_atomically(tmp, path)

    def write(self, result):
        """Write the PNG(s) of one frame."""
        name = FRAME_NAME.format(result.frame.index) + '.png'
        scaled = np.nan_to_num(result.disparity, nan=0.0) * DISPARITY_PNG_SCALE
        over = scaled > 65535
        self.saturated['disparity'] += int(over.sum())
        disparity = np.where(over, 65535, np.rint(np.maximum(scaled, 0))).astype(np.uint16)
        self._write_png(self.disparity_dir / name, disparity)
        if result.depth is not None:
            if not self._depth_made:
                self.depth_dir.mkdir(parents=True)
                self._depth_made = True
            mm = result.depth * DEPTH_PNG_SCALE
            valid = np.isfinite(mm) & (mm > 0)
            over = valid & (mm > 65535)
            self.saturated['depth'] += int(over.sum())
            depth = np.where(valid & ~over, np.rint(np.where(valid, mm, 0)), 0).astype(np.uint16)
            self._write_png(self.depth_dir / name, depth)
        self.count += 1

    def close(self, complete=True):
        """Nothing stays open between frames."""


class NpzWriter:
    """One `npz/NNNNNN.npz` per frame: disparity, depth (if metric), stamp_ns, frame_id, K."""

    def __init__(self, out_dir, overwrite=False):
        self.dir = self.path = _fresh_path(Path(out_dir) / 'npz', overwrite)
        self.dir.mkdir(parents=True)
        self.count = 0

    def write(self, result):
        """Write the npz of one frame."""
        f = result.frame
        arrays = {
            'disparity': result.disparity.astype(np.float32, copy=False),
            'stamp_ns': np.int64(f.stamp_ns),
            'frame_id': np.str_(f.frame_id),
        }
        if result.depth is not None:
            arrays['depth'] = result.depth.astype(np.float32, copy=False)
        if result.intrinsics is not None:
            k = result.intrinsics
            arrays['K'] = np.array([[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]], np.float64)
        dst = self.dir / (FRAME_NAME.format(f.index) + '.npz')
        tmp = dst.with_name(dst.stem + '.tmp.npz')
        np.savez(tmp, **arrays)
        try:
            with zipfile.ZipFile(tmp) as archive:
                names = set(archive.namelist())
        except (OSError, zipfile.BadZipFile) as exc:
            raise OSError(f'{tmp} was not written completely ({exc}); disk full?') from exc
        if names != {f'{k}.npy' for k in arrays}:
            raise OSError(f'{tmp} holds {sorted(names)}, not the arrays written')
        _replace_atomically(tmp, dst)
        self.count += 1

    def close(self, complete=True):
        """Nothing stays open between frames."""


MP4_FOURCC = 'mp4v'


def _mp4_writer(path, fps, size):
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*MP4_FOURCC), float(fps),
                           (int(size[0]), int(size[1])))


def mp4_failure_cause(path, fps, size):
    """Return why OpenCV could not open an MP4 writer for `path` (it does not say itself).

    Checked in order: an FFmpeg writer in this OpenCV build, the frame rate, the file itself
    (folder missing or not writable, a directory in the way, disk full), the frame size (a
    small probe video in the same folder tells a size problem from an encoder problem).

    :param path: the file OpenCV was asked to write
    :param fps: frames per second asked for
    :param size: (width, height) asked for
    :return: one sentence with the cause and the fix
    """
    path = Path(path)
    backends = list(cv2.videoio_registry.getWriterBackends())
    if cv2.CAP_FFMPEG not in backends:
        names = ', '.join(cv2.videoio_registry.getBackendName(b) for b in backends) or 'none'
        return (f'this OpenCV build has no FFmpeg video writer (writers: {names}); install '
                'opencv-python-headless from PyPI or drop mp4 from --outputs')
    if not (math.isfinite(fps) and fps > 0):
        return f'the frame rate {fps} is not a positive number; pass --fps'
    if path.is_dir():
        return f'{path} is a directory; remove it or choose another --out'
    try:
        with open(path, 'ab'):
            pass
    except OSError as exc:
        return f'{path} cannot be written ({exc.strerror or exc}); free space or fix permissions'
    probe = path.with_name('.depth.probe.mp4')
    writer = _mp4_writer(probe, fps, (64, 48))
    try:
        probe_ok = writer.isOpened()
    finally:
        writer.release()
        probe.unlink(missing_ok=True)
    width, height = size
    if probe_ok:
        return (f'the {MP4_FOURCC} encoder refuses {width}x{height} frames (MPEG-4 Part 2 '
                'takes 2..8191 pixels per side); resize the input or drop mp4 from --outputs')
    return (f"FFmpeg's {MP4_FOURCC} encoder did not start (see OpenCV's messages above); drop "
            'mp4 from --outputs or reinstall opencv-python-headless')


def count_video_frames(path, expected=None):
    """Return the number of frames OpenCV reads back from the video `path` (0 if unreadable).

    When the container lists `expected` frames and the last one decodes, that is the answer;
    otherwise every frame is grabbed once (slow for long videos, but only on a mismatch).
    """
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        listed = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if expected and listed == expected:
            cap.set(cv2.CAP_PROP_POS_FRAMES, expected - 1)
            if cap.grab():
                return expected
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        count = 0
        while cap.grab():
            count += 1
        return count
    finally:
        cap.release()


class Mp4Writer:
    """Colorized disparity video (`depth.mp4`, mp4v) with a fixed 0..1 colour range.

    A fixed range (not per-frame min/max) keeps the colours of a surface steady, so flicker in
    the video is flicker in the depth.  The video is written as `depth.tmp.mp4` and renamed
    when `close` has read it back and found every written frame in it: OpenCV's `VideoWriter`
    fails silently (a refused size, a full disk), so nothing is trusted unchecked.

    :param size: (width, height) of the frames when known: the encoder is then started here,
        so a failure is reported before any frame is processed
    """

    def __init__(self, out_dir, fps, overwrite=False, colormap='turbo', size=None):
        from dvd_ros.colorize import colorize

        self._colorize = colorize
        self.path = _fresh_path(Path(out_dir) / 'depth.mp4', overwrite)
        self._tmp = self.path.with_name('depth.tmp.mp4')
        self.fps = float(fps)
        self.colormap = colormap
        self._video = None
        self._size = None
        self.count = 0
        if size is not None:
            self._open(size)

    def _open(self, size):
        self._tmp.unlink(missing_ok=True)
        video = _mp4_writer(self._tmp, self.fps, size)
        if not video.isOpened():
            video.release()
            self._tmp.unlink(missing_ok=True)
            raise InputError(f'OpenCV cannot write MP4 {self.path}: '
                             f'{mp4_failure_cause(self._tmp, self.fps, size)}')
        self._video = video
        self._size = tuple(size)

    def write(self, result):
        """Append one frame."""
        h, w = result.disparity.shape
        if self._video is None:
            if self._size is not None:
                raise InputError(f'{self.path} is already closed')
            self._open((w, h))
        elif (w, h) != self._size and self.count == 0:
            # The source's announced size was off (e.g. a rotated video): restart at the
            # size the frames really have.
            self._video.release()
            self._video = None
            self._open((w, h))
        if (w, h) != self._size:
            # VideoWriter drops a frame of another size without a word.
            raise InputError(f'frame {result.frame.index} is {w}x{h} but {self.path} was '
                             f'started at {self._size[0]}x{self._size[1]}; a video keeps one '
                             'size')
        rgb = self._colorize(result.disparity, vmin=0.0, vmax=1.0, colormap=self.colormap)
        self._video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.count += 1

    def close(self, complete=True):
        """Finalise the container, check every frame is in it, then move it into place."""
        if self._video is None:
            return
        self._video.release()
        self._video = None
        if self.count == 0:
            self._tmp.unlink(missing_ok=True)
            return
        found = count_video_frames(self._tmp, self.count)
        if found != self.count:
            raise OSError(f'{self.path}: the video holds {found} of the {self.count} frames '
                          'written (disk full, or the encoder failed); it was left as '
                          f'{self._tmp.name}')
        _replace_atomically(self._tmp, self.path)


PLY_VERTEX_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                             ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])


def ply_header(count):
    """Return the binary little endian PLY header for `count` xyz + rgb vertices."""
    return ('ply\nformat binary_little_endian 1.0\ncomment dvd_ros offline\n'
            f'element vertex {count}\n'
            'property float x\nproperty float y\nproperty float z\n'
            'property uchar red\nproperty uchar green\nproperty uchar blue\n'
            'end_header\n').encode('ascii')


def ply_vertices(points, rgb):
    """Pack finite points (h, w, 3) float32 and colours (h, w, 3) uint8 as PLY vertex records."""
    xyz = np.ascontiguousarray(points.reshape(-1, 3), dtype='<f4')
    count = len(xyz)
    # NaN or inf in any coordinate makes the sum non-finite (3x faster than isfinite().all).
    valid = np.isfinite(xyz[:, 0] + xyz[:, 1] + xyz[:, 2])
    # Build every raw 15-byte record with contiguous copies, then select valid ones in one
    # pass: field-wise fancy indexing is several times slower at VGA size.
    records = np.empty((count, PLY_VERTEX_DTYPE.itemsize), np.uint8)
    records[:, :12] = xyz.view(np.uint8).reshape(count, 12)
    records[:, 12:] = 255 if rgb is None else rgb.reshape(-1, 3)
    return records.view(PLY_VERTEX_DTYPE).reshape(count)[valid]


def read_ply(path):
    """Read a PLY written by this module back: (N, 3) float32 xyz, (N, 3) uint8 rgb."""
    data = Path(path).read_bytes()
    end = data.index(b'end_header\n') + len(b'end_header\n')
    count = next(int(line.split()[2]) for line in data[:end].decode('ascii').splitlines()
                 if line.startswith('element vertex'))
    vertices = np.frombuffer(data, PLY_VERTEX_DTYPE, count=count, offset=end)
    if len(data) != end + count * PLY_VERTEX_DTYPE.itemsize:
        raise InputError(f'{path}: {len(data) - end} body bytes for {count} vertices')
    xyz = np.stack([vertices[n] for n in 'xyz'], axis=1)
    rgb = np.stack([vertices[n] for n in ('red', 'green', 'blue')], axis=1)
    return xyz, rgb


class PlyWriter:
    """One `ply/NNNNNN.ply` per frame (camera optical frame, metres, valid points only)."""

    def __init__(self, out_dir, overwrite=False):
        self.dir = self.path = _fresh_path(Path(out_dir) / 'ply', overwrite)
        self.dir.mkdir(parents=True)
        self.count = 0

    def write(self, result):
        """Write the cloud of one frame."""
        vertices = ply_vertices(result.points, result.point_rgb)
        dst = self.dir / (FRAME_NAME.format(result.frame.index) + '.ply')
        tmp = dst.with_name(dst.stem + '.tmp.ply')
        header = ply_header(len(vertices))
        with open(tmp, 'wb') as fh:
            fh.write(header)
            fh.write(vertices.tobytes())
        _check_size(tmp, len(header) + vertices.nbytes)
        _replace_atomically(tmp, dst)
        self.count += 1

    def close(self, complete=True):
        """Nothing stays open between frames."""


class FusedPlyWriter:
    """All frames' points in one `fused.ply`, each in its own camera frame (no poses).

    The vertex count is known only at the end, so vertices go to a `.part` file first and
    `close` writes header + body.
    """

    def __init__(self, out_dir, overwrite=False):
        self.path = _fresh_path(Path(out_dir) / 'fused.ply', overwrite)
        self._part = self.path.with_name('fused.ply.part')
        self._fh = open(self._part, 'wb')  # noqa: SIM115 closed in close()
        self.vertices = 0
        self.count = 0

    def write(self, result):
        """Append the points of one frame."""
        vertices = ply_vertices(result.points, result.point_rgb)
        self._fh.write(vertices.tobytes())
        self.vertices += len(vertices)
        self.count += 1

    def close(self, complete=True):
        """Write `fused.ply` (header with the final count, then the body) and drop the part."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        tmp = self.path.with_name('fused.tmp.ply')
        header = ply_header(self.vertices)
        with open(tmp, 'wb') as dst, open(self._part, 'rb') as src:
            dst.write(header)
            shutil.copyfileobj(src, dst, 1 << 20)
        _check_size(tmp, len(header) + self.vertices * PLY_VERTEX_DTYPE.itemsize)
        _replace_atomically(tmp, self.path)
        self._part.unlink()


def _ros_time(typestore, stamp_ns):
    time = typestore.types['builtin_interfaces/msg/Time']
    return time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))


def _header(typestore, frame):
    header = typestore.types['std_msgs/msg/Header']
    return header(stamp=_ros_time(typestore, frame.stamp_ns), frame_id=frame.frame_id)


def float_image_msg(typestore, frame, values):
    """Build a `sensor_msgs/msg/Image` 32FC1 from (H, W) float32 values with the frame header."""
    image = typestore.types['sensor_msgs/msg/Image']
    h, w = values.shape
    data = np.frombuffer(np.ascontiguousarray(values, dtype='<f4').tobytes(), np.uint8)
    return image(header=_header(typestore, frame), height=h, width=w, encoding='32FC1',
                 is_bigendian=0, step=w * 4, data=data)


def rgb_image_msg(typestore, frame):
    """Build a `sensor_msgs/msg/Image` rgb8 of the frame's colour image."""
    image = typestore.types['sensor_msgs/msg/Image']
    h, w, _ = frame.rgb.shape
    data = np.frombuffer(np.ascontiguousarray(frame.rgb).tobytes(), np.uint8)
    return image(header=_header(typestore, frame), height=h, width=w, encoding='rgb8',
                 is_bigendian=0, step=w * 3, data=data)


def camera_info_msg(typestore, frame, intrinsics, width, height):
    """Build the depth `CameraInfo`: the input one re-stamped, or one from `intrinsics`."""
    info_type = typestore.types['sensor_msgs/msg/CameraInfo']
    header = _header(typestore, frame)
    source = frame.camera_info
    if source is not None:
        fields = {name: getattr(source, name) for name in info_type.__dataclass_fields__
                  if name not in ('header', '__msgtype__')}
        return info_type(header=header, **fields)
    roi = typestore.types['sensor_msgs/msg/RegionOfInterest']
    k = intrinsics
    kmat = np.array([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1], np.float64)
    pmat = np.array([k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0], np.float64)
    return info_type(header=header, height=height, width=width, distortion_model='plumb_bob',
                     d=np.zeros(5, np.float64), k=kmat, r=np.eye(3).reshape(-1), p=pmat,
                     binning_x=0, binning_y=0,
                     roi=roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def point_cloud_msg(typestore, frame, points, rgb):
    """Build a `sensor_msgs/msg/PointCloud2` (organised, x y z [rgb] float32, NaN invalid)."""
    from dvd_ros.geometry import pack_points

    cloud = pack_points(points, rgb)
    field_type = typestore.types['sensor_msgs/msg/PointField']
    pc2 = typestore.types['sensor_msgs/msg/PointCloud2']
    fields = [field_type(name=name, offset=int(offset), datatype=int(dtype), count=1)
              for name, offset, dtype in cloud.fields]
    return pc2(header=_header(typestore, frame), height=int(cloud.height),
               width=int(cloud.width), fields=fields, is_bigendian=False,
               point_step=int(cloud.point_step), row_step=int(cloud.row_step),
               data=np.frombuffer(bytes(cloud.data), np.uint8),
               is_dense=bool(cloud.is_dense))


def depth_topics(namespace):
    """Return the output topic names under `namespace` (e.g. '/cam' -> '/cam/depth/image')."""
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return {name: f'{ns}/depth/{name}' for name in ('disparity', 'image', 'camera_info',
                                                      'points')}


def check_topics_free(reader, topics):
    """Raise InputError when the open input bag `reader` already has one of the depth `topics`.

    :param topics: `depth_topics(namespace)`
    """
    taken = set(topics.values())
    for conn in reader.connections:
        if conn.topic in taken:
            raise InputError(f'input bag already has topic {conn.topic}; choose another '
                             '--depth-namespace')


class BagWriter:
    """A new rosbag2 with the input topics plus depth/disparity, image, camera_info, points.

    Depth messages carry the input image's header (stamp, frame_id) and are logged at the
    input image's bag time.  For a bag input every input message is copied verbatim, in log
    time order, up to the newest written frame (all of them on a complete run); for video and
    folder input the frames are written as `/camera/image_raw` (rgb8) and
    `/camera/camera_info`.

    :param path: new bag directory (must not exist unless `overwrite`)
    :param storage: 'mcap' or 'sqlite3'
    :param namespace: namespace of the depth topics
    :param source_bag: path of the input bag to copy, or None
    :param metric: whether depth/image and depth/points are written
    """

    INPUT_NAMESPACE = '/camera'

    def __init__(self, path, storage='mcap', namespace='', source_bag=None, metric=True,
                 overwrite=False):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.rosbag2.errors import WriterError

        from dvd_ros.offline.sources import rosbags_typestore

        self.path = _fresh_path(Path(path), overwrite)
        self.typestore = rosbags_typestore()
        self.metric = metric
        self.topics = depth_topics(namespace)
        plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
        self.storage = storage
        # Version 8 is what Jazzy's rosbag2 writes and reads; rosbags writes 8 or 9.
        self._writer = Writer(self.path, version=8, storage_plugin=plugin)
        try:
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise InputError(f'cannot create bag {self.path}: {exc}; pass a writable --out')\
                from exc
        self._reader = None
        self._pending = None
        self._input = None
        self._copy_map = {}
        self.counts = {}
        self.skipped_topics = []
        try:
            if source_bag is not None:
                self._open_source(source_bag)
            else:
                self._add_input_topics()
            self._add_depth_topics()
        except BaseException:
            self._abort()
            raise

    def _abort(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._writer.close()
        # Nothing was written: leave no empty bag that would block a corrected re-run.
        discard_output(self.path)

    def _connection(self, topic, msgtype, **kwargs):
        conn = self._writer.add_connection(topic, msgtype, **kwargs)
        self.counts.setdefault(topic, 0)
        return conn

    def _open_source(self, source_bag):
        from dvd_ros.offline.sources import bag_messages, open_bag_reader

        self._reader = open_bag_reader(source_bag)
        check_topics_free(self._reader, self.topics)
        created = {}
        for conn in self._reader.connections:
            key = (conn.topic, conn.msgtype)
            if key not in created:
                qos = list(getattr(conn.ext, 'offered_qos_profiles', []) or [])
                kwargs = {'offered_qos_profiles': qos}
                if conn.msgdef.data and conn.digest:
                    kwargs.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
                elif conn.msgtype in self.typestore.types:
                    kwargs.update(typestore=self.typestore)
                else:
                    # Without a definition the copy would be unreadable; say so instead.
                    self.skipped_topics.append(conn.topic)
                    created[key] = None
                    continue
                created[key] = self._connection(conn.topic, conn.msgtype, **kwargs)
            if created[key] is not None:
                self._copy_map[conn.id] = created[key]
        self._input = bag_messages(self._reader, [], source_bag)
        self._pending = None

    def _add_input_topics(self):
        ns = self.INPUT_NAMESPACE
        self._image_conn = self._connection(f'{ns}/image_raw', 'sensor_msgs/msg/Image',
                                            typestore=self.typestore)
        self._info_conn = self._connection(f'{ns}/camera_info', 'sensor_msgs/msg/CameraInfo',
                                           typestore=self.typestore)

    def _add_depth_topics(self):
        types = {'disparity': 'sensor_msgs/msg/Image', 'image': 'sensor_msgs/msg/Image',
                 'camera_info': 'sensor_msgs/msg/CameraInfo',
                 'points': 'sensor_msgs/msg/PointCloud2'}
        names = ('disparity', 'image', 'camera_info', 'points') if self.metric else (
            'disparity', 'camera_info')
        self._depth_conns = {name: self._connection(self.topics[name], types[name],
                                                    typestore=self.typestore)
                             for name in names}

    def _copy_until(self, log_time_ns):
        """Copy input messages logged at or before `log_time_ns` (None: all the rest)."""
        if self._input is None:
            return
        while True:
            if self._pending is None:
                self._pending = next(self._input, None)
                if self._pending is None:
                    self._input = None
                    return
            conn, timestamp, raw = self._pending
            if log_time_ns is not None and timestamp > log_time_ns:
                return
            target = self._copy_map.get(conn.id)
            if target is not None:
                self._writer.write(target, timestamp, raw)
                self.counts[target.topic] += 1
            self._pending = None

    def _write(self, conn, log_time_ns, msg):
        self._writer.write(conn, log_time_ns,
                           self.typestore.serialize_cdr(msg, msg.__msgtype__))
        self.counts[conn.topic] += 1

    def write(self, result):
        """Write one frame's messages (and the input messages logged up to it)."""
        frame, ts = result.frame, self.typestore
        when = frame.log_time_ns
        h, w = result.disparity.shape
        if self._reader is not None:
            self._copy_until(when)
        else:
            self._write(self._image_conn, when, rgb_image_msg(ts, frame))
            self._write(self._info_conn, when,
                        camera_info_msg(ts, frame, result.intrinsics, w, h))
        conns = self._depth_conns
        self._write(conns['disparity'], when, float_image_msg(ts, frame, result.disparity))
        self._write(conns['camera_info'], when,
                    camera_info_msg(ts, frame, result.intrinsics, w, h))
        if self.metric:
            self._write(conns['image'], when, float_image_msg(ts, frame, result.depth))
            self._write(conns['points'], when,
                        point_cloud_msg(ts, frame, result.points, result.point_rgb))

    def close(self, complete=True):
        """Copy the remaining input messages (complete runs only) and finalise the bag."""
        if self._writer is None:
            return
        try:
            if complete and self._reader is not None:
                self._copy_until(None)
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            self._writer.close()
            self._writer = None
        self._verify()

    def _verify(self):
        """Read the closed bag back: every message written must be in it."""
        from dvd_ros.offline.sources import bag_messages, open_bag_reader

        try:
            reader = open_bag_reader(self.path)
        except InputError as exc:
            raise OSError(f'the bag written to {self.path} cannot be read back: {exc}') from exc
        try:
            # Count what the storage really holds (the index alone repeats our own counts).
            found = {}
            for conn, _, _ in bag_messages(reader, reader.connections, self.path):
                found[conn.topic] = found.get(conn.topic, 0) + 1
        except InputError as exc:
            raise OSError(f'the bag written to {self.path} cannot be read back: {exc}') from exc
        finally:
            reader.close()
        missing = {t: (n, found.get(t, 0)) for t, n in self.counts.items()
                   if found.get(t, 0) != n}
        if missing:
            topic, (written, listed) = next(iter(missing.items()))
            raise OSError(f'the bag {self.path} holds {listed} of the {written} messages '
                          f'written on {topic} (disk full?)')
