"""The merged depth node as a whole: its threads, start-up, shutdown and frame accounting.

The worker (loads the model, feeds the pipeline), the pipeline's model and finishing threads,
the compressed-image decoder and the executor share the node; these tests look at what they
share: every frame published or counted as dropped, no thread left after stop, a load that
fails or is stopped half-way, diagnostics read while the worker changes the state.
"""

import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from ros_harness import camera_info, frame, header, image_msg, wait_for  # noqa: E402
from test_depth_node import WINDOW, Rig, _diagnostics, _key, _send_all  # noqa: E402
from test_node_inputs import Cam, _feed, _png  # noqa: E402

from dvd_ros.errors import WeightsError  # noqa: E402
from dvd_ros.ros import depth_node, messages  # noqa: E402
from dvd_ros.ros.stand_in import StandInRegressor  # noqa: E402


@pytest.fixture(scope='module')
def context():
    from ros_harness import make_context
    ctx = make_context()
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def made(context):
    """Close every Rig / Cam a test made, also when it fails."""
    rigs = []
    yield rigs
    for rig in rigs:
        rig.close()


def _threads():
    return {t for t in threading.enumerate() if t.is_alive()}


def _account(node):
    """Return (frames in, out, dropped, pending) as the node counts them."""
    stream = node._stream.stats
    with node.stats.lock:
        frames_in = node.stats.input_rate.total
        out = node.stats.output_rate.total
        dropped = sum(node.stats.dropped.values())
    with node._lock:
        waiting = node._sync.pending
    pending = node.queue_length + stream.pending + waiting
    return frames_in, out, dropped + stream.dropped_total, pending


# ----------------------------------------------------------------------- idle flush, every frame


@pytest.mark.parametrize('params', [{}, {'overlap_mode': 'auto'}], ids=['fixed', 'auto'])
def test_idle_flush_publishes_all_19_frames(context, made, params):
    rig = Rig(context, flush_timeout=0.3, **params)
    made.append(rig)
    headers = _send_all(rig, 19)
    assert wait_for(lambda: all(_key(h) in rig.probe.by_stamp('depth/disparity')
                                for h in headers), timeout=10), rig.probe.count('depth/disparity')
    assert wait_for(lambda: _account(rig.node) == (19, 19, 0, 0)), _account(rig.node)


def test_idle_flush_publishes_all_19_compressed_frames(context, made):
    c = Cam(context, image_transport='compressed', flush_timeout=0.3)
    made.append(c)
    headers = _feed(c, 19, image=lambda i, h: ('/image/compressed', _png(frame(i), h)))
    assert wait_for(lambda: all(_key(h) in c.probe.by_stamp('depth/disparity')
                                for h in headers), timeout=10), c.probe.count('depth/disparity')
    assert wait_for(lambda: _account(c.node) == (19, 19, 0, 0)), _account(c.node)


class NanSecondWindow(StandInRegressor):
    """The stand-in, slow, with its second window all NaN (rejected by the output guard)."""

    def predict(self, frames):
        out = super().predict(frames)
        if self.calls == 2:
            out[:] = np.nan
        return out


def _inject(node, index, rgb=None, **hdr):
    """Hand one image and its CameraInfo to the node's callbacks (no DDS: none is lost)."""
    hdr = header(index, **hdr)
    rgb = frame(index) if rgb is None else rgb
    node._on_info(camera_info(hdr, rgb.shape[1], rgb.shape[0]))
    node._on_image(image_msg(rgb, hdr))


