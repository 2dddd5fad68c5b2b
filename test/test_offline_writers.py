"""Tests of dvd_ros/offline/writers.py: PNG, npz, MP4, PLY and bag outputs."""

import os

import cv2
import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.geometry import PinholeIntrinsics, depth_to_points, disparity_to_depth
from dvd_ros.offline import writers
from dvd_ros.offline.sources import SourceFrame, open_bag_reader, rosbags_typestore
from dvd_ros.offline.writers import (
    BagWriter,
    DepthResult,
    FusedPlyWriter,
    Mp4Writer,
    NpzWriter,
    PlyWriter,
    Png16Writer,
    check_output_dir,
    parse_outputs,
    read_ply,
)

H, W = 12, 16
A, B = 2.0, 0.25


def make_result(index, with_metric=True, nan_corner=True):
    rng = np.random.default_rng(index)
    rgb = rng.integers(0, 255, (H, W, 3), np.uint8)
    disparity = rng.uniform(0.0, 1.2, (H, W)).astype(np.float32)
    frame = SourceFrame(index, 1_000_000_000 + index * 50_000_000, 'cam_optical', rgb, None,
                        2_000_000_000 + index * 50_000_000)
    intr = PinholeIntrinsics.from_fov(W, H, 70.0)
    if not with_metric:
        return DepthResult(frame, disparity, None, intr)
    depth = disparity_to_depth(disparity, A, B)
    if nan_corner:
        depth[:2, :3] = np.nan
    points = depth_to_points(depth, intr, stride=2)
    return DepthResult(frame, disparity, depth, intr, points, rgb[::2, ::2].copy())


def test_parse_outputs():
    assert parse_outputs('png16, mp4,png16') == ('png16', 'mp4')
    assert parse_outputs('png16,npz,mp4,ply,ply-fused,bag') == writers.OUTPUT_KINDS
    with pytest.raises(InputError, match=r"unknown output\(s\) \['tiff'\]"):
        parse_outputs('png16,tiff')
    with pytest.raises(InputError, match='unknown output'):
        parse_outputs(' , ')


def test_output_dir_must_be_writable(tmp_path):
    assert check_output_dir(tmp_path / 'a' / 'b').is_dir()
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    with pytest.raises(InputError, match='exists and is not a directory'):
        check_output_dir(blocker)
    with pytest.raises(InputError, match='cannot create output directory'):
        check_output_dir(blocker / 'sub')


def test_output_dir_on_unwritable_filesystem():
    target = '/sys/dvd_ros_offline_test'
    try:
        os.mkdir(target)
    except OSError:
        pass
    else:
        os.rmdir(target)
        pytest.skip('/sys is writable here')
    with pytest.raises(InputError, match='cannot create output directory /sys/dvd_ros_offline_'
                                         'test: .*; pass a writable --out'):
        check_output_dir(target)


@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0,
                    reason='root ignores directory permissions')
def test_read_only_output_dir(tmp_path):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match='not writable'):
            check_output_dir(ro)
    finally:
        ro.chmod(0o700)


def test_png16_values(tmp_path):
    result = make_result(3)
    result.disparity[0, 0] = 2.5  # above the 16-bit range: saturates and is counted
    writer = Png16Writer(tmp_path)
    writer.write(result)
    writer.close()
    disp = cv2.imread(str(tmp_path / 'disparity' / '000003.png'), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(tmp_path / 'depth' / '000003.png'), cv2.IMREAD_UNCHANGED)
    assert disp.dtype == np.uint16 and depth.dtype == np.uint16
    assert disp[0, 0] == 65535 and writer.saturated['disparity'] == 1
    np.testing.assert_allclose(disp[1:] / writers.DISPARITY_PNG_SCALE, result.disparity[1:],
                               atol=0.5 / writers.DISPARITY_PNG_SCALE)
    valid = np.isfinite(result.depth)
    assert (depth[~valid] == 0).all()
    np.testing.assert_allclose(depth[valid] / 1000.0, result.depth[valid], atol=0.0005)
    assert not list(tmp_path.glob('*/*.tmp.png'))


def test_png16_relative_only_has_no_depth_dir(tmp_path):
    writer = Png16Writer(tmp_path)
    writer.write(make_result(0, with_metric=False))
    assert (tmp_path / 'disparity' / '000000.png').is_file()
    assert not (tmp_path / 'depth').exists()


def test_existing_outputs_need_overwrite(tmp_path):
    Png16Writer(tmp_path).write(make_result(0))
    with pytest.raises(InputError, match='already exists; use another --out or pass --overwrite'):
        Png16Writer(tmp_path)
    writer = Png16Writer(tmp_path, overwrite=True)
    assert not list((tmp_path / 'disparity').iterdir())
    writer.close()


def test_npz_contents(tmp_path):
    result = make_result(7)
    writer = NpzWriter(tmp_path)
    writer.write(result)
    with np.load(tmp_path / 'npz' / '000007.npz') as data:
        np.testing.assert_array_equal(data['disparity'], result.disparity)
        np.testing.assert_array_equal(data['depth'], result.depth)
        assert int(data['stamp_ns']) == result.frame.stamp_ns
        assert str(data['frame_id']) == 'cam_optical'
        np.testing.assert_allclose(data['K'], result.intrinsics.K)


def test_mp4_is_readable(tmp_path):
    writer = Mp4Writer(tmp_path, fps=10.0)
    for i in range(4):
        writer.write(make_result(i, with_metric=False))
    writer.close()
    cap = cv2.VideoCapture(str(tmp_path / 'depth.mp4'))
    count = 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        assert image.shape == (H, W, 3)
        count += 1
    cap.release()
    assert count == 4


