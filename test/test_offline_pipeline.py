"""Tests of dvd_ros/offline/pipeline.py and `dvd-ros offline`: round trips and error cases."""

import os
import re
import signal

import cv2
import numpy as np
import pytest
from test_offline_sources import K, synthetic_frames, write_folder, write_image_bag, write_video

from dvd_ros.cli import main as cli_main
from dvd_ros.cli import offline as cli_offline
from dvd_ros.errors import InputError
from dvd_ros.geometry import disparity_to_depth
from dvd_ros.offline import pipeline
from dvd_ros.offline.pipeline import OfflineConfig, run_pipeline
from dvd_ros.offline.sources import open_bag_reader, open_source, rosbags_typestore
from dvd_ros.offline.writers import read_ply
from dvd_ros.stream.align import stitch_offline
from dvd_ros.stream.estimator import StreamingDepth
from dvd_ros.stream.windows import offline_windows

WINDOW, OVERLAP = 5, 2
METRIC = (2.0, 0.25)
DEPTH_TOPICS = ('disparity', 'image', 'camera_info', 'points')


class StandInRegressor:
    """Fast deterministic stand-in: brightness as disparity, distorted per window.

    The scale/shift depend on the window's content, so consecutive windows disagree and the
    stitching has real work to do.
    """

    def __init__(self, interrupt_on_call=None, sigint=False):
        self.calls = 0
        self.interrupt_on_call = interrupt_on_call
        self.sigint = sigint

    def predict(self, frames):
        frames = np.asarray(frames)
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            if self.sigint:
                os.kill(os.getpid(), signal.SIGINT)
            raise KeyboardInterrupt
        base = frames.astype(np.float32).mean(axis=3) / 255.0
        level = float(frames[0].mean()) / 255.0
        # Not an exact affine of a common map: a per-window gamma and a ramp over the
        # window's frames leave residuals for the alignment and cross-fade to act on.
        ramp = np.linspace(0.0, 0.05, len(frames), dtype=np.float32)[:, None, None]
        out = (0.6 + 0.8 * level) * base ** (0.8 + 0.6 * level) + 0.1 * level + ramp
        return out.astype(np.float32)


def reference_disparity(frames, window=WINDOW, overlap=OVERLAP):
    """Direct regressor + reference stitching on the same frames (the expected output)."""
    regressor = StandInRegressor()
    windows = offline_windows(len(frames), window, overlap)
    outputs = [regressor.predict(frames[s:e]) for s, e in windows]
    return stitch_offline(outputs, windows, total=len(frames))


def config(tmp_path, outputs, **kw):
    kw.setdefault('window', WINDOW)
    kw.setdefault('overlap', OVERLAP)
    kw.setdefault('progress', False)
    return OfflineConfig(out_dir=tmp_path / 'out', outputs=tuple(outputs), **kw)


