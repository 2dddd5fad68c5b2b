"""Tests of dvd_ros/offline/sources.py: video, image folder and ROS 2 bag frame sources."""

from pathlib import Path
import struct

import cv2
import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.offline import sources
from dvd_ros.offline.sources import (
    BagSource,
    FolderSource,
    VideoSource,
    classify_input,
    compressed_msg_to_rgb,
    image_file_size,
    image_msg_to_rgb,
    open_source,
    rosbags_typestore,
)

TS = rosbags_typestore()
STAMP0 = 1_700_000_000_123_456_789
LOG0 = 1_700_000_000_500_000_000
K = [50.0, 0.0, 15.5, 0.0, 52.0, 11.5, 0.0, 0.0, 1.0]


def synthetic_frames(n, height=24, width=32, seed=0):
    """Return (n, H, W, 3) uint8: smooth gradients plus a moving square (compressible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        for c in range(3):
            frames[t, :, :, c] = (base[c] + 4 * xx + 3 * yy * (c + 1) + 5 * t) % 256
        x0 = (2 * t) % (width - 6)
        frames[t, 4:10, x0:x0 + 6] = (255, 255, 255)
    return frames


def image_msg(rgb, stamp_ns, encoding='rgb8', frame_id='cam_optical', pad=0):
    """Build a rosbags Image in `encoding` from (H, W, 3) uint8 RGB (rows padded by `pad`)."""
    h, w, _ = rgb.shape
    if encoding == 'rgb8':
        pixels = rgb
    elif encoding == 'bgr8':
        pixels = rgb[:, :, ::-1]
    elif encoding == 'rgba8':
        pixels = np.concatenate([rgb, np.full((h, w, 1), 7, np.uint8)], axis=2)
    elif encoding == 'bgra8':
        pixels = np.concatenate([rgb[:, :, ::-1], np.full((h, w, 1), 7, np.uint8)], axis=2)
    elif encoding == 'mono8':
        pixels = rgb[:, :, :1]
    elif encoding == 'mono16':
        pixels = (rgb[:, :, 0].astype('<u2') * 257).view(np.uint8).reshape(h, w, 2)
    else:  # an encoding the source does not support; payload irrelevant
        pixels = np.zeros((h, w, 4), np.uint8)
    rows = np.ascontiguousarray(pixels).reshape(h, -1)
    rows = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    header = TS.types['std_msgs/msg/Header'](
        stamp=TS.types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                      nanosec=stamp_ns % 10**9),
        frame_id=frame_id)
    return TS.types['sensor_msgs/msg/Image'](
        header=header, height=h, width=w, encoding=encoding, is_bigendian=0,
        step=rows.shape[1], data=rows.reshape(-1))


def compressed_msg(rgb, stamp_ns, fmt='png', frame_id='cam_optical'):
    ok, buf = cv2.imencode('.' + fmt, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    header = TS.types['std_msgs/msg/Header'](
        stamp=TS.types['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                      nanosec=stamp_ns % 10**9),
        frame_id=frame_id)
    return TS.types['sensor_msgs/msg/CompressedImage'](header=header, format=fmt,
                                                       data=buf.reshape(-1))


def camera_info_msg(stamp_ns, width, height, k=K):
    ts = TS.types
    header = ts['std_msgs/msg/Header'](
        stamp=ts['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
        frame_id='cam_optical')
    return ts['sensor_msgs/msg/CameraInfo'](
        header=header, height=height, width=width, distortion_model='plumb_bob',
        d=np.zeros(5), k=np.array(k, float), r=np.eye(3).reshape(-1),
        p=np.array([k[0], 0, k[2], 0, 0, k[4], k[5], 0, 0, 0, 1, 0], float), binning_x=0,
        binning_y=0, roi=ts['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_image_bag(path, frames, storage='mcap', topic='/cam/image_raw', encoding='rgb8',
                    camera_info=True, compressed=None, extra_image_topics=(),
                    period_ns=33_000_000, k=K, info_size=None):
    """Write a rosbag2 with `frames` on `topic` (+ CameraInfo and a /chatter String topic).

    :return: (header stamps, log times) of the image messages
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    msgtype = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    ns = sources.image_namespace(topic)
    stamps, logs = [], []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        image_conn = writer.add_connection(topic, msgtype, typestore=TS)
        info_conn = writer.add_connection(f'{ns}/camera_info', 'sensor_msgs/msg/CameraInfo',
                                          typestore=TS) if camera_info else None
        text_conn = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=TS)
        extra = [writer.add_connection(t, 'sensor_msgs/msg/Image', typestore=TS)
                 for t in extra_image_topics]
        h, w = frames.shape[1:3]
        for i, rgb in enumerate(frames):
            stamp, log = STAMP0 + i * period_ns, LOG0 + i * period_ns
            if info_conn is not None:
                info = camera_info_msg(stamp, *(info_size or (w, h)), k)
                writer.write(info_conn, log - 1000,
                             TS.serialize_cdr(info, 'sensor_msgs/msg/CameraInfo'))
            msg = (compressed_msg(rgb, stamp, compressed) if compressed
                   else image_msg(rgb, stamp, encoding))
            writer.write(image_conn, log, TS.serialize_cdr(msg, msgtype))
            chatter = TS.types['std_msgs/msg/String'](data=f'frame {i}')
            writer.write(text_conn, log + 1000, TS.serialize_cdr(chatter, 'std_msgs/msg/String'))
            for conn in extra:
                writer.write(conn, log, TS.serialize_cdr(image_msg(rgb, stamp),
                                                         'sensor_msgs/msg/Image'))
            stamps.append(stamp)
            logs.append(log)
    return stamps, logs


