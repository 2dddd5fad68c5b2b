"""Offline runs never destroy data: start-up checks, --out lock, verified writers, bounded inputs.

Each test names the class of failure it guards against (issue 12).
"""

import hashlib
import logging
import os
from pathlib import Path
import struct
import subprocess
import sys
import threading
import zlib

import cv2
import numpy as np
import pytest
from test_offline_pipeline import (
    WINDOW,
    StandInRegressor,
    config,
    read_bag,
)
from test_offline_sources import synthetic_frames, write_folder, write_image_bag, write_video

from dvd_ros.cli import main as cli_main
from dvd_ros.cli import offline as cli_offline
from dvd_ros.errors import InputError
from dvd_ros.offline import outputs, sources, writers
from dvd_ros.offline.outputs import LOCK_NAME, FolderLock
from dvd_ros.offline.pipeline import run_pipeline
from dvd_ros.offline.sources import (
    DEFAULT_MAX_PIXELS,
    FolderSource,
    SourceEndedEarly,
    compressed_msg_to_rgb,
    open_source,
)

OVERLAP = 2


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(cli_offline, 'load_regressor', lambda args: StandInRegressor())


def run_cli(capsys, *argv):
    status = cli_main.main(['offline', *map(str, argv), '--no-progress'])
    return status, capsys.readouterr().err


