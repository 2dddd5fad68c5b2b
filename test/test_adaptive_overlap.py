"""Throughput-adaptive overlap (``overlap_mode='auto'``), on a simulated clock.

A camera delivers frame ``i`` at ``i / rate`` seconds; one consumer pushes frames from a
drop-oldest queue into the stream, and the model's time advances the clock by ``delay`` per
window. No real time is measured: every figure below is exact.
"""

from collections import deque
import math

import numpy as np
import pytest
from test_estimator import Oracle, drift_and_seams, frame

from dvd_ros.errors import InputError
from dvd_ros.stream.adaptive import OverlapController
from dvd_ros.stream.estimator import StreamingDepth

WINDOW = 13


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class TimedOracle(Oracle):
    """The oracle, taking ``delay(call number)`` seconds of the simulated clock per window."""

    def __init__(self, clock, delay, seed=0, **kwargs):
        super().__init__(seed, **kwargs)
        self.clock, self.delay = clock, delay

    def predict(self, frames):
        self.clock.t += self.delay(len(self.calls)) if callable(self.delay) else self.delay
        return super().predict(frames)


def simulate(rate, delay, n, capacity=32, window=WINDOW, seed=0, **options):
    """Stream ``n`` frames at ``rate`` Hz; return (stream, outputs, dropped, model calls)."""
    clock = Clock()
    oracle = TimedOracle(clock, delay, seed)
    options.setdefault('overlap', 4)
    sd = StreamingDepth(oracle, window, clock=clock, **options)
    queue, out, dropped, i = deque(), [], 0, 0
    while i < n or queue:
        while i < n and i / rate <= clock.t:
            queue.append(i)
            i += 1
            if len(queue) > capacity:
                queue.popleft()
                dropped += 1
        if not queue:
            clock.t = i / rate
            continue
        j = queue.popleft()
        out += sd.push(frame(j), j, arrival=j / rate)
    out += sd.flush()
    return sd, out, dropped, oracle.calls


def overlaps(calls):
    """Return the overlap of every window after the first (frames shared with the previous)."""
    return [len(set(a) & set(b)) for a, b in zip(calls, calls[1:])]


def expected_overlap(rate, delay, overlap_min=1, margin=1.25, window=WINDOW):
    hop = math.ceil(rate * delay * margin - 1e-9)
    return min(window - 1, max(overlap_min, window - hop))


@pytest.mark.parametrize('rate', [10.0, 30.0, 45.0])
def test_converges_to_the_largest_sustainable_overlap(rate):
    delay = 0.2
    sd, out, dropped, calls = simulate(rate, delay, 300, overlap_mode='auto')
    want = expected_overlap(rate, delay)
    chosen = overlaps(calls)[:-1]  # the last one is the flush's re-anchored window
    # From the second chosen window on (the first may still see the start-up backlog).
    assert chosen[1:] == [want] * (len(chosen) - 1)
    assert chosen[0] == want
    assert sd.stats.overlap == want
    # More overlap at a slow camera, less at a fast one; always keeps up.
    assert (want, rate) in {(10, 10.0), (5, 30.0), (1, 45.0)}
    assert dropped == 0


@pytest.mark.parametrize('rate', [10.0, 20.0, 30.0, 40.0, 47.0])
def test_never_drops_at_a_sustainable_rate(rate):
    # Sustainable: the smallest overlap (1) gives 12 frames per 0.2 s = 60 frames/s, and
    # the margin asks for 1.25x the input rate.
    sd, out, dropped, _ = simulate(rate, 0.2, 400, capacity=16, overlap_mode='auto')
    assert dropped == 0
    assert [f.stamp for f in out] == list(range(400))
    st = sd.stats
    assert (st.pushed, st.emitted, st.dropped_total, st.pending) == (400, 400, 0, 0)


def test_a_fixed_overlap_drops_where_auto_keeps_up():
    # The same camera and model: the fixed default overlap cannot keep up.
    _, _, fixed_dropped, _ = simulate(40.0, 0.2, 400, capacity=16, overlap=6)
    _, _, auto_dropped, _ = simulate(40.0, 0.2, 400, capacity=16, overlap=6,
                                     overlap_mode='auto')
    assert fixed_dropped > 20 and auto_dropped == 0  # 7 frames per 0.2 s = 35 frames/s