def test_ply_per_frame_and_fused(tmp_path):
    results = [make_result(i) for i in range(3)]
    per_frame, fused = PlyWriter(tmp_path), FusedPlyWriter(tmp_path)
    for r in results:
        per_frame.write(r)
        fused.write(r)
    per_frame.close()
    fused.close()
    all_xyz, all_rgb = [], []
    for r in results:
        xyz, rgb = read_ply(tmp_path / 'ply' / f'{r.frame.index:06d}.ply')
        valid = np.isfinite(r.points).all(axis=2)
        assert len(xyz) == valid.sum() < r.points.shape[0] * r.points.shape[1]
        np.testing.assert_array_equal(xyz, r.points[valid])
        np.testing.assert_array_equal(rgb, r.point_rgb[valid])
        all_xyz.append(xyz)
        all_rgb.append(rgb)
    xyz, rgb = read_ply(tmp_path / 'fused.ply')
    np.testing.assert_array_equal(xyz, np.concatenate(all_xyz))
    np.testing.assert_array_equal(rgb, np.concatenate(all_rgb))
    assert (tmp_path / 'fused.ply').read_bytes().startswith(
        b'ply\nformat binary_little_endian 1.0\n')
    assert not (tmp_path / 'fused.ply.part').exists()


def test_fused_ply_interrupted_is_valid(tmp_path):
    fused = FusedPlyWriter(tmp_path)
    fused.write(make_result(0))
    fused.close(complete=False)
    xyz, _ = read_ply(tmp_path / 'fused.ply')
    assert len(xyz) == np.isfinite(make_result(0).points).all(axis=2).sum()


def _read_bag(path):
    ts = rosbags_typestore()
    reader = open_bag_reader(path)
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        messages = [(c.topic, t, ts.deserialize_cdr(raw, c.msgtype))
                    for c, t, raw in reader.messages()]
    finally:
        reader.close()
    return topics, messages


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_writer_without_input_bag(tmp_path, storage):
    results = [make_result(i) for i in range(3)]
    writer = BagWriter(tmp_path / 'bag', storage=storage, namespace='/camera')
    for r in results:
        writer.write(r)
    writer.close()
    topics, messages = _read_bag(tmp_path / 'bag')
    assert topics == {
        '/camera/image_raw': 'sensor_msgs/msg/Image',
        '/camera/camera_info': 'sensor_msgs/msg/CameraInfo',
        '/camera/depth/disparity': 'sensor_msgs/msg/Image',
        '/camera/depth/image': 'sensor_msgs/msg/Image',
        '/camera/depth/camera_info': 'sensor_msgs/msg/CameraInfo',
        '/camera/depth/points': 'sensor_msgs/msg/PointCloud2',
    }
    by_topic = {}
    for topic, log_time, msg in messages:
        by_topic.setdefault(topic, []).append((log_time, msg))
    assert all(len(v) == 3 for v in by_topic.values())
    for r, (log_time, msg) in zip(results, by_topic['/camera/depth/image']):
        assert log_time == r.frame.log_time_ns
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == r.frame.stamp_ns
        assert msg.header.frame_id == 'cam_optical' and msg.encoding == '32FC1'
        depth = msg.data.view('<f4').reshape(H, W)
        np.testing.assert_array_equal(depth, r.depth)
    for r, (_, msg) in zip(results, by_topic['/camera/image_raw']):
        np.testing.assert_array_equal(msg.data.reshape(H, W, 3), r.frame.rgb)
    for r, (_, msg) in zip(results, by_topic['/camera/depth/camera_info']):
        np.testing.assert_allclose(np.reshape(msg.k, (3, 3)), r.intrinsics.K)
        assert (msg.width, msg.height) == (W, H)
    for r, (_, msg) in zip(results, by_topic['/camera/depth/points']):
        assert (msg.height, msg.width) == r.points.shape[:2]
        assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
        cloud = msg.data.view('<f4').reshape(msg.height, msg.width, -1)
        np.testing.assert_array_equal(cloud[..., :3], r.points)


def test_bag_writer_relative_only_and_existing_path(tmp_path):
    writer = BagWriter(tmp_path / 'bag', namespace='', metric=False)
    writer.write(make_result(0, with_metric=False))
    writer.close()
    topics, _ = _read_bag(tmp_path / 'bag')
    assert set(topics) == {'/camera/image_raw', '/camera/camera_info', '/depth/disparity',
                           '/depth/camera_info'}
    with pytest.raises(InputError, match='already exists'):
        BagWriter(tmp_path / 'bag')
    BagWriter(tmp_path / 'bag', overwrite=True).close()
    assert _read_bag(tmp_path / 'bag')[1] == []


def test_depth_topics():
    assert writers.depth_topics('/cam/')['image'] == '/cam/depth/image'
    assert writers.depth_topics('')['points'] == '/depth/points'


def test_frame_table_quotes_awkward_frame_ids(tmp_path):
    import csv
    from dataclasses import replace

    table = writers.FrameTableWriter(tmp_path)
    result = make_result(0, with_metric=False)
    table.write(replace(result, frame=replace(result.frame, frame_id='rig,left "cam"')))
    table.close()
    with open(tmp_path / 'frames.csv', newline='', encoding='utf-8') as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ['index', 'stamp_ns', 'log_time_ns', 'frame_id']
    assert rows[1] == ['0', '1000000000', '2000000000', 'rig,left "cam"']
