"""The pipelined stream: same outputs and order as StreamingDepth.push, clean stops, bounded."""

import threading
import weakref

import numpy as np
import pytest
from test_estimator import Oracle, frame

from dvd_ros.errors import InputError
from dvd_ros.stream.estimator import StreamingDepth
from dvd_ros.stream.pipeline import BoundedQueue, Cancelled, Pipeline, StreamPipeline

GATE_S = 20  # generous bound of any wait on another thread (a failed test, not a timing)


def sequential(sd, items):
    """Run ``items`` (frames, 'flush', 'reset') through ``sd.push``; return (outputs, errors)."""
    out, errors = [], []
    for item in items:
        try:
            if isinstance(item, str):
                out += sd.flush() if item == 'flush' else (sd.reset() or [])
            else:
                out += sd.push(*item)
        except Exception as exc:  # noqa: BLE001 - compared with the pipeline's errors
            errors.append(type(exc).__name__)
    return out + sd.flush(), errors


def pipelined(sd, items, **kwargs):
    out, errors = [], []
    pipe = StreamPipeline(sd, out.extend,
                          on_error=lambda e, stage: errors.append(type(e).__name__), **kwargs)
    for item in items:
        if isinstance(item, str):
            assert (pipe.flush() if item == 'flush' else pipe.reset())
        else:
            assert pipe.push(*item)
    assert pipe.close(timeout=GATE_S)
    assert not pipe.alive
    return out, errors


class Flaky(Oracle):
    """Fails on the given call numbers."""

    def __init__(self, seed, fail=(), **kwargs):
        super().__init__(seed, **kwargs)
        self.fail, self.count = set(fail), 0

    def predict(self, frames):
        self.count += 1
        if self.count in self.fail:
            raise RuntimeError('simulated model failure')
        return super().predict(frames)


def assert_same(a, b):
    assert [(f.stamp, f.index, f.window) for f in a] == [(f.stamp, f.index, f.window) for f in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.disparity, y.disparity)
        np.testing.assert_array_equal(x.confidence, y.confidence)


def big(i):
    return np.pad(frame(i), ((0, 4), (0, 4), (0, 0)))


SCENARIOS = {
    'plain': [(frame(i), i) for i in range(60)],
    'flush_and_reset': ([(frame(i), i) for i in range(20)] + ['flush']
                        + [(frame(i), i) for i in range(20, 37)] + ['reset']
                        + [(frame(i), i) for i in range(37, 70)]),
    'resize': [(frame(i), i) for i in range(17)] + [(big(i), i) for i in range(17, 50)],
}


@pytest.mark.parametrize('scenario', sorted(SCENARIOS))
@pytest.mark.parametrize('policy', ['immediate', 'blend'])
@pytest.mark.parametrize('mode', ['reanchor', 'pad'])
def test_same_outputs_and_order_as_push(scenario, policy, mode):
    items = SCENARIOS[scenario]
    if scenario == 'resize':
        # The oracle's truth is 12x16: the bigger frames get a bigger oracle output.
        class Sized(Oracle):
            def predict(self, frames):
                out = super().predict(frames[:, :12, :16])
                return np.pad(out, ((0, 0), (0, frames.shape[1] - 12), (0, frames.shape[2] - 16)),
                              mode='edge')
        make = Sized
    else:
        make = Oracle
    options = {'policy': policy, 'flush_mode': mode}
    want, want_err = sequential(StreamingDepth(make(3), 13, 4, **options), items)
    sd = StreamingDepth(make(3), 13, 4, **options)
    got, got_err = pipelined(sd, items)
    assert_same(got, want)
    assert got_err == want_err == []
    st = sd.stats
    assert st.pushed == st.emitted + st.dropped_total and st.pending == 0