def test_every_frame_published_or_dropped(context, made):
    """NaN window, resolution change, time jump and a full queue: in = out + dropped."""
    rig = Rig(context, regressor=NanSecondWindow(delay=0.15), queue_size=3, flush_timeout=0.3,
              diagnostics_period=0.1)
    made.append(rig)
    node = rig.node
    t0 = 20_000_000_000
    for i in range(10):  # two windows, the second one NaN
        _inject(node, i, t0=t0)
        time.sleep(0.03)
    for i in range(10, 17):  # the size changes: the stream restarts
        _inject(node, i, rgb=frame(i, 48, 64), t0=t0)
        time.sleep(0.03)
    for i in range(12):  # back in time (a bag loop), faster than the model: the queue overflows
        _inject(node, i, t0=t0 // 4)
        time.sleep(0.01)
    sent = 10 + 7 + 12
    assert wait_for(lambda: (lambda a: a[3] == 0 and a[0] == a[1] + a[2])(_account(node)),
                    timeout=20), _account(node)
    frames_in, out, dropped, _ = _account(node)
    assert frames_in == sent and out > 0
    assert node._stream.stats.dropped.get('model_error', 0) >= 3
    assert node.stats.dropped['queue_full'] > 0
    # /diagnostics tells the same totals.
    assert wait_for(lambda: _diagnostics(rig).get('frames out') == str(out), timeout=5)
    assert _diagnostics(rig)['frames in'] == str(sent)
    assert _diagnostics(rig)['frames dropped'] == str(dropped)


# ----------------------------------------------------------------------- start-up and shutdown


@pytest.mark.parametrize('compressed', [False, True], ids=['raw', 'compressed'])
def test_stop_leaves_no_thread(context, compressed):
    before = _threads()
    if compressed:
        rig = Cam(context, image_transport='compressed', overlap_mode='auto')
    else:
        rig = Rig(context)
    try:
        if compressed:
            _feed(rig, WINDOW + 1, image=lambda i, h: ('/image/compressed', _png(frame(i), h)))
        else:
            _send_all(rig, WINDOW + 1)
        assert wait_for(lambda: rig.probe.count('depth/disparity') >= WINDOW)
        # The worker, the model and finishing threads (and the decoder), the spinner.
        assert len(_threads() - before) >= 4 + compressed
    finally:
        rig.close()
    assert rig.node.stop() and not rig.node.worker_alive
    assert wait_for(lambda: not (_threads() - before), timeout=5), _threads() - before


def test_destroy_node_twice(context):
    rig = Rig(context)
    rig.close()
    rig.node.destroy_node()  # a second destroy (a launch and a finally both cleaning up)
    assert not rig.node.worker_alive and not rig.node._pipeline.alive


def _slow_build(monkeypatch):
    release = threading.Event()

    def slow_build(params):
        release.wait(30)
        return StandInRegressor()
    monkeypatch.setattr(depth_node, 'build_regressor', slow_build)
    return release


def test_stop_while_loading_leaves_no_thread(context, monkeypatch):
    release = _slow_build(monkeypatch)
    before = _threads()
    rig = Rig(context, backend='torch')
    try:
        _send_all(rig, 3)  # queued while loading
        assert wait_for(lambda: rig.node.queue_length == 3, timeout=5)
    finally:
        rig.close()  # the load is still going on: stop cannot end the worker yet
        release.set()
    # The load ends after the stop: the worker neither feeds the pipeline it made nor leaves
    # its threads running.
    assert wait_for(lambda: not (_threads() - before), timeout=5), _threads() - before
    assert rig.node.stop()
    assert rig.probe.count('depth/disparity') == 0


def test_wait_ready_answers_after_a_load_failure(context, monkeypatch):
    def broken(params):
        raise WeightsError('no DVD weights at /nope')
    monkeypatch.setattr(depth_node, 'build_regressor', broken)
    rig = Rig(context, backend='torch')
    try:
        assert wait_for(lambda: rig.node.fatal_error is not None, timeout=5)
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(rig.node.wait_ready()),
                                  daemon=True)
        waiter.start()
        waiter.join(10)  # wait_ready() without a timeout must not wait forever
        assert answers == [False]
        assert not rig.node.worker_alive
    finally:
        rig.close()