def write_folder(path, frames, suffix='.png'):
    path.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        assert cv2.imwrite(str(path / f'frame_{i:04d}{suffix}'),
                           cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def write_video(path, frames, fps=12.0):
    h, w = frames.shape[1:3]
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
    assert video.isOpened()
    for rgb in frames:
        video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    video.release()
    return path


# ---------------------------------------------------------------------------- classification


def test_classify_input(tmp_path):
    frames = synthetic_frames(2)
    write_image_bag(tmp_path / 'bag', frames)
    folder = write_folder(tmp_path / 'imgs', frames)
    video = tmp_path / 'clip.mp4'
    video.write_bytes(b'x')
    assert classify_input(tmp_path / 'bag') == 'bag'
    assert classify_input(next((tmp_path / 'bag').glob('*.mcap'))) == 'bag'
    assert classify_input(folder) == 'folder'
    assert classify_input(video) == 'video'
    with pytest.raises(InputError, match='does not exist'):
        classify_input(tmp_path / 'missing')
    with pytest.raises(InputError, match='bags only'):
        open_source(folder, topic='/cam/image_raw')


# ---------------------------------------------------------------------------- bags


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_source_yields_frames_stamps_and_camera_info(tmp_path, storage):
    frames = synthetic_frames(5)
    stamps, logs = write_image_bag(tmp_path / 'bag', frames, storage=storage)
    source = open_source(tmp_path / 'bag')
    assert isinstance(source, BagSource)
    assert source.topic == '/cam/image_raw'
    assert source.camera_info_topic == '/cam/camera_info'
    assert source.storage == storage
    assert len(source) == 5
    assert source.fps == pytest.approx(1e9 / 33_000_000, rel=0.01)  # from the bag duration
    got = list(source)
    assert [f.index for f in got] == list(range(5))
    assert [f.stamp_ns for f in got] == stamps
    assert [f.log_time_ns for f in got] == logs
    assert {f.frame_id for f in got} == {'cam_optical'}
    np.testing.assert_array_equal(np.stack([f.rgb for f in got]), frames)
    np.testing.assert_allclose(got[0].camera_info.k, K)
    assert got[0].camera_info.header.stamp.nanosec == (stamps[0] % 10**9)
    # The storage file alone (no metadata.yaml) reads the same.
    single = next((tmp_path / 'bag').glob('*.mcap' if storage == 'mcap' else '*.db3'))
    assert [f.stamp_ns for f in open_source(single)] == stamps


def test_bag_without_camera_info_yields_none(tmp_path):
    write_image_bag(tmp_path / 'bag', synthetic_frames(2), camera_info=False)
    source = BagSource(tmp_path / 'bag')
    assert source.camera_info_topic is None
    assert [f.camera_info for f in source] == [None, None]


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'])
def test_image_encodings_decode_to_rgb(encoding):
    rgb = synthetic_frames(1, 6, 7)[0]
    got = image_msg_to_rgb(image_msg(rgb, 0, encoding, pad=3))
    if encoding in ('mono8', 'mono16'):
        expected = np.repeat(rgb[:, :, :1], 3, axis=2)
    else:
        expected = rgb
    assert got.dtype == np.uint8 and got.shape == (6, 7, 3)
    np.testing.assert_array_equal(got, expected)


def test_mono16_big_endian():
    rgb = synthetic_frames(1, 4, 5)[0]
    msg = image_msg(rgb, 0, 'mono16')
    swapped = msg.data.reshape(-1, 2)[:, ::-1].reshape(-1).copy()
    msg = type(msg)(header=msg.header, height=msg.height, width=msg.width, encoding='mono16',
                    is_bigendian=1, step=msg.step, data=swapped)
    np.testing.assert_array_equal(image_msg_to_rgb(msg)[:, :, 0], rgb[:, :, 0])


def test_unsupported_encoding_is_named():
    msg = image_msg(synthetic_frames(1, 4, 4)[0], 0, encoding='yuv422')
    with pytest.raises(InputError, match="'yuv422'.*rgb8, bgr8"):
        image_msg_to_rgb(msg)


def test_unsupported_encoding_in_bag(tmp_path):
    write_image_bag(tmp_path / 'bag', synthetic_frames(2), encoding='32FC1')
    with pytest.raises(InputError, match='32FC1'):
        list(BagSource(tmp_path / 'bag'))


def test_inconsistent_image_size_rejected():
    msg = image_msg(synthetic_frames(1, 4, 4)[0], 0)
    bad = type(msg)(header=msg.header, height=8, width=4, encoding='rgb8', is_bigendian=0,
                    step=12, data=msg.data)
    with pytest.raises(InputError, match='inconsistent'):
        image_msg_to_rgb(bad)


def test_compressed_png_and_jpeg(tmp_path):
    frames = synthetic_frames(3)
    write_image_bag(tmp_path / 'bag', frames, topic='/cam/image_raw/compressed',
                    compressed='png')
    source = BagSource(tmp_path / 'bag')
    assert source.camera_info_topic == '/cam/camera_info'
    np.testing.assert_array_equal(np.stack([f.rgb for f in source]), frames)
    jpeg = compressed_msg_to_rgb(compressed_msg(frames[0], 0, 'jpg'))
    assert np.abs(jpeg.astype(int) - frames[0]).mean() < 12
    msg = compressed_msg(frames[0], 0, 'png')
    msg = type(msg)(header=msg.header, format='16UC1; compressedDepth png', data=msg.data)
    with pytest.raises(InputError, match='compressedDepth'):
        compressed_msg_to_rgb(msg)


def test_topic_choice_errors_list_candidates(tmp_path):
    write_image_bag(tmp_path / 'bag', synthetic_frames(2), extra_image_topics=['/cam2/image'])
    with pytest.raises(InputError, match=r'2 image topics: /cam/image_raw \(Image\), '
                                         r'/cam2/image \(Image\); choose one with --topic'):
        BagSource(tmp_path / 'bag')
    with pytest.raises(InputError, match=r"'/nope' is not in bag.*/cam/image_raw.*/cam2/image"):
        BagSource(tmp_path / 'bag', topic='/nope')
    with pytest.raises(InputError, match='std_msgs/msg/String, not an image'):
        BagSource(tmp_path / 'bag', topic='/chatter')
    with pytest.raises(InputError, match='not a CameraInfo topic'):
        BagSource(tmp_path / 'bag', topic='/cam2/image', camera_info_topic='/cam2/camera_info')
    source = BagSource(tmp_path / 'bag', topic='/cam2/image',
                       camera_info_topic='/cam/camera_info')
    assert len(list(source)) == 2 and source.camera_info_topic == '/cam/camera_info'


def test_bag_without_image_topics(tmp_path):
    from rosbags.rosbag2 import Writer

    with Writer(tmp_path / 'bag', version=9) as writer:
        conn = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=TS)
        writer.write(conn, 1, TS.serialize_cdr(TS.types['std_msgs/msg/String'](data='x'),
                                               'std_msgs/msg/String'))
    with pytest.raises(InputError, match='0 image topics: none'):
        BagSource(tmp_path / 'bag')