@pytest.mark.parametrize('fail', [(1,), (2, 3), (4,)])
def test_model_failures_same_as_push(fail):
    items = [(frame(i), i) for i in range(50)]
    seq = StreamingDepth(Flaky(5, fail), 13, 4, policy='blend')
    want, want_err = sequential(seq, items)
    sd = StreamingDepth(Flaky(5, fail), 13, 4, policy='blend')
    got, got_err = pipelined(sd, items)
    assert_same(got, want)
    assert got_err == want_err == ['RuntimeError'] * len(fail)
    assert sd.stats.dropped == seq.stats.dropped and sd.stats.dropped['model_error'] > 0
    assert sd.stats.restarts == seq.stats.restarts


def test_invalid_frame_raises_on_push_and_is_counted():
    sd = StreamingDepth(Oracle(0), 13, 4)
    pipe = StreamPipeline(sd, lambda frames: None)
    with pytest.raises(InputError, match='uint8'):
        pipe.push(np.zeros((12, 16, 3), np.float32))
    assert pipe.close(timeout=GATE_S)
    assert sd.stats.dropped == {'invalid': 1} and sd.stats.pushed == 1


def test_resize_raise_and_sink_errors_go_to_on_error():
    errors = []
    out = []

    def sink(frames):
        out.extend(frames)
        if len(out) == 13:
            raise ValueError('publisher gone')

    sd = StreamingDepth(Oracle(0), 13, 4, on_resize='raise')
    pipe = StreamPipeline(sd, sink, on_error=lambda e, stage: errors.append((type(e), stage)))
    for i in range(30):
        pipe.push(frame(i), i)
    pipe.push(big(30), 30)
    assert pipe.close(timeout=GATE_S)
    assert errors == [(ValueError, 'sink'), (InputError, 'model')]
    assert [f.stamp for f in out] == list(range(30))  # the sink went on after its error
    assert sd.stats.dropped == {'size_mismatch': 1}


def test_model_of_next_window_runs_while_the_sink_finishes_the_previous():
    # Window 1's predict releases window 0's sink: a sequential stream would never finish it.
    started = threading.Event()
    released = []

    class Signals(Oracle):
        def predict(self, frames):
            if len(self.calls) == 1:
                started.set()
            return super().predict(frames)

    def sink(frames):
        if frames[0].window == 0:
            released.append(started.wait(GATE_S))

    pipe = StreamPipeline(StreamingDepth(Signals(0), 13, 4), sink)
    for i in range(13 + 9):
        pipe.push(frame(i), i)
    assert pipe.close(timeout=GATE_S)
    assert released == [True]


def test_close_delivers_everything_and_stops_threads():
    out = []
    sd = StreamingDepth(Oracle(0), 13, 4)
    pipe = StreamPipeline(sd, out.extend)
    names = {t.name for t in threading.enumerate()}
    assert {'stream_model', 'stream_finish'} <= names
    for i in range(40):
        pipe.push(frame(i), i)
    assert pipe.close(timeout=GATE_S)
    assert [f.stamp for f in out] == list(range(40))
    assert not pipe.alive and not pipe.push(frame(0), 0)
    assert sd.stats.dropped == {'closed': 1}
    assert not {'stream_model', 'stream_finish'} & {t.name for t in threading.enumerate()}


def _pipeline_blocked_in_the_model():
    """Return a 5/2 pipeline whose model waits on ``gate``, setting ``in_model`` first."""
    gate = threading.Event()
    in_model = threading.Event()

    class Blocked(Oracle):
        def predict(self, frames):
            in_model.set()
            gate.wait(GATE_S)
            return super().predict(frames)

    sd = StreamingDepth(Blocked(0), 5, 2)
    return sd, StreamPipeline(sd, lambda frames: None, input_capacity=2), gate, in_model


def test_cancel_while_the_model_runs_unblocks_the_producer():
    sd, pipe, gate, in_model = _pipeline_blocked_in_the_model()
    results = []

    def produce():
        results.extend(pipe.push(frame(i), i) for i in range(20))

    producer = threading.Thread(target=produce)
    producer.start()
    assert in_model.wait(GATE_S)
    assert not pipe.cancel(timeout=0.2)  # the window in the model cannot be interrupted
    producer.join(GATE_S)
    assert not producer.is_alive() and results.count(False) >= 1  # push returned, not hung
    gate.set()
    assert pipe.join(GATE_S)
    st = sd.stats
    assert st.dropped.get('shutdown', 0) + st.dropped.get('closed', 0) >= 1
    assert st.pushed == st.emitted + st.dropped_total + st.pending


