"""Liveness of the depth node: loading in the worker, idle flush, honest /diagnostics.

A failed load ends the process with status 2; /diagnostics is ERROR/WARN when frames are lost.
"""

import signal
import threading
import time

import pytest

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_harness import make_context, overrides, wait_for  # noqa: E402
from test_depth_node import WINDOW, Rig, _diagnostics, _key, _send_all  # noqa: E402

from dvd_ros.errors import WeightsError  # noqa: E402
from dvd_ros.ros import depth_node  # noqa: E402
from dvd_ros.ros.stand_in import StandInRegressor  # noqa: E402


@pytest.fixture(scope='module')
def context():
    ctx = make_context()
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def rigs(context):
    made = []

    def make(**kwargs):
        rig = Rig(context, **kwargs)
        made.append(rig)
        return rig
    yield make
    for rig in made:
        rig.close()


def _level(rig):
    with rig.probe.lock:
        msgs = [m for m in rig.probe.received['/diagnostics']
                if m.status and m.status[0].name == rig.node.get_fully_qualified_name()]
    return (msgs[-1].status[0].level, msgs[-1].status[0].message) if msgs else (None, '')


def test_idle_stream_is_flushed(rigs):
    """19 frames, window 5 / overlap 2: 17 come out of full windows, the last 2 on idle."""
    rig = rigs(flush_timeout=0.3)
    headers = _send_all(rig, 19)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 19, timeout=10), \
        rig.probe.count('depth/disparity')
    got = rig.probe.by_stamp('depth/disparity')
    assert [_key(h) in got for h in headers] == [True] * 19
    assert wait_for(lambda: _diagnostics(rig).get('frames out') == '19', timeout=5)
    assert _diagnostics(rig)['frames dropped'] == '0'
    # The next frames start a new stream: they are published too (after their own window).
    more = [rig.send(100 + i) for i in range(WINDOW)]
    assert wait_for(lambda: all(_key(h) in rig.probe.by_stamp('depth/disparity')
                                for h in more), timeout=10)


def test_without_flush_the_tail_waits(rigs):
    rig = rigs(flush_timeout=0.0)
    _send_all(rig, 7)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= WINDOW)
    # The last two are held for the next window; nothing flushes them.
    assert wait_for(lambda: rig.node._stream.stats.pending == 2)
    time.sleep(0.5)
    assert rig.probe.count('depth/disparity') == WINDOW
    rig.node.set_parameters([Parameter('flush_timeout', value=0.2)])
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 7)


def test_unsupported_encoding_is_an_error_on_diagnostics(rigs):
    rig = rigs()
    _send_all(rig, 6, encoding='not_an_encoding')
    assert wait_for(lambda: _level(rig)[0] == DiagnosticStatus.ERROR, timeout=5), \
        _level(rig)
    level, message = _level(rig)
    assert 'none published' in message and 'frames out' in _diagnostics(rig)
    assert _diagnostics(rig)['frames out'] == '0'


def test_model_loads_in_the_worker(context, monkeypatch):
    """The constructor returns at once; diagnostics say loading; frames wait; services answer."""
    from rcl_interfaces.srv import GetParameters
    from rclpy.executors import SingleThreadedExecutor

    release = threading.Event()

    def slow_build(params):
        release.wait(30)
        return StandInRegressor()

    monkeypatch.setattr(depth_node, 'build_regressor', slow_build)
    rig = Rig(context, regressor=None, backend='torch', flush_timeout=0.3)
    try:
        assert rig.node.regressor is None and not rig.node.wait_ready(0)
        assert wait_for(lambda: 'loading the model' in _level(rig)[1], timeout=5), _level(rig)
        assert _diagnostics(rig)['window / overlap'] == 'from the weights (loading)'
        # The node's parameter service answers while the model loads.
        client_node = Node('asker', context=context)
        client = client_node.create_client(
            GetParameters, rig.node.get_fully_qualified_name() + '/get_parameters')
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(client_node)
        assert client.wait_for_service(timeout_sec=5)
        future = client.call_async(GetParameters.Request(names=['window']))
        executor.spin_until_future_complete(future, timeout_sec=5)
        assert future.result().values[0].integer_value == WINDOW
        client_node.destroy_node()
        headers = _send_all(rig, WINDOW)  # queued while loading
        time.sleep(0.2)
        assert rig.probe.count('depth/disparity') == 0
        release.set()
        assert rig.node.wait_ready(10)
        assert wait_for(lambda: all(_key(h) in rig.probe.by_stamp('depth/disparity')
                                    for h in headers), timeout=10)
        assert rig.node.window == (WINDOW, 2)
    finally:
        release.set()
        rig.close()


def test_load_failure_ends_the_node_with_status_2(monkeypatch, capsys):
    from dvd_ros.ros.shutdown import run_node

    def broken(params):
        raise WeightsError('no DVD weights at /nope: run `dvd-ros weights` for where to get '
                           'them')

    monkeypatch.setattr(depth_node, 'build_regressor', broken)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = run_node(lambda context: depth_node.DepthNode(
            context=context, parameter_overrides=overrides(backend='torch')), 'depth_node',
            ['depth_node'])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    err = capsys.readouterr().err
    assert status == 2
    assert 'depth_node: error: no DVD weights at /nope' in err
