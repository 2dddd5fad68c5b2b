"""Rates, recent values and the DiagnosticStatus of the depth node."""

from diagnostic_msgs.msg import DiagnosticStatus

from dvd_ros.ros.diagnostics import NodeStats, RateMeter, Recent, status


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_rate_meter_window_and_bound():
    clock = Clock()
    meter = RateMeter(horizon_s=2.0, capacity=100, clock=clock)
    for i in range(21):
        clock.t = i * 0.1  # 10 Hz for 2 s
        meter.tick()
    assert abs(meter.rate() - 10.0) < 1e-6
    clock.t = 10.0
    assert meter.rate() == 0.0 and meter.total == 21
    for _ in range(1000):
        meter.tick()
    assert len(meter._times) == 100  # bounded memory


def test_recent():
    values = Recent(capacity=3)
    for v in (1, 2, 3, 10):
        values.add(v)
    assert (values.last, values.max, values.mean) == (10.0, 10.0, 5.0)
    assert len(values) == 3


def test_status_levels_and_keys():
    clock = Clock()
    stats = NodeStats(clock=clock)
    msg = status('/cam/depth_node', 'cam', stats, {'backend': 'stand-in'}, 0, 8)
    assert msg.level == DiagnosticStatus.WARN and 'no input' in msg.message
    for i in range(10):
        clock.t = i * 0.1
        stats.input_rate.tick()
        stats.output_rate.tick()
    stats.drop('queue_full', 3)
    msg = status('/cam/depth_node', 'cam', stats, {'backend': 'stand-in'}, 2, 8,
                 more_dropped={'model_error': 1}, now=1.0)
    values = {kv.key: kv.value for kv in msg.values}
    assert msg.level == DiagnosticStatus.OK and '4 frames dropped' in msg.message
    assert values['dropped: queue_full'] == '3' and values['dropped: model_error'] == '1'
    assert values['frames dropped'] == '4' and values['queue'] == '2/8'
    assert values['backend'] == 'stand-in' and float(values['input rate (Hz)']) == 9.0


def test_causes_without_frames_are_not_drops():
    clock = Clock()
    stats = NodeStats(clock=clock)
    for i in range(10):
        clock.t = i * 0.1
        stats.input_rate.tick()
    stats.drop('time_jump', 0)  # the node counts the images pending at a jump: maybe none
    msg = status('/cam/depth_node', 'cam', stats, {}, 0, 8, more_dropped={'reset': 0}, now=1.0)
    values = {kv.key: kv.value for kv in msg.values}
    assert msg.message == 'running' and values['frames dropped'] == '0'
    assert not [key for key in values if key.startswith('dropped:')]


def _feed(stats, clock, start, n, period=0.1, out=True):
    for i in range(n):
        clock.t = start + i * period
        stats.input_rate.tick()
        if out:
            stats.output_rate.tick()


def test_every_frame_dropped_is_an_error():
    """An unsupported encoding: frames in, none out, all dropped -> ERROR, never OK."""
    clock = Clock()
    stats = NodeStats(clock=clock)
    _feed(stats, clock, 0.0, 19, out=False)
    stats.drop('unsupported_encoding', 19)
    msg = status('/cam/depth_node', 'cam', stats, {}, 0, 8)
    values = {kv.key: kv.value for kv in msg.values}
    assert msg.level == DiagnosticStatus.ERROR, msg.message
    assert 'none published' in msg.message and 'unsupported_encoding' in msg.message
    assert values['frames out'] == '0'


def test_high_recent_drop_rate_warns_then_recovers():
    clock = Clock()
    stats = NodeStats(clock=clock)
    # 10 s fine (a few drops long ago) ...
    _feed(stats, clock, 0.0, 100)
    stats.drop('queue_full', 5)
    assert status('n', 'cam', stats, {}, 0, 8).level == DiagnosticStatus.OK
    # ... then the model falls behind: 30 of the next 50 frames dropped.
    clock.t = 10.0
    assert status('n', 'cam', stats, {}, 0, 8).level == DiagnosticStatus.OK
    _feed(stats, clock, 10.1, 50, out=False)
    stats.drop('queue_full', 30)
    msg = status('n', 'cam', stats, {}, 8, 8)
    assert msg.level == DiagnosticStatus.WARN and '30 of 50 frames' in msg.message, msg.message
    # A horizon later without new drops: OK again (the old drops are only counted).
    _feed(stats, clock, 15.1, 60)
    msg = status('n', 'cam', stats, {}, 0, 8)
    assert msg.level == DiagnosticStatus.OK and '35 frames dropped' in msg.message


def test_loading_and_failure_states():
    clock = Clock()
    stats = NodeStats(clock=clock)
    msg = status('n', 'cam', stats, {}, 3, 8, loading=True)
    assert msg.level == DiagnosticStatus.OK and 'loading the model' in msg.message
    msg = status('n', 'cam', stats, {}, 0, 8, error='model failed to load: no such file')
    assert msg.level == DiagnosticStatus.ERROR and 'no such file' in msg.message