def test_loading_is_ok_on_diagnostics_also_with_metric_mode_none(context, monkeypatch):
    release = _slow_build(monkeypatch)
    rig = Rig(context, backend='torch', metric_mode='none', namespace='loading_none')
    try:
        def status():
            with rig.probe.lock:
                msgs = [m.status[0] for m in rig.probe.received['/diagnostics'] if m.status
                        and m.status[0].name == rig.node.get_fully_qualified_name()]
            return msgs[-1] if msgs else None
        assert wait_for(lambda: status() is not None, timeout=5)
        loading = status()
        assert (loading.level, loading.message) == (
            DiagnosticStatus.OK, 'loading the model (input frames queue meanwhile)')
        assert {kv.key: kv.value for kv in loading.values}['depth/points'].startswith(
            'metric_mode is none')
        release.set()
        assert rig.node.wait_ready(10)
        _send_all(rig, WINDOW)
        assert wait_for(lambda: status().level == DiagnosticStatus.WARN
                        and status().message.startswith('metric_mode is none'), timeout=5)
    finally:
        release.set()
        rig.close()


# ----------------------------------------------------------------------- shared state


def test_diagnostics_while_the_worker_resets_the_fit(context, made):
    """A restart clears the anchored fit on the worker while the executor reports it."""
    rig = Rig(context, metric_mode='anchored', hint_type='image')
    made.append(rig)
    node = rig.node

    class Fit:
        residual, inlier_fraction, n = 0.01, 1.0, 100
        b = 0.5

        @property
        def a(self):
            node._fit = None  # the worker's _restart_stream, between two reads
            return 2.0
    node._fit = Fit()
    node._publish_diagnostics()  # must not raise (an exception here ends the executor)


def test_frames_keep_their_order_when_two_threads_release_them(context, made, monkeypatch):
    """The decoder thread and the executor both take pairs from the sync into the queue."""
    rig = Rig(context, sync_timeout=5.0)
    made.append(rig)
    node = rig.node
    order = []
    monkeypatch.setattr(node, '_process', lambda record: order.append(record.header.stamp.sec))
    ha, hb = header(0, t0=7_000_000_000), header(0, t0=8_000_000_000)
    x_inside, b_queued = threading.Event(), threading.Event()
    rectified = node._rectified

    def slow_rectified(item, info):
        if item[0].stamp.sec == ha.stamp.sec:
            x_inside.set()
            b_queued.wait(2.0)  # the executor, slowed down (GIL, a remap) after the release
        return rectified(item, info)
    monkeypatch.setattr(node, '_rectified', slow_rectified)
    node._decoded((image_msg(frame(0), ha), time.monotonic()))  # waits for its CameraInfo
    executor = threading.Thread(target=node._on_info, args=(camera_info(ha),), daemon=True)
    executor.start()  # releases image A
    assert x_inside.wait(5)
    node._on_info(camera_info(hb))
    node._decoded((image_msg(frame(1), hb), time.monotonic()))  # released with its CameraInfo
    b_queued.set()
    executor.join(5)
    assert wait_for(lambda: len(order) == 2, timeout=5), order
    assert order == [ha.stamp.sec, hb.stamp.sec]


def test_a_failing_metric_fit_loses_no_frame(context, made, monkeypatch):
    """Anchored mode: an unexpected error fitting the hints still publishes the window."""
    rig = Rig(context, metric_mode='anchored', hint_type='image', flush_timeout=0.3)
    made.append(rig)

    def broken(frame, hint, p):
        raise IndexError('simulated bug in the hint sampling')
    monkeypatch.setattr(rig.node, '_hint_samples', broken)
    for i in range(WINDOW + 2):
        depth = np.full((24, 32), 2.0, np.float32)
        rig.node._on_hint(messages.array_to_image(depth, '32FC1', header(i)))
        _inject(rig.node, i)
        time.sleep(0.01)
    assert wait_for(lambda: _account(rig.node) == (WINDOW + 2, WINDOW + 2, 0, 0)), \
        _account(rig.node)
    assert len(rig.warnings_about('simulated bug in the hint sampling')) == 1


def _finish_fails_once(node):
    """Make the stream's finishing side raise on its first window (an internal bug)."""
    stream = node._stream
    finish = stream.finish
    failed = []

    def once(step):
        if not failed and hasattr(step, 'raw'):
            failed.append(step)
            raise KeyError('simulated bug in the alignment')
        return finish(step)
    stream.finish = once
    return failed


