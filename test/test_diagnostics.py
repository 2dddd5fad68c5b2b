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
                 more_dropped={'model_error': 2}, now=1.0)
    values = {kv.key: kv.value for kv in msg.values}
    assert msg.level == DiagnosticStatus.OK and '5 frames dropped' in msg.message
    assert values['dropped: queue_full'] == '3' and values['dropped: model_error'] == '2'
    assert values['frames dropped'] == '5' and values['queue'] == '2/8'
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