def read_bag(path):
    ts = rosbags_typestore()
    reader = open_bag_reader(path)
    try:
        storage = type(reader.storage).__name__
        topics = {c.topic: c.msgtype for c in reader.connections}
        by_topic = {}
        for conn, log_time, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append(
                (log_time, ts.deserialize_cdr(raw, conn.msgtype)))
    finally:
        reader.close()
    return storage, topics, by_topic


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def float_image(msg):
    assert msg.encoding == '32FC1'
    return msg.data.view('<f4').reshape(msg.height, msg.width)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_round_trip(tmp_path, storage):
    frames = synthetic_frames(11)
    stamps, logs = write_image_bag(tmp_path / 'in', frames, storage=storage)
    source = open_source(tmp_path / 'in')
    report = run_pipeline(source, StandInRegressor(),
                          config(tmp_path, ['bag', 'npz'], metric=METRIC))
    assert report.frames_written == 11 and report.frames_dropped == 0 and not report.interrupted
    assert report.windows == len(offline_windows(11, WINDOW, OVERLAP))

    kind, topics, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert storage[:4] in kind.lower() or 'Directory' in kind
    expected_topics = {'/cam/image_raw', '/cam/camera_info', '/chatter'} | {
        f'/cam/depth/{name}' for name in DEPTH_TOPICS}
    assert set(topics) == expected_topics
    assert {t: len(v) for t, v in by_topic.items()} == dict.fromkeys(expected_topics, 11)
    # Input topics copied verbatim, at their log times.
    assert [t for t, _ in by_topic['/cam/image_raw']] == logs
    assert [stamp_ns(m) for _, m in by_topic['/cam/image_raw']] == stamps
    assert [m.data for _, m in by_topic['/chatter']] == [f'frame {i}' for i in range(11)]

    expected = reference_disparity(frames)
    for name in DEPTH_TOPICS:
        msgs = by_topic[f'/cam/depth/{name}']
        assert [t for t, _ in msgs] == logs
        assert [stamp_ns(m) for _, m in msgs] == stamps
        assert {m.header.frame_id for _, m in msgs} == {'cam_optical'}
    got = np.stack([float_image(m) for _, m in by_topic['/cam/depth/disparity']])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    depth = np.stack([float_image(m) for _, m in by_topic['/cam/depth/image']])
    np.testing.assert_allclose(depth, disparity_to_depth(expected, *METRIC), rtol=1e-5)
    for _, info in by_topic['/cam/depth/camera_info']:
        np.testing.assert_allclose(info.k, K)
    cloud = by_topic['/cam/depth/points'][4][1]
    assert (cloud.height, cloud.width) == frames.shape[1:3]
    xyz = cloud.data.view('<f4').reshape(cloud.height, cloud.width, 4)[..., :3]
    v, u = 5, 20
    z = depth[4, v, u]
    np.testing.assert_allclose(xyz[v, u], [(u - K[2]) / K[0] * z, (v - K[5]) / K[4] * z, z],
                               rtol=1e-5)
    # npz per frame matches the bag.
    with np.load(tmp_path / 'out' / 'npz' / '000010.npz') as data:
        np.testing.assert_array_equal(data['disparity'], got[10])
        assert int(data['stamp_ns']) == stamps[10]