def tree_digest(root):
    """Return {relative path: sha256} of every file under `root` (symlinks by target text)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = 'link:' + os.readlink(path)
            else:
                found[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def first_run(tmp_path, capsys, outputs_list='png16,npz,bag,mp4'):
    """Make a bag input and a complete first run into tmp/out; return the argv used."""
    write_image_bag(tmp_path / 'in', synthetic_frames(6))
    argv = [tmp_path / 'in', '--out', tmp_path / 'out', '--outputs', outputs_list,
            '--window', WINDOW, '--overlap', OVERLAP]
    status, err = run_cli(capsys, *argv)
    assert status == 0, err
    return argv


# ---------------------------------------------------------------- input inside / equal / around


def test_input_inside_an_output_is_refused_even_with_overwrite(tmp_path, capsys, stand_in):
    first_run(tmp_path, capsys, 'bag')
    before = tree_digest(tmp_path / 'out')
    # The output bag of run 1 as the input of run 2 into the same folder: --overwrite would
    # delete the very bag being read.
    status, err = run_cli(capsys, tmp_path / 'out' / 'bag', '--out', tmp_path / 'out',
                          '--outputs', 'bag', '--overwrite', '--window', WINDOW,
                          '--overlap', OVERLAP)
    assert status == 2 and 'is the output' in err and 'choose another --out' in err, err
    assert tree_digest(tmp_path / 'out') == before
    # Its storage file (inside the output folder 'bag') is refused the same way.
    mcap = next((tmp_path / 'out' / 'bag').glob('*.mcap'))
    status, err = run_cli(capsys, mcap, '--out', tmp_path / 'out', '--outputs', 'bag',
                          '--overwrite')
    assert status == 2 and 'lies inside' in err, err
    assert tree_digest(tmp_path / 'out') == before


def test_image_folder_that_is_an_output_is_refused(tmp_path, capsys, stand_in):
    write_folder(tmp_path / 'out' / 'disparity', synthetic_frames(3))
    before = tree_digest(tmp_path / 'out')
    status, err = run_cli(capsys, tmp_path / 'out' / 'disparity', '--out', tmp_path / 'out',
                          '--outputs', 'png16', '--overwrite')
    assert status == 2 and 'is the output' in err, err
    assert tree_digest(tmp_path / 'out') == before


def test_output_inside_the_input_is_refused_before_creating_it(tmp_path, capsys, stand_in):
    write_folder(tmp_path / 'imgs', synthetic_frames(3))
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'imgs' / 'depth')
    assert status == 2 and 'lies inside the input' in err, err
    assert not (tmp_path / 'imgs' / 'depth').exists()
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'imgs')
    assert status == 2 and 'is or lies inside the input' in err, err


def test_symlinks_are_resolved(tmp_path, capsys, stand_in):
    write_image_bag(tmp_path / 'in', synthetic_frames(3))
    (tmp_path / 'out').mkdir()
    # out/bag is a link to the input bag: writing 'bag' there would replace the input.
    (tmp_path / 'out' / 'bag').symlink_to(tmp_path / 'in')
    before = tree_digest(tmp_path / 'in')
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs', 'bag',
                          '--overwrite')
    assert status == 2 and 'is the output' in err, err
    assert tree_digest(tmp_path / 'in') == before and (tmp_path / 'out' / 'bag').is_symlink()
    # --out through a link into the input.
    (tmp_path / 'link').symlink_to(tmp_path / 'in')
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'link' / 'depth')
    assert status == 2 and 'inside the input' in err, err
    assert tree_digest(tmp_path / 'in') == before


def test_an_input_inside_the_output_folder_is_refused(tmp_path, capsys, stand_in):
    # Not one of this run's output names, but inside --out: one --overwrite or a later run
    # with other outputs away from being replaced, so it is refused before anything is touched.
    write_folder(tmp_path / 'out' / 'frames', synthetic_frames(3))
    before = tree_digest(tmp_path / 'out')
    status, err = run_cli(capsys, tmp_path / 'out' / 'frames', '--out', tmp_path / 'out',
                          '--outputs', 'png16', '--overwrite', '--window', WINDOW,
                          '--overlap', OVERLAP)
    assert status == 2 and 'lies inside the output folder' in err, err
    assert tree_digest(tmp_path / 'out') == before


def test_python_api_checks_the_overlap_too(tmp_path):
    write_image_bag(tmp_path / 'out' / 'bag', synthetic_frames(3))
    before = tree_digest(tmp_path / 'out')
    with pytest.raises(InputError, match='is the output'):
        run_pipeline(open_source(tmp_path / 'out' / 'bag'), StandInRegressor(),
                     config(tmp_path, ['bag'], overwrite=True))
    assert tree_digest(tmp_path / 'out') == before


# ---------------------------------------------------------------- refused start-up keeps outputs


def test_refused_start_keeps_old_outputs(tmp_path, capsys, stand_in):
    first_run(tmp_path, capsys)
    before = tree_digest(tmp_path / 'out')
    # The second input already has one of the depth topics: the bag writer refuses. Before,
    # frames.csv, disparity/ and npz/ were deleted by then.
    write_image_bag(tmp_path / 'in2', synthetic_frames(4),
                    extra_image_topics=('/cam/depth/disparity',))
    status, err = run_cli(capsys, tmp_path / 'in2', '--topic', '/cam/image_raw', '--out',
                          tmp_path / 'out', '--outputs', 'png16,npz,bag,mp4', '--overwrite',
                          '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 2 and 'already has topic /cam/depth/disparity' in err, err
    assert tree_digest(tmp_path / 'out') == before


def test_refused_mp4_start_keeps_old_outputs(tmp_path, capsys, stand_in, monkeypatch):
    first_run(tmp_path, capsys)
    before = tree_digest(tmp_path / 'out')
    monkeypatch.setattr(writers, '_mp4_writer', lambda *a: _Closed())
    status, err = run_cli(capsys, *[tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                                    'png16,npz,bag,mp4', '--overwrite'])
    assert status == 2 and 'cannot write MP4' in err, err
    assert tree_digest(tmp_path / 'out') == before


def test_overwrite_replaces_only_what_this_run_writes(tmp_path, capsys, stand_in):
    first_run(tmp_path, capsys)
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    old_npz = tree_digest(tmp_path / 'out' / 'npz')
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                          'png16', '--overwrite', '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 0, err
    assert (tmp_path / 'out' / 'notes.txt').read_text() == 'mine'
    assert tree_digest(tmp_path / 'out' / 'npz') == old_npz  # not an output of run 2
    assert (tmp_path / 'out' / 'bag').is_dir() and (tmp_path / 'out' / 'depth.mp4').is_file()


# ---------------------------------------------------------------- the --out lock


def test_a_second_run_on_one_out_is_refused_with_the_holders_pid(tmp_path, capsys, stand_in):
    first_run(tmp_path, capsys, 'png16')
    before = tree_digest(tmp_path / 'out')
    holder = subprocess.Popen(
        [sys.executable, '-c',
         'import fcntl, os, sys, time\n'
         f'fd = os.open({str(tmp_path / "out" / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n'
         'fcntl.flock(fd, fcntl.LOCK_EX)\n'
         'os.write(fd, b"%d\\n" % os.getpid())\n'
         'print("locked", flush=True)\n'
         'time.sleep(60)\n'],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                              'png16', '--overwrite')
        assert status == 2 and f'in use by another dvd-ros offline run (PID {holder.pid}' in err
        before.pop(LOCK_NAME, None)
        after = tree_digest(tmp_path / 'out')
        after.pop(LOCK_NAME, None)
        assert after == before
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_log_line(tmp_path, capsys, stand_in,
                                                                caplog):
    write_folder(tmp_path / 'imgs', synthetic_frames(3))
    (tmp_path / 'out').mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / 'out' / LOCK_NAME).write_text(f'{dead.pid}\n')
    with caplog.at_level(logging.WARNING, logger='dvd_ros.offline'):
        status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out',
                              '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 0, err
    assert 'stale lock' in caplog.text and f'PID {dead.pid}' in caplog.text
    assert not (tmp_path / 'out' / LOCK_NAME).exists()


def test_concurrent_runs_in_threads_one_wins(tmp_path):
    write_folder(tmp_path / 'imgs', synthetic_frames(6))
    gate = threading.Event()

    class Slow(StandInRegressor):
        def predict(self, frames):
            gate.wait(10)
            return super().predict(frames)

    errors, reports = [], []

    def run():
        try:
            reports.append(run_pipeline(open_source(tmp_path / 'imgs'), Slow(),
                                        config(tmp_path, ['png16'])))
        except InputError as exc:
            errors.append(str(exc))
            gate.set()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    gate.set()
    assert len(reports) == 1 and reports[0].state == 'done'
    assert len(errors) == 1 and f'PID {os.getpid()}' in errors[0]


def test_folder_lock_is_exclusive_and_removed(tmp_path):
    first = FolderLock(tmp_path / LOCK_NAME).acquire()
    with pytest.raises(InputError, match=f'PID {os.getpid()}'):
        FolderLock(tmp_path / LOCK_NAME).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    FolderLock(tmp_path / LOCK_NAME).acquire().release()


# ---------------------------------------------------------------- writers verify what they wrote


class _Closed:
    """A VideoWriter that failed to open (OpenCV gives no reason)."""

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return False

    def release(self):
        pass


class _Dropping:
    """A real VideoWriter that silently drops every second frame (as a full disk would)."""

    def __init__(self, *args):
        self._video = cv2.VideoWriter(*[str(a) if isinstance(a, Path) else a for a in args])
        self._n = 0

    def isOpened(self):  # noqa: N802
        return self._video.isOpened()

    def write(self, image):
        self._n += 1
        if self._n % 2:
            self._video.write(image)

    def release(self):
        self._video.release()


def _mp4_args(path, fps, size):
    return (path, cv2.VideoWriter_fourcc(*'mp4v'), float(fps), tuple(size))


def test_failed_mp4_write_is_an_error(tmp_path, capsys, stand_in, monkeypatch):
    write_folder(tmp_path / 'imgs', synthetic_frames(6))
    monkeypatch.setattr(writers, '_mp4_writer',
                        lambda path, fps, size: _Dropping(*_mp4_args(path, fps, size)))
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out', '--outputs',
                          'mp4,png16', '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 2, err
    assert 'failed: 6/6 frames' in err and 'done:' not in err
    assert 'holds 3 of the 6 frames' in err
    assert not (tmp_path / 'out' / 'depth.mp4').exists()  # never a short video under the name


def test_mp4_encoder_refusal_names_the_real_cause(tmp_path, capsys, stand_in):
    # mp4v takes at most 8191 pixels per side; OpenCV only says isOpened() == False.
    wide = np.zeros((2, 2, 8192, 3), np.uint8)
    write_folder(tmp_path / 'imgs', wide)
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out', '--outputs',
                          'mp4')
    assert status == 2 and 'refuses 8192x2 frames' in err and 'no mp4v encoder' not in err, err
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == []


def test_mp4_failure_causes(tmp_path, monkeypatch):
    (tmp_path / 'depth.tmp.mp4').mkdir()
    cause = writers.mp4_failure_cause(tmp_path / 'depth.tmp.mp4', 10.0, (64, 48))
    assert 'is a directory' in cause
    assert 'frame rate' in writers.mp4_failure_cause(tmp_path / 'x.mp4', 0.0, (64, 48))
    monkeypatch.setattr(cv2.videoio_registry, 'getWriterBackends', lambda: (cv2.CAP_IMAGES,))
    assert 'no FFmpeg video writer' in writers.mp4_failure_cause(tmp_path / 'x.mp4', 10.0,
                                                                 (64, 48))


def test_mp4_frame_of_another_size_is_an_error(tmp_path):
    # VideoWriter would drop it silently.
    from dataclasses import replace

    from test_offline_writers import make_result

    first = make_result(0)
    h, w = first.disparity.shape
    # Started at an announced size that the first frame corrects (a rotated video).
    writer = writers.Mp4Writer(tmp_path, 10.0, size=(8, 6))
    writer.write(first)
    other = replace(make_result(1), disparity=np.zeros((h + 2, w), np.float32))
    with pytest.raises(InputError, match=f'started at {w}x{h}'):
        writer.write(other)
    writer.close()
    assert writers.count_video_frames(tmp_path / 'depth.mp4') == 1


def test_png_writer_checks_the_file(tmp_path, monkeypatch):
    from test_offline_writers import make_result

    def short_write(path, image):
        Path(path).write_bytes(b'\x89PNG\r\n')  # cut short, yet imwrite "succeeded"
        return True

    writer = writers.Png16Writer(tmp_path)
    monkeypatch.setattr(writers.cv2, 'imwrite', short_write)
    with pytest.raises(OSError, match='not written completely'):
        writer.write(make_result(0))
    assert not (tmp_path / 'disparity' / '000000.png').exists()


def test_npz_writer_checks_the_archive(tmp_path, monkeypatch):
    from test_offline_writers import make_result

    monkeypatch.setattr(writers.np, 'savez', lambda path, **arrays: Path(path).write_bytes(b'PK'))
    with pytest.raises(OSError, match='not written completely'):
        writers.NpzWriter(tmp_path).write(make_result(0))
    assert not (tmp_path / 'npz' / '000000.npz').exists()


def test_frames_csv_lists_only_frames_whose_files_exist(tmp_path, monkeypatch):
    write_folder(tmp_path / 'imgs', synthetic_frames(8))
    real, calls = writers.Png16Writer._write_png, []

    def full_at_frame_3(path, image):
        calls.append(path)
        if path.name == '000003.png':
            raise OSError(28, 'No space left on device', str(path))
        real(path, image)

    monkeypatch.setattr(writers.Png16Writer, '_write_png', staticmethod(full_at_frame_3))
    with pytest.raises(OSError, match='No space left') as info:
        run_pipeline(open_source(tmp_path / 'imgs'), StandInRegressor(),
                     config(tmp_path, ['npz', 'png16']))
    assert info.value.report.state == 'failed'
    rows = (tmp_path / 'out' / 'frames.csv').read_text().splitlines()[1:]
    listed = [int(r.split(',')[0]) for r in rows]
    assert listed == [0, 1, 2]
    for i in listed:
        assert (tmp_path / 'out' / 'disparity' / f'{i:06d}.png').is_file()
        assert (tmp_path / 'out' / 'npz' / f'{i:06d}.npz').is_file()


def test_bag_writer_reads_its_bag_back(tmp_path, monkeypatch):
    write_folder(tmp_path / 'imgs', synthetic_frames(3))
    real_write = writers.BagWriter._write

    def count_twice(self, conn, log_time_ns, msg):
        real_write(self, conn, log_time_ns, msg)
        self.counts[conn.topic] += 1  # claims a message the bag does not hold

    monkeypatch.setattr(writers.BagWriter, '_write', count_twice)
    with pytest.raises(OSError, match='holds 3 of the 6 messages'):
        run_pipeline(open_source(tmp_path / 'imgs'), StandInRegressor(),
                     config(tmp_path, ['bag']))


# ---------------------------------------------------------------- interrupted / failed runs


@pytest.mark.parametrize('how', ['ctrl-c', 'error'])
def test_stopped_run_keeps_valid_outputs_and_a_rerun_works(tmp_path, capsys, monkeypatch, how):
    frames = synthetic_frames(14)
    write_image_bag(tmp_path / 'in', frames)

    class Stopping(StandInRegressor):
        def predict(self, batch):
            if self.calls == 2:
                if how == 'ctrl-c':
                    raise KeyboardInterrupt
                raise InputError('the model failed')
            return super().predict(batch)

    monkeypatch.setattr(cli_offline, 'load_regressor', lambda args: Stopping())
    argv = [tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
            'bag,png16,mp4,ply-fused,npz', '--metric-a', 2, '--metric-b', 0.25,
            '--window', WINDOW, '--overlap', OVERLAP]
    status, err = run_cli(capsys, *argv)
    assert status == (130 if how == 'ctrl-c' else 2), err
    # Windows [0,5) and [3,8) ran; frames 0..5 are final (6, 7 wait for the cross-fade).
    assert ('interrupted: 6/14' if how == 'ctrl-c' else 'failed: 6/14') in err, err
    out = tmp_path / 'out'
    assert not (out / LOCK_NAME).exists()
    _, _, by_topic = read_bag(out / 'bag')
    assert len(by_topic['/cam/depth/disparity']) == 6
    cap = cv2.VideoCapture(str(out / 'depth.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    assert len((out / 'frames.csv').read_text().splitlines()) == 7
    assert not list(out.glob('*.tmp*')) and not (out / 'fused.ply.part').exists()
    # A re-run needs --overwrite, and then works.
    monkeypatch.setattr(cli_offline, 'load_regressor', lambda args: StandInRegressor())
    status, err = run_cli(capsys, *argv)
    assert status == 2 and 'already exists' in err
    status, err = run_cli(capsys, *argv, '--overwrite')
    assert status == 0 and 'done: 14/14 frames' in err, err


def test_killed_run_leftovers_do_not_block_a_rerun(tmp_path, capsys, stand_in):
    write_folder(tmp_path / 'imgs', synthetic_frames(3))
    out = tmp_path / 'out'
    out.mkdir()
    # What kill -9 leaves: a lock of a dead process and work files.
    (out / LOCK_NAME).write_text('999999999\n')
    (out / 'depth.tmp.mp4').write_bytes(b'half')
    (out / 'fused.ply.part').write_bytes(b'half')  # of an output this run does not write
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', out, '--outputs', 'mp4,png16',
                          '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 0, err
    assert sorted(p.name for p in out.iterdir()) == ['depth.mp4', 'disparity', 'frames.csv',
                                                     'fused.ply.part']


# ---------------------------------------------------------------- sources that end early


def test_video_with_a_corrupt_middle_is_incomplete(tmp_path, capsys, stand_in):
    path = write_video(tmp_path / 'clip.mp4', synthetic_frames(30, 48, 64))
    data = bytearray(path.read_bytes())
    start = len(data) * 3 // 10
    data[start:start + len(data) // 5] = bytes(len(data) // 5)
    path.write_bytes(bytes(data))
    source = open_source(path)
    assert source.listed == 30 and len(source) < 30 and 'damaged' in source.shortfall
    status, err = run_cli(capsys, path, '--out', tmp_path / 'out', '--outputs', 'png16',
                          '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 1, err
    assert f'incomplete: {len(source)}/{len(source)} frames' in err and 'done:' not in err
    assert 'lists 30 frames but decoding stopped' in err


def test_bag_promising_more_messages_is_incomplete(tmp_path, capsys, stand_in):
    write_image_bag(tmp_path / 'in', synthetic_frames(8), storage='sqlite3')
    meta = tmp_path / 'in' / 'metadata.yaml'
    text = meta.read_text()
    needle = '- message_count: 8\n    topic_metadata:\n      name: /cam/image_raw'
    assert needle in text
    meta.write_text(text.replace(needle, needle.replace('8', '11', 1)))
    assert len(open_source(tmp_path / 'in')) == 11
    status, err = run_cli(capsys, tmp_path / 'in', '--out', tmp_path / 'out', '--outputs',
                          'png16,bag', '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 1, err
    assert 'incomplete: ' in err and 'done:' not in err
    assert 'yielded 8 of the 11 messages' in err
    _, _, by_topic = read_bag(tmp_path / 'out' / 'bag')  # closed and readable
    written = len(by_topic['/cam/depth/disparity'])
    assert 0 < written < 11
    assert len((tmp_path / 'out' / 'frames.csv').read_text().splitlines()) == written + 1


def test_source_ended_early_is_an_input_error():
    assert issubclass(SourceEndedEarly, InputError)


# ---------------------------------------------------------------- non-regular inputs


def _finishes(fn, seconds=10):
    """Run `fn` in a thread; return its exception (a hang fails the test instead of blocking)."""
    box = []

    def target():
        try:
            fn()
        except BaseException as exc:  # returned to the test
            box.append(exc)
        else:
            box.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f'{fn} hung (a FIFO or device was opened)'
    return box[0]


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs FIFOs')
def test_fifo_input_is_refused_without_hanging(tmp_path, capsys, stand_in):
    fifo = tmp_path / 'clip.mp4'
    os.mkfifo(fifo)
    exc = _finishes(lambda: open_source(fifo))
    assert isinstance(exc, InputError) and 'is a FIFO (named pipe), not a regular file' in str(exc)
    status, err = run_cli(capsys, fifo, '--out', tmp_path / 'out')
    assert status == 2 and 'FIFO' in err


def test_device_input_is_refused(tmp_path):
    if not os.path.exists('/dev/zero'):
        pytest.skip('needs /dev/zero')
    exc = _finishes(lambda: open_source('/dev/zero'))
    assert isinstance(exc, InputError) and 'character device' in str(exc)


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs FIFOs')
def test_fifo_or_folder_named_like_an_image_is_refused(tmp_path):
    folder = write_folder(tmp_path / 'imgs', synthetic_frames(2))
    os.mkfifo(folder / 'frame_0002.png')
    exc = _finishes(lambda: FolderSource(folder))
    assert isinstance(exc, InputError) and 'frame_0002.png is a FIFO' in str(exc)
    os.unlink(folder / 'frame_0002.png')
    (folder / 'frame_0002.png').mkdir()
    with pytest.raises(InputError, match='frame_0002.png is a directory'):
        FolderSource(folder)


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs FIFOs')
def test_fifo_swapped_in_after_listing_is_refused(tmp_path):
    folder = write_folder(tmp_path / 'imgs', synthetic_frames(2))
    source = FolderSource(folder)
    os.unlink(folder / 'frame_0001.png')
    os.mkfifo(folder / 'frame_0001.png')
    exc = _finishes(lambda: list(source))
    assert isinstance(exc, InputError) and 'FIFO' in str(exc)


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='needs FIFOs')
def test_fifo_in_a_bag_folder_is_refused(tmp_path):
    write_image_bag(tmp_path / 'bag', synthetic_frames(2))
    mcap = next((tmp_path / 'bag').glob('*.mcap'))
    os.unlink(mcap)
    os.mkfifo(mcap)
    exc = _finishes(lambda: open_source(tmp_path / 'bag'))
    assert isinstance(exc, InputError) and 'FIFO' in str(exc)
    os.unlink(mcap)
    os.unlink(tmp_path / 'bag' / 'metadata.yaml')
    os.mkfifo(tmp_path / 'bag' / 'metadata.yaml')
    exc = _finishes(lambda: open_source(tmp_path / 'bag'))
    assert isinstance(exc, InputError) and 'metadata' in str(exc) and 'FIFO' in str(exc)


# ---------------------------------------------------------------- pixel cap (decompression bombs)


def _png_claiming(width, height):
    """Return a PNG whose header claims `width` x `height` with one tiny (invalid) data chunk."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(b'\0' * 64))
            + chunk(b'IEND', b''))


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('decoded before the pixel cap was checked')

    monkeypatch.setattr(sources.cv2, 'imdecode', refuse)
    monkeypatch.setattr(sources.cv2, 'imread', refuse)