def test_idle_flush_runs_once_per_pause(context, made):
    """Frames the stream lost count stay pending: the idle flush must not loop on them."""
    rig = Rig(context, flush_timeout=0.2)
    made.append(rig)
    failed = _finish_fails_once(rig.node)
    flushes = []
    flush_idle = rig.node._flush_idle
    rig.node._flush_idle = lambda: flushes.append(1) or flush_idle()
    _send_all(rig, WINDOW + 3)
    assert wait_for(lambda: failed and flushes, timeout=10)
    time.sleep(1.0)  # five flush timeouts without a frame
    assert len(flushes) == 1
    # The next pause flushes again.
    _send_all(rig, 2, t0=5_000_000_000)
    assert wait_for(lambda: len(flushes) == 2, timeout=10)


def test_a_busy_model_is_not_an_idle_camera(context, made):
    """A window longer than flush_timeout with frames held behind it: no flush mid-stream.

    A camera paced by the node's output (the demo's) sends nothing while the model runs; the
    pause counts from the last window out, not from the last frame in.
    """
    rig = Rig(context, StandInRegressor(delay=0.8), flush_timeout=0.3)
    made.append(rig)
    flushes = []
    flush_idle = rig.node._flush_idle
    rig.node._flush_idle = lambda: flushes.append(rig.node._stream.stats.windows) or flush_idle()
    _send_all(rig, WINDOW + 1)  # one window to run, one frame held for the next
    assert wait_for(lambda: flushes, timeout=10)
    # The only flush came after the model's windows were out (it ran at least the first one).
    assert flushes[0] >= 1 and len(flushes) == 1
    assert wait_for(lambda: rig.probe.count('depth/disparity') == WINDOW + 1, timeout=10)


def test_drops_while_loading_do_not_warn_once_loaded(context, monkeypatch):
    """The queue overflows while the model loads; the running node's level starts afresh."""
    release = _slow_build(monkeypatch)
    rig = Rig(context, backend='torch', queue_size=3, namespace='drops_loading',
              diagnostics_period=0.1)
    try:
        for i in range(12):
            _inject(rig.node, i)
        assert rig.node.stats.dropped['queue_full'] == 9
        release.set()
        assert rig.node.wait_ready(10)
        with rig.probe.lock:
            seen = len(rig.probe.received['/diagnostics'])
        for i in range(WINDOW):
            _inject(rig.node, i, t0=9_000_000_000)
            time.sleep(0.01)
        assert wait_for(lambda: _diagnostics(rig).get('frames out') == str(3 + WINDOW))
        with rig.probe.lock:
            after = [m.status[0] for m in rig.probe.received['/diagnostics'][seen:]]
        running = [s for s in after if not s.message.startswith('loading')]
        assert running and all(s.level == DiagnosticStatus.OK for s in running), \
            [(s.level, s.message) for s in running]
        assert running[-1].message == 'running; 9 frames dropped (queue_full)'
    finally:
        release.set()
        rig.close()


def test_diagnostics_after_a_load_failure_do_not_say_loading(context, monkeypatch):
    def broken(params):
        raise WeightsError('no DVD weights at /nope')
    monkeypatch.setattr(depth_node, 'build_regressor', broken)
    rig = Rig(context, backend='torch', namespace='load_failed')
    try:
        assert wait_for(lambda: _diagnostics(rig).get('window / overlap', '').startswith('n/a'),
                        timeout=5), _diagnostics(rig)
        values = _diagnostics(rig)
        assert not [k for k, v in values.items() if 'loading' in str(v)], values
        assert values['overlap mode'] == 'n/a (the model failed to load)'
    finally:
        rig.close()


def test_hints_outlive_every_frame_the_pipeline_holds(context, made):
    # The queue, the pipeline's input slots, a window in the model and one being finished: a
    # hint must still be there when the finishing side publishes the oldest of them.
    rig = Rig(context, metric_mode='anchored', queue_size=7, window=41)
    made.append(rig)
    window = rig.node._stream.window
    held = 7 + depth_node.PIPELINE_INPUT + 2 * window
    assert held > depth_node.HINT_CAPACITY  # else the floor alone would pass
    assert rig.node._hints.capacity >= held
    assert rig.node._remapped.capacity >= held