def _first_storage_file(bag):
    return next(p for p in Path(bag).iterdir() if p.suffix in ('.mcap', '.db3'))


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_truncated_bag_is_a_clear_error(tmp_path, storage):
    write_image_bag(tmp_path / 'bag', synthetic_frames(12, 48, 64), storage=storage)
    data_file = _first_storage_file(tmp_path / 'bag')
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match='bag') as info:
        list(BagSource(tmp_path / 'bag'))
    assert 'truncated' in str(info.value) or 'damaged' in str(info.value)


@pytest.mark.parametrize('suffix', ['.mcap', '.db3'])
def test_garbage_bag_file_is_a_clear_error(tmp_path, suffix):
    path = tmp_path / f'garbage{suffix}'
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, np.uint8).tobytes())
    with pytest.raises(InputError, match=f'cannot read ROS 2 bag .*garbage\\{suffix}'):
        open_source(path)


def test_bag_metadata_garbage(tmp_path):
    write_image_bag(tmp_path / 'bag', synthetic_frames(2))
    (tmp_path / 'bag' / 'metadata.yaml').write_text('rosbag2_bagfile_information: [1, 2\n')
    with pytest.raises(InputError, match='cannot read ROS 2 bag'):
        open_source(tmp_path / 'bag')


# ---------------------------------------------------------------------------- folders