def test_decompression_bomb_in_a_folder_is_refused_before_decoding(tmp_path, monkeypatch):
    folder = tmp_path / 'imgs'
    folder.mkdir()
    (folder / 'frame_0000.png').write_bytes(_png_claiming(60000, 60000))
    _no_decoding(monkeypatch)
    with pytest.raises(InputError) as info:
        FolderSource(folder)
    message = str(info.value)
    assert '60000x60000 = 3600000000 pixels' in message
    assert f'limit of {DEFAULT_MAX_PIXELS} pixels' in message
    assert '--max-pixels 3600000000' in message


def test_pixel_cap_is_checked_again_when_reading(tmp_path, monkeypatch):
    folder = write_folder(tmp_path / 'imgs', synthetic_frames(2))
    source = FolderSource(folder, max_pixels=10_000)
    (folder / 'frame_0001.png').write_bytes(_png_claiming(20000, 20000))  # swapped meanwhile
    frames = iter(source)
    next(frames)
    _no_decoding(monkeypatch)
    with pytest.raises(InputError, match='above the limit of 10000 pixels'):
        next(frames)


def test_compressed_bag_image_bomb_is_refused_before_decoding(monkeypatch):
    from test_offline_sources import TS

    msg = TS.types['sensor_msgs/msg/CompressedImage'](
        header=TS.types['std_msgs/msg/Header'](
            stamp=TS.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='c'),
        format='png', data=np.frombuffer(_png_claiming(50000, 50000), np.uint8))
    _no_decoding(monkeypatch)
    with pytest.raises(InputError, match='50000x50000 = 2500000000 pixels'):
        compressed_msg_to_rgb(msg)