def test_folder_round_trip(tmp_path):
    frames = synthetic_frames(9)
    folder = write_folder(tmp_path / 'imgs', frames)
    report = run_pipeline(open_source(folder, fps=5), StandInRegressor(),
                          config(tmp_path, ['png16', 'npz', 'mp4', 'bag']))
    assert report.frames_written == 9
    expected = reference_disparity(frames)
    for i in range(9):
        with np.load(tmp_path / 'out' / 'npz' / f'{i:06d}.npz') as data:
            np.testing.assert_allclose(data['disparity'], expected[i], rtol=1e-6, atol=1e-6)
            assert int(data['stamp_ns']) == i * 200_000_000
        png = cv2.imread(str(tmp_path / 'out' / 'disparity' / f'{i:06d}.png'),
                         cv2.IMREAD_UNCHANGED)
        np.testing.assert_allclose(png / 32768.0, expected[i], atol=1 / 32768)
    _, topics, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert set(topics) == {'/camera/image_raw', '/camera/camera_info', '/camera/depth/disparity',
                           '/camera/depth/camera_info'}  # relative only: no depth/image, points
    assert [stamp_ns(m) for _, m in by_topic['/camera/depth/disparity']] == [
        i * 200_000_000 for i in range(9)]
    cap = cv2.VideoCapture(str(tmp_path / 'out' / 'depth.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 9
    cap.release()
    lines = (tmp_path / 'out' / 'frames.csv').read_text().splitlines()
    assert lines[0] == 'index,stamp_ns,log_time_ns,frame_id' and len(lines) == 10
    assert any('depth/disparity and depth/camera_info only' in n for n in report.notes)


def test_video_round_trip(tmp_path):
    path = write_video(tmp_path / 'clip.mp4', synthetic_frames(8, 48, 64), fps=15.0)
    source = open_source(path)
    decoded = np.stack([f.rgb for f in source])  # what the codec gives back
    report = run_pipeline(source, StandInRegressor(),
                          config(tmp_path, ['npz', 'ply', 'ply-fused'], metric=METRIC,
                                 point_stride=2, hfov_deg=90.0))
    assert report.frames_written == 8
    expected = reference_disparity(decoded)
    fused_count = 0
    for i in range(8):
        with np.load(tmp_path / 'out' / 'npz' / f'{i:06d}.npz') as data:
            np.testing.assert_allclose(data['disparity'], expected[i], rtol=1e-6, atol=1e-6)
            assert int(data['stamp_ns']) == round(i * 1e9 / 15.0)
            assert data['K'][0, 0] == pytest.approx(32.0)  # 90 deg hfov, 64 px wide
        xyz, _ = read_ply(tmp_path / 'out' / 'ply' / f'{i:06d}.ply')
        assert len(xyz) == 24 * 32  # stride 2, all depths valid
        fused_count += len(xyz)
    assert len(read_ply(tmp_path / 'out' / 'fused.ply')[0]) == fused_count


@pytest.mark.parametrize('case', ['uncalibrated', 'other_size'])
def test_camera_info_fallbacks(tmp_path, case):
    """The output CameraInfo describes the intrinsics actually used for the points."""
    frames = synthetic_frames(3)
    if case == 'uncalibrated':  # all-zero K: --hfov 90 over 32 px gives f = 16
        write_image_bag(tmp_path / 'in', frames, k=[0.0] * 9)
        expected_k = [16.0, 0, 15.5, 0, 16.0, 11.5, 0, 0, 1]
    else:  # CameraInfo of a 64x48 stream, images 32x24: K halved (pixel-centre convention)
        write_image_bag(tmp_path / 'in', frames, k=[40.0, 0, 31.5, 0, 40.0, 23.5, 0, 0, 1],
                        info_size=(64, 48))
        expected_k = [20.0, 0, 15.5, 0, 20.0, 11.5, 0, 0, 1]
    report = run_pipeline(open_source(tmp_path / 'in'), StandInRegressor(),
                          config(tmp_path, ['bag'], metric=METRIC, hfov_deg=90.0))
    _, _, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert len(by_topic['/cam/depth/camera_info']) == 3
    for _, msg in by_topic['/cam/depth/camera_info']:
        np.testing.assert_allclose(msg.k, expected_k)
        assert (msg.width, msg.height) == (32, 24)
    unusable = [n for n in report.notes if 'CameraInfo unusable' in n and '--hfov' in n]
    assert bool(unusable) == (case == 'uncalibrated')


def test_progress_bar_shows_rate_and_eta(tmp_path):
    import io

    stream = io.StringIO()
    folder = write_folder(tmp_path / 'imgs', synthetic_frames(6))
    run_pipeline(open_source(folder), StandInRegressor(),
                 config(tmp_path, ['npz'], progress=True), progress_file=stream)
    text = stream.getvalue()
    assert '6/6' in text and 'frame/s' in text
    assert re.search(r'\[\d\d:\d\d<\d\d:\d\d', text)  # elapsed < remaining (ETA)


def test_max_frames_stitches_the_prefix(tmp_path):
    frames = synthetic_frames(12)
    write_image_bag(tmp_path / 'in', frames)
    report = run_pipeline(open_source(tmp_path / 'in'), StandInRegressor(),
                          config(tmp_path, ['npz', 'bag'], max_frames=7))
    assert (report.frames_total, report.frames_written) == (7, 7)
    _, _, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert len(by_topic['/cam/image_raw']) == len(by_topic['/cam/depth/disparity']) == 7
    expected = reference_disparity(frames[:7])
    with np.load(tmp_path / 'out' / 'npz' / '000006.npz') as data:
        np.testing.assert_allclose(data['disparity'], expected[6], rtol=1e-6, atol=1e-6)
    assert not (tmp_path / 'out' / 'npz' / '000007.npz').exists()


def test_causal_matches_streaming_depth(tmp_path):
    frames = synthetic_frames(13)
    folder = write_folder(tmp_path / 'imgs', frames)
    report = run_pipeline(open_source(folder), StandInRegressor(),
                          config(tmp_path, ['npz'], causal=True))
    streaming = StreamingDepth(StandInRegressor(), WINDOW, OVERLAP, policy='immediate')
    expected = {}
    for i, rgb in enumerate(frames):
        expected.update({f.stamp: f.disparity for f in streaming.push(rgb, i)})
    expected.update({f.stamp: f.disparity for f in streaming.flush()})
    assert report.frames_written == len(expected)
    assert report.frames_dropped == 13 - len(expected)
    for i, disparity in expected.items():
        with np.load(tmp_path / 'out' / 'npz' / f'{i:06d}.npz') as data:
            np.testing.assert_allclose(data['disparity'], disparity, rtol=1e-6, atol=1e-6)
    # Causal differs from the reference (no cross-fade, no backwards re-anchoring).
    offline = reference_disparity(frames)
    assert max(np.abs(expected[i] - offline[i]).max() for i in expected) > 1e-4


def test_cli_with_real_depth_regressor(tmp_path, capsys):
    """`--weights` on a converted folder: the real DepthRegressor (tiny random weights)."""
    torch = pytest.importorskip('torch')
    tiny = pytest.importorskip('tiny_models')
    from dvd_ros.model.regressor import DepthRegressor

    torch.set_num_threads(1)
    tiny.save_tiny_weights(tmp_path / 'weights')
    frames = synthetic_frames(8)
    stamps, _ = write_image_bag(tmp_path / 'in', frames, storage='sqlite3')
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                          'bag', '--weights', tmp_path / 'weights', '--height', 32, '--width',
                          32, '--window', WINDOW, '--overlap', OVERLAP, '--metric-a', METRIC[0],
                          '--metric-b', METRIC[1])
    assert status == 0, err
    _, _, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert [stamp_ns(m) for _, m in by_topic['/cam/depth/image']] == stamps
    regressor = DepthRegressor.from_pretrained(tmp_path / 'weights', height=32, width=32)
    windows = offline_windows(8, WINDOW, OVERLAP)
    expected = stitch_offline([regressor.predict(frames[s:e]) for s, e in windows], windows, 8)
    got = np.stack([float_image(m) for _, m in by_topic['/cam/depth/disparity']])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- interruption


@pytest.mark.parametrize('sigint', [False, True])
def test_interrupt_leaves_valid_outputs(tmp_path, sigint):
    frames = synthetic_frames(14)
    stamps, _ = write_image_bag(tmp_path / 'in', frames, storage='mcap')
    regressor = StandInRegressor(interrupt_on_call=3, sigint=sigint)
    with pytest.raises(KeyboardInterrupt) as info:
        run_pipeline(open_source(tmp_path / 'in'), regressor,
                     config(tmp_path, ['bag', 'png16', 'mp4', 'ply-fused'], metric=METRIC))
    report = info.value.report
    assert report.interrupted
    # Windows [0,5) and [3,8) ran; frames 0..5 are final (6, 7 wait for the cross-fade).
    assert report.frames_written == 6
    _, topics, by_topic = read_bag(tmp_path / 'out' / 'bag')
    for name in DEPTH_TOPICS:
        assert [stamp_ns(m) for _, m in by_topic[f'/cam/depth/{name}']] == stamps[:6]
    assert len(by_topic['/cam/image_raw']) == 6  # input copied up to the last finished frame
    assert sorted(p.name for p in (tmp_path / 'out' / 'disparity').iterdir()) == [
        f'{i:06d}.png' for i in range(6)]
    cap = cv2.VideoCapture(str(tmp_path / 'out' / 'depth.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    assert len(read_ply(tmp_path / 'out' / 'fused.ply')[0]) == 6 * 24 * 32
    assert len((tmp_path / 'out' / 'frames.csv').read_text().splitlines()) == 7


def test_sigint_is_deferred_while_writing():
    # A test run started in the background (nohup, `cmd &`) inherits SIGINT ignored, and
    # _Interrupts rightly keeps ignoring it then: start from Python's own handler.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts = pipeline._Interrupts()
    interrupts.install()
    try:
        reached = False
        with pytest.raises(KeyboardInterrupt):
            with interrupts.critical():
                os.kill(os.getpid(), signal.SIGINT)
                reached = True  # still inside: the handler only noted the signal
        assert reached
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        interrupts.uninstall()
        restored = signal.signal(signal.SIGINT, inherited)
    assert restored is signal.default_int_handler


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(cli_offline, 'load_regressor', lambda args: StandInRegressor())


def run_cli(capsys, *argv):
    status = cli_main.main(['offline', *map(str, argv), '--no-progress'])
    return status, capsys.readouterr().err


def test_cli_bag_to_bag(tmp_path, capsys, stand_in):
    frames = synthetic_frames(6)
    write_image_bag(tmp_path / 'in', frames, storage='sqlite3')
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                          'bag,png16', '--window', 5, '--overlap', 2, '--metric-a', 2,
                          '--metric-b', 0.25, '--depth-namespace', '/dvd')
    assert status == 0, err
    assert 'done: 6/6 frames' in err and 'bag' in err
    _, topics, by_topic = read_bag(tmp_path / 'out' / 'bag')
    assert {f'/dvd/depth/{n}' for n in DEPTH_TOPICS} <= set(topics)
    got = np.stack([float_image(m) for _, m in by_topic['/dvd/depth/disparity']])
    np.testing.assert_allclose(got, reference_disparity(frames), rtol=1e-6, atol=1e-6)
    assert (tmp_path / 'out' / 'depth' / '000005.png').is_file()
    # A second run into the same directory needs --overwrite.
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs', 'bag')
    assert status == 2 and 'already exists' in err and '--overwrite' in err


def test_failed_start_leaves_no_outputs_behind(tmp_path, capsys, stand_in):
    # The bag writer refuses an input that already has its depth topics; the outputs made
    # before it must go again, or the corrected re-run would stop on 'already exists'.
    write_image_bag(tmp_path / 'in', synthetic_frames(3),
                    extra_image_topics=('/cam/depth/disparity',))
    argv = [tmp_path / 'in', '--topic', '/cam/image_raw', '--out', tmp_path / 'out',
            '--outputs', 'png16,npz,ply-fused,bag', '--metric-a', 2, '--metric-b', 0.25,
            '--window', 5, '--overlap', 2]
    status, err = run_cli(capsys, *argv)
    assert status == 2 and 'already has topic /cam/depth/disparity' in err, err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == []
    status, err = run_cli(capsys, *argv, '--depth-namespace', '/dvd')
    assert status == 0, err
    assert 'done: 3/3 frames' in err


def test_disk_full_is_one_line_error(tmp_path, capsys, stand_in, monkeypatch):
    from dvd_ros.offline import writers

    def full(path, image):
        raise OSError(28, 'No space left on device', str(path))

    monkeypatch.setattr(writers.Png16Writer, '_write_png', staticmethod(full))
    write_folder(tmp_path / 'imgs', synthetic_frames(3))
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out', '--outputs',
                          'png16', '--window', 5, '--overlap', 2)
    assert status == 2
    assert err.splitlines()[-1].startswith('dvd-ros offline: error: ')
    assert 'No space left on device' in err and 'Traceback' not in err


@pytest.mark.parametrize('case', ['missing_topic', 'corrupt_bag', 'unsupported_encoding',
                                  'unwritable_out', 'empty_folder', 'unreadable_video',
                                  'ply_without_metric', 'half_metric', 'bad_window'])
def test_cli_errors(tmp_path, capsys, stand_in, case):
    out = tmp_path / 'out'
    args = []
    if case == 'missing_topic':
        write_image_bag(tmp_path / 'in', synthetic_frames(2))
        args = [tmp_path / 'in', '--topic', '/camera/color']
        expected = ("topic '/camera/color' is not in bag .*; image topics: "
                    r'/cam/image_raw \(Image\)')
    elif case == 'corrupt_bag':
        write_image_bag(tmp_path / 'in', synthetic_frames(6, 48, 64))
        data_file = next((tmp_path / 'in').glob('*.mcap'))
        data_file.write_bytes(data_file.read_bytes()[:3000])
        args = [tmp_path / 'in']
        expected = 'cannot read ROS 2 bag .*truncated, corrupt'
    elif case == 'unsupported_encoding':
        write_image_bag(tmp_path / 'in', synthetic_frames(3), encoding='yuv422')
        args = [tmp_path / 'in']
        expected = "unsupported image encoding 'yuv422'"
    elif case == 'unwritable_out':
        write_image_bag(tmp_path / 'in', synthetic_frames(2))
        (tmp_path / 'blocker').write_text('a file')
        out = tmp_path / 'blocker' / 'out'
        args = [tmp_path / 'in']
        expected = 'cannot create output directory .*blocker/out.*pass a writable --out'
    elif case == 'empty_folder':
        (tmp_path / 'empty').mkdir()
        args = [tmp_path / 'empty']
        expected = 'no .png/.jpg/.jpeg files'
    elif case == 'unreadable_video':
        (tmp_path / 'clip.avi').write_bytes(b'RIFF' + b'\x00' * 400)
        args = [tmp_path / 'clip.avi']
        expected = 'video .*clip.avi'
    elif case == 'ply_without_metric':
        write_folder(tmp_path / 'imgs', synthetic_frames(2))
        args = [tmp_path / 'imgs', '--outputs', 'ply']
        expected = 'ply need metric depth; pass --metric-a A --metric-b B'
    elif case == 'half_metric':
        write_folder(tmp_path / 'imgs', synthetic_frames(2))
        args = [tmp_path / 'imgs', '--metric-a', '1']
        expected = 'pass both --metric-a and --metric-b'
    else:
        write_folder(tmp_path / 'imgs', synthetic_frames(2))
        args = [tmp_path / 'imgs', '--window', 5, '--overlap', 5]
        expected = r'overlap must be an integer in \[0, window=5\)'
    status, err = run_cli(capsys, *args, '--out', out)
    assert status == 2
    assert err.startswith('dvd-ros offline: error: ') and len(err.strip().splitlines()) == 1
    assert re.search(expected, err), err


def test_error_mid_run_keeps_finished_frames_valid(tmp_path):
    frames = synthetic_frames(8)
    write_image_bag(tmp_path / 'in', frames)
    source = open_source(tmp_path / 'in')
    real_decode, calls = source.decode, []

    def failing_decode(msg):
        calls.append(msg)
        if len(calls) == 8:  # frame 7
            raise InputError('bad frame')
        return real_decode(msg)

    source.decode = failing_decode
    with pytest.raises(InputError, match='bad frame'):
        run_pipeline(source, StandInRegressor(), config(tmp_path, ['bag', 'mp4']))
    _, _, by_topic = read_bag(tmp_path / 'out' / 'bag')  # closed properly
    # Window [0, 5) finished frames 0..2 before frame 7 failed while [3, 8) was read.
    assert len(by_topic['/cam/depth/disparity']) == 3


def test_default_window_follows_the_weights(tmp_path):
    import argparse
    import json

    from dvd_ros.cli.offline import REFERENCE_WINDOW, _window
    (tmp_path / 'dvd_ros.json').write_text(json.dumps({'recommended_window': 9}))

    def window(weights, w=None, o=None):
        return _window(argparse.Namespace(weights=weights, window=w, overlap=o))

    assert window(str(tmp_path)) == (9, 4)
    assert window(str(tmp_path / 'release.safetensors')) == REFERENCE_WINDOW
    assert window(str(tmp_path), 25) == (25, 12)
    assert window(str(tmp_path), 25, 3) == (25, 3)