@pytest.mark.parametrize('suffix', ['.png', '.jpg'])
def test_folder_source_sorted_frames(tmp_path, suffix):
    frames = synthetic_frames(4)
    folder = write_folder(tmp_path / 'imgs', frames, suffix)
    (folder / 'notes.txt').write_text('ignored')
    source = open_source(folder, fps=10, frame_id='cam')
    assert isinstance(source, FolderSource)
    assert len(source) == 4 and source.size == (32, 24)
    got = list(source)
    assert [f.stamp_ns for f in got] == [0, 100_000_000, 200_000_000, 300_000_000]
    assert {f.frame_id for f in got} == {'cam'}
    stack = np.stack([f.rgb for f in got]).astype(int)
    if suffix == '.png':
        np.testing.assert_array_equal(stack, frames)
    else:
        assert np.abs(stack - frames).mean() < 12


def test_folder_unpadded_numbers_in_frame_order(tmp_path):
    # ffmpeg's `frame_%d.png` pattern: frame_10 must come after frame_9, not after frame_1.
    frames = synthetic_frames(12)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i, rgb in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f'frame_{i}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    source = FolderSource(folder)
    assert [p.name for p in source.files] == [f'frame_{i}.png' for i in range(1, 13)]
    np.testing.assert_array_equal(np.stack([f.rgb for f in source]), frames)