def test_video_and_raw_image_sizes_are_capped(tmp_path):
    from test_offline_sources import image_msg

    path = write_video(tmp_path / 'clip.mp4', synthetic_frames(3, 48, 64))
    with pytest.raises(InputError, match='64x48 = 3072 pixels, above the limit of 3000'):
        open_source(path, max_pixels=3000)
    assert len(open_source(path, max_pixels=3072)) == 3
    with pytest.raises(InputError, match='above the limit of 100 pixels'):
        sources.image_msg_to_rgb(image_msg(synthetic_frames(1)[0], 0), max_pixels=100)


def test_cli_max_pixels_option(tmp_path, capsys, stand_in):
    write_folder(tmp_path / 'imgs', synthetic_frames(3))  # 32x24 = 768 pixels
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out',
                          '--max-pixels', 500)
    assert status == 2 and 'pass --max-pixels 768' in err, err
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').iterdir())
    status, err = run_cli(capsys, tmp_path / 'imgs', '--out', tmp_path / 'out',
                          '--max-pixels', 768, '--window', WINDOW, '--overlap', OVERLAP)
    assert status == 0, err


def test_scratch_and_output_names_are_disjoint():
    finals = {n for names in outputs.OUTPUT_NAMES.values() for n in names}
    scratch = {n for names in outputs.SCRATCH_NAMES.values() for n in names}
    assert not finals & scratch and LOCK_NAME not in finals | scratch
    assert set(outputs.OUTPUT_NAMES) == {'frames', *writers.OUTPUT_KINDS}