def test_follows_a_change_of_model_time():
    # The model slows down 3x from window 20 on, then speeds up again from window 40.
    def delay(call):
        return 0.3 if 20 <= call < 40 else 0.1

    sd, out, dropped, calls = simulate(30.0, delay, 900, overlap_mode='auto')
    chosen = overlaps(calls)
    fast, slow = expected_overlap(30.0, 0.1), expected_overlap(30.0, 0.3)
    assert (fast, slow) == (9, 1)
    assert chosen[10:19] == [fast] * 9
    assert chosen[30:39] == [slow] * 9
    assert chosen[50:59] == [fast] * 9
    assert [f.stamp for f in out] == sorted(f.stamp for f in out)
    assert sd.stats.dropped_total == 0


def test_overlap_min_is_respected_when_it_cannot_keep_up():
    sd, out, dropped, calls = simulate(60.0, 0.3, 300, overlap_mode='auto', overlap_min=3)
    assert set(overlaps(calls)[1:-1]) == {3}
    assert dropped > 0  # 10 frames per 0.3 s is 33 frames/s: the camera is faster
    st = sd.stats
    assert st.pushed == st.emitted + st.dropped_total + st.pending


def test_overlap_reported_in_stats():
    sd = StreamingDepth(Oracle(0), WINDOW, 4, overlap_mode='auto', overlap_min=2)
    assert sd.stats.overlap == 4 and sd.stats.as_dict()['overlap'] == 4
    sd, _, _, calls = simulate(30.0, 0.2, 60, overlap_mode='auto')
    st = sd.stats.as_dict()
    assert st['overlap'] == expected_overlap(30.0, 0.2)
    assert st['last_overlap'] == overlaps(calls)[-1]


@pytest.mark.parametrize('policy', ['immediate', 'blend'])
def test_alignment_intact_with_changing_overlaps(policy):
    def delay(call):
        return (0.1, 0.3, 0.2)[(call // 5) % 3]

    sd, out, dropped, calls = simulate(30.0, delay, 320, overlap_mode='auto', policy=policy)
    assert len(set(overlaps(calls)[:-1])) >= 3  # the overlap really changed
    assert dropped == 0
    assert [f.index for f in out] == list(range(320))
    assert [f.stamp for f in out] == list(range(320))
    drift, seam, inside = drift_and_seams(out)
    # The bounds of the fixed-overlap oracle test (test_estimator.py).
    assert drift < 0.08
    assert seam < (4.0 if policy == 'immediate' else 2.0) * inside


def test_unmeasured_auto_equals_the_fixed_stream():
    # Every frame arrives at the same instant: no rate, so the starting overlap stays.
    fixed = StreamingDepth(Oracle(1), WINDOW, 4, policy='blend')
    auto = StreamingDepth(Oracle(1), WINDOW, 4, policy='blend', overlap_mode='auto',
                          clock=lambda: 0.0)
    a = [f for i in range(100) for f in fixed.push(frame(i), i)] + fixed.flush()
    b = [f for i in range(100) for f in auto.push(frame(i), i, arrival=0.0)] + auto.flush()
    assert [f.stamp for f in a] == [f.stamp for f in b] == list(range(100))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.disparity, y.disparity)
        np.testing.assert_array_equal(x.confidence, y.confidence)


def test_controller_rules():
    c = OverlapController(9, 1, 4)
    assert c.choose() == 4 and c.rate is None and c.service_seconds is None
    for i in range(20):
        c.arrival(i / 30)
    assert c.rate == pytest.approx(30.0)
    c.service(0.1)
    assert c.needed_hop() == 4 and c.choose() == 5  # ceil(30 * 0.1 * 1.25) = 4
    for s in (5.0, 0.1, 0.1):  # one slow window (a warm-up) is outvoted by the median
        c.service(s)
    assert c.choose() == 5
    c.service(5.0)
    c.service(5.0)
    assert c.choose() == 1


@pytest.mark.parametrize('kw', [
    {'overlap_min': 13}, {'overlap_min': -1}, {'overlap_min': 1.5}, {'overlap_min': 5},
    {'overlap_mode': 'fast'}, {'overlap_margin': 0.5},
])
def test_bad_auto_options_raise(kw):
    options = {'overlap_mode': 'auto', **kw}
    with pytest.raises(InputError):
        StreamingDepth(Oracle(0), WINDOW, 4, **options)