def test_image_file_size_from_headers(tmp_path):
    rgb = synthetic_frames(1, 21, 37)[0]
    for suffix in ('.png', '.jpg'):
        path = tmp_path / f'a{suffix}'
        cv2.imwrite(str(path), rgb)
        assert image_file_size(path) == (37, 21)


def _with_exif_orientation(jpeg, orientation, byte_order):
    """Insert an APP1 Exif segment holding only the Orientation tag after the JPEG SOI."""
    fmt = '<' if byte_order == b'II' else '>'
    value = struct.pack(fmt + 'H', orientation) + b'\x00\x00'
    tiff = (byte_order + struct.pack(fmt + 'HI', 42, 8) + struct.pack(fmt + 'H', 1)
            + struct.pack(fmt + 'HHI', 0x0112, 3, 1) + value + struct.pack(fmt + 'I', 0))
    app1 = b'Exif\x00\x00' + tiff
    return jpeg[:2] + b'\xff\xe1' + struct.pack('>H', len(app1) + 2) + app1 + jpeg[2:]


@pytest.mark.parametrize('byte_order', [b'II', b'MM'])
def test_folder_of_rotated_jpegs(tmp_path, byte_order):
    # Phone photos are stored sideways with an EXIF Orientation; OpenCV decodes them upright.
    folder = tmp_path / 'rotated'
    folder.mkdir()
    frames = synthetic_frames(2, 24, 40)
    for i, rgb in enumerate(frames):
        ok, buf = cv2.imencode('.jpg', rgb)
        assert ok
        (folder / f'frame_{i:04d}.jpg').write_bytes(
            _with_exif_orientation(buf.tobytes(), 6, byte_order))
    assert image_file_size(folder / 'frame_0000.jpg') == (24, 40)
    source = FolderSource(folder)
    assert source.size == (24, 40)
    shapes = [f.rgb.shape for f in source]
    assert shapes == [(40, 24, 3)] * 2


def test_folder_errors(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'readme.txt').write_text('no images')
    with pytest.raises(InputError, match='no .png/.jpg/.jpeg files'):
        open_source(empty)
    mixed = write_folder(tmp_path / 'mixed', synthetic_frames(2))
    cv2.imwrite(str(mixed / 'frame_9999.png'), synthetic_frames(1, 30, 32)[0])
    with pytest.raises(InputError, match='frame_9999.png is 32x30 but frame_0000.png is 32x24'):
        FolderSource(mixed)
    broken = write_folder(tmp_path / 'broken', synthetic_frames(1))
    (broken / 'frame_0001.png').write_bytes(b'not an image')
    with pytest.raises(InputError, match='frame_0001.png is not a readable PNG or JPEG'):
        FolderSource(broken)
    with pytest.raises(InputError, match='fps must be a positive'):
        FolderSource(write_folder(tmp_path / 'ok', synthetic_frames(1)), fps=0)


# ---------------------------------------------------------------------------- videos


def test_video_source_counts_frames(tmp_path):
    frames = synthetic_frames(7, 48, 64)
    path = write_video(tmp_path / 'clip.mp4', frames, fps=12.0)
    source = open_source(path)
    assert isinstance(source, VideoSource)
    assert len(source) == 7 and source.size == (64, 48)
    assert source.fps == pytest.approx(12.0)
    got = list(source)
    assert [f.index for f in got] == list(range(7))
    assert got[3].stamp_ns == round(3 * 1e9 / 12.0)
    stack = np.stack([f.rgb for f in got]).astype(int)
    assert stack.shape == frames.shape
    assert np.abs(stack - frames).mean() < 20  # lossy codec, same content and order


def test_unreadable_video_is_a_clear_error(tmp_path):
    path = tmp_path / 'broken.mp4'
    path.write_bytes(b'\x00' * 1000)
    with pytest.raises(InputError, match='cannot open video .*broken.mp4|no decodable frames'):
        open_source(path)