def test_frames_pushed_after_cancel_count_as_closed_while_the_model_finishes():
    sd, pipe, gate, in_model = _pipeline_blocked_in_the_model()
    for i in range(5):
        assert pipe.push(frame(i), i)
    assert in_model.wait(GATE_S)
    assert not pipe.cancel(timeout=0.1) and pipe.alive  # the window in the model goes on
    assert not pipe.push(frame(5), 5)
    assert sd.stats.dropped.get('closed', 0) == 1 and 'queue_full' not in sd.stats.dropped
    gate.set()
    assert pipe.join(GATE_S)


def test_memory_is_bounded_with_a_stalled_sink():
    """A stalled sink stops the model after ``capacity`` windows; input drops the oldest."""
    alive = weakref.WeakSet()
    gate = threading.Event()

    class Tracked(Oracle):
        def predict(self, frames):
            raw = super().predict(frames)
            alive.add(raw)
            return raw

    most = []

    def sink(frames):
        most.append(len(alive))
        gate.wait(GATE_S)

    sd = StreamingDepth(Tracked(0), 5, 2)
    pipe = StreamPipeline(sd, sink, capacity=1, input_capacity=3, overflow='drop_oldest')
    for i in range(300):
        assert pipe.push(frame(i), i)
        most.append(len(alive))
    gate.set()
    assert pipe.close(timeout=GATE_S)
    # One window in the sink, one queued, one in the model (held in the model thread).
    assert max(most) <= 3
    assert pipe.pipeline.queues[0].high_water <= 3
    assert pipe.pipeline.queues[1].high_water <= 1
    st = sd.stats
    assert st.dropped['queue_full'] > 200
    assert st.pushed == 300 == st.emitted + st.dropped_total and st.pending == 0


def test_drain_waits_for_the_sink():
    out = []
    pipe = StreamPipeline(StreamingDepth(Oracle(0), 5, 2), out.extend)
    for i in range(11):
        pipe.push(frame(i), i)
    assert pipe.drain(timeout=GATE_S)
    assert [f.stamp for f in out] == list(range(11))
    assert pipe.close(timeout=GATE_S)


def test_auto_overlap_in_a_pipeline_counts_the_slower_stage():
    sd = StreamingDepth(Oracle(0), 13, 4, overlap_mode='auto')
    pipe = StreamPipeline(sd, lambda frames: None)
    assert sd.overlapped
    for i in range(40):
        pipe.push(frame(i), i, arrival=i / 30)
    assert pipe.close(timeout=GATE_S)
    assert sd.stats.overlap == 12  # the oracle takes no time: the largest overlap


def test_generic_pipeline_order_errors_and_bad_arguments():
    seen, errors = [], []

    def double(x):
        if x == 3:
            raise ValueError('three')
        return [x, x]

    pipe = Pipeline([('a', double), ('b', lambda x: seen.append(x) or ())],
                    on_error=lambda stage, exc: errors.append((stage, str(exc))))
    for i in range(6):
        assert pipe.put(i)
    assert pipe.barrier(GATE_S)
    assert seen == [0, 0, 1, 1, 2, 2, 4, 4, 5, 5] and errors == [('a', 'three')]
    assert pipe.close(GATE_S) and not pipe.put(7)
    with pytest.raises(InputError):
        Pipeline([])
    with pytest.raises(InputError):
        BoundedQueue(0)
    with pytest.raises(InputError):
        StreamPipeline(StreamingDepth(Oracle(0), 5, 2), print, overflow='newest')
    q = BoundedQueue(1)
    assert q.put(1) and not q.put(2, timeout=0.01)
    q.cancel()
    with pytest.raises(Cancelled):
        q.get()
