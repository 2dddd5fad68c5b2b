"""StreamingDepth and the offline stitcher, driven by oracle stand-in regressors."""

import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.stream.align import REFERENCE_SCALE_CLIP, stitch_offline
from dvd_ros.stream.estimator import DepthFrame, OfflineStitcher, StreamingDepth, run_offline
from dvd_ros.stream.windows import (
    causal_tail_window,
    causal_windows,
    eval_windows,
    offline_windows,
)

H, W = 12, 16


def truth(t):
    """Return the ground-truth disparity of frame ``t``: (H, W) float32, moving blob."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    g = 0.35 + 0.25 * np.sin(0.4 * xx + 0.3 * yy + 0.05 * t) + 0.1 * np.cos(0.2 * yy - 0.03 * t)
    cx = 8 + 6 * np.sin(0.02 * t)
    return (g + 0.3 * np.exp(-((xx - cx) ** 2 + (yy - 6) ** 2) / 8)).astype(np.float32)


def frame(i):
    """Return an (H, W, 3) uint8 frame that encodes its index in pixel (0, 0)."""
    f = np.zeros((H, W, 3), np.uint8)
    f[0, 0, 0], f[0, 0, 1] = i % 256, i // 256
    f[1:, :, 2] = i % 7
    return f


def index_of(frames):
    return frames[:, 0, 0, 0].astype(int) + 256 * frames[:, 0, 0, 1].astype(int)


class Oracle:
    """Ground truth under a random affine per call, a smooth per-window bias and noise."""

    def __init__(self, seed=0, scale=(0.85, 1.15), shift=0.05, noise=0.01, bias=0.01):
        self.rng = np.random.default_rng(seed)
        self.scale, self.shift, self.noise, self.bias = scale, shift, noise, bias
        self.calls = []

    def predict(self, frames):
        idx = index_of(frames)
        self.calls.append(list(idx))
        a = self.rng.uniform(*self.scale)
        c = self.rng.uniform(-self.shift, self.shift)
        yy, xx = np.mgrid[0:H, 0:W]
        k = self.rng.uniform(0.1, 0.5, 2)
        field = self.bias * np.sin(self.rng.uniform(0, 6) + k[0] * xx + k[1] * yy)
        out = np.stack([a * (truth(i) + field) + c for i in idx])
        return (out + self.noise * self.rng.standard_normal(out.shape)).astype(np.float32)


def stream(sd, n, start=0):
    out = []
    for i in range(start, start + n):
        out += sd.push(frame(i), ('stamp', i))
    return out + sd.flush()


def drift_and_seams(out):
    """Measure drift and seams of a stream against the truth.

    drift: max over windows of |per-window affine map truth->output - first window's map|,
    evaluated over the truth range, relative to the output range (0 = no drift).
    seam: mean |temporal difference of output - scaled temporal difference of truth| at the
    frames where the window changes, and inside windows.
    """
    g = np.stack([truth(o.index) for o in out]).astype(np.float64)
    o = np.stack([f.disparity for f in out]).astype(np.float64)
    wins = np.array([f.window for f in out])
    maps = []
    for k in np.unique(wins):
        m = wins == k
        a = np.stack([g[m].ravel(), np.ones(g[m].size)], 1)
        maps.append(np.linalg.lstsq(a, o[m].ravel(), rcond=None)[0])
    grid = np.linspace(g.min(), g.max(), 11)
    first = maps[0][0] * grid + maps[0][1]
    drift = max(np.abs(s * grid + b - first).max() for s, b in maps) / np.ptp(first)
    scale = np.linalg.lstsq(np.stack([g.ravel(), np.ones(g.size)], 1), o.ravel(),
                            rcond=None)[0][0]
    err = np.abs(np.diff(o, axis=0) - scale * np.diff(g, axis=0)).mean(axis=(1, 2))
    boundary = wins[1:] != wins[:-1]
    return drift, err[boundary].max(), err[~boundary].mean()


@pytest.mark.parametrize('policy', ['immediate', 'blend'])
def test_oracle_stream_320_frames(policy):
    n, window, overlap = 320, 13, 4
    sd = StreamingDepth(Oracle(0), window, overlap, policy=policy)
    out = stream(sd, n)
    assert all(isinstance(f, DepthFrame) for f in out)
    assert [f.index for f in out] == list(range(n))
    assert [f.stamp for f in out] == [('stamp', i) for i in range(n)]
    assert np.all(np.diff([f.window for f in out]) >= 0)
    st = sd.stats
    assert (st.pushed, st.emitted, st.dropped_total, st.pending) == (n, n, 0, 0)
    assert st.windows == len(causal_windows(n, window, overlap)) + 1
    for f in out:
        assert f.disparity.shape == f.confidence.shape == (H, W)
        assert f.disparity.dtype == f.confidence.dtype == np.float32
        assert np.all(f.disparity >= 0) and np.all((f.confidence >= 0) & (f.confidence <= 1))
    drift, seam, inside = drift_and_seams(out)
    # Measured (seed 0): drift 0.03; seam/inside 2.2 (immediate), 1.3 (blend).
    assert drift < 0.08
    assert seam < (4.0 if policy == 'immediate' else 2.0) * inside


def test_symmetric_fit_reduces_drift():
    kw = {'noise': 0.02, 'bias': 0.02}
    d_plain, d_sym = [], []
    for seed in range(3):
        plain = stream(StreamingDepth(Oracle(seed, **kw), 13, 4, symmetric=False), 320)
        sym = stream(StreamingDepth(Oracle(seed, **kw), 13, 4, symmetric=True), 320)
        d_plain.append(drift_and_seams(plain)[0])
        d_sym.append(drift_and_seams(sym)[0])
    # Measured (seeds 0-2): mean 0.16 with the reference OLS fit vs 0.067 symmetric.
    assert np.mean(d_sym) < 0.6 * np.mean(d_plain)
    assert max(d_sym) < 0.12


def test_percentile_prior_runs_and_is_bounded():
    sd = StreamingDepth(Oracle(2), 13, 4, drift_strength=0.01, drift_horizon=10)
    out = stream(sd, 200)
    assert [f.index for f in out] == list(range(200))
    assert drift_and_seams(out)[0] < 0.1


@pytest.mark.parametrize('total', [13 + 9 * 4, 13])
def test_blend_equals_reference_stitching(total):
    window, overlap = 13, 4
    oracle = Oracle(3)
    sd = StreamingDepth(oracle, window, overlap, policy='blend', symmetric=False)
    out = stream(sd, total)
    wins = [(w.start, w.end) for w in causal_windows(total, window, overlap)]
    assert [tuple(c[::len(c) - 1]) for c in oracle.calls] == [(s, e - 1) for s, e in wins]
    # Re-create the oracle's outputs with the same random sequence.
    replay = Oracle(3)
    raws = [replay.predict(np.stack([frame(i) for i in range(s, e)])) for s, e in wins]
    want = stitch_offline(raws, wins, scale_clip=REFERENCE_SCALE_CLIP)
    got = np.stack([f.disparity for f in out])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize('mode', ['reanchor', 'pad'])
@pytest.mark.parametrize('policy', ['immediate', 'blend'])
def test_flush_modes_emit_the_tail(mode, policy):
    window, overlap, n = 13, 4, 13 + 9 * 3 + 5
    oracle = Oracle(4)
    sd = StreamingDepth(oracle, window, overlap, policy=policy, flush_mode=mode)
    out = stream(sd, n)
    assert [f.index for f in out] == list(range(n))
    tail = causal_tail_window(n, window, overlap, mode)
    assert oracle.calls[-1] == list(range(tail.start, tail.end))
    assert len(oracle.calls[-1]) == (window if mode == 'reanchor' else overlap + 5)
    assert drift_and_seams(out)[0] < 0.08


def test_short_stream_and_empty_flush():
    oracle = Oracle(5)
    sd = StreamingDepth(oracle, 13, 4)
    assert sd.flush() == []
    out = stream(sd, 6)
    assert [f.index for f in out] == list(range(6)) and oracle.calls == [list(range(6))]
    assert all(np.all(f.confidence == 1) for f in out)
    again = stream(sd, 3, start=100)  # a flushed stream starts over at index 0
    assert [f.index for f in again] == [0, 1, 2]


def test_latency_of_policies():
    for policy, extra in (('immediate', 0), ('blend', 4)):
        sd = StreamingDepth(Oracle(6), 13, 4, policy=policy)
        first = next(i for i in range(40) if sd.push(frame(i), i))
        assert first == 12
        assert sd.latency_frames == 12 + extra
        emitted = len(sd.push(frame(first + 1), 0))
        assert emitted == 0
        assert sd.stats.pending == 1 + extra


def test_confidence_marks_disagreement():
    class Mover(Oracle):
        def predict(self, frames):
            out = super().predict(frames)
            if len(self.calls) % 2 == 0:
                out[:, 2:6, 3:8] += 0.5  # an object the two windows disagree on
            return out

    sd = StreamingDepth(Mover(7, noise=0.002, bias=0.0, shift=0.0), 13, 4, robust='tukey')
    out = stream(sd, 40)
    first = [f for f in out if f.window == 0]
    second = [f for f in out if f.window == 1]
    assert all(np.all(f.confidence == 1) for f in first)
    conf = second[0].confidence
    assert conf[2:6, 3:8].max() < 0.01
    assert np.median(conf) > 0.8
    assert sd.stats.last_inlier_fraction < 1.0


def test_nan_output_pixels_get_no_data_and_zero_confidence():
    class Holes(Oracle):
        def predict(self, frames):
            out = super().predict(frames)
            out[:, 0, :4] = np.nan
            return out

    out = stream(StreamingDepth(Holes(8), 13, 4), 40)
    for f in out:
        assert np.isnan(f.disparity[0, :4]).all() and (f.confidence[0, :4] == 0).all()
        assert np.isfinite(f.disparity[1:]).all()


def test_size_change_restart_and_raise():
    sd = StreamingDepth(Oracle(9), 13, 4)
    out = []
    for i in range(20):
        out += sd.push(frame(i), i)
    big = np.zeros((H + 4, W, 3), np.uint8)

    class Any:
        def predict(self, frames):
            return np.ones(frames.shape[:3], np.float32)

    sd.regressor = Any()
    out += sd.push(big, 'big')
    assert [f.stamp for f in out] == list(range(20))
    assert sd.stats.restarts == 1
    out += sd.flush()
    assert out[-1].stamp == 'big' and out[-1].disparity.shape == (H + 4, W)

    strict = StreamingDepth(Oracle(9), 13, 4, on_resize='raise')
    strict.push(frame(0), 0)
    with pytest.raises(InputError, match='stream is 16x12'):
        strict.push(big, 1)
    assert strict.stats.dropped == {'size_mismatch': 1}
    rest = [f.stamp for f in stream(strict, 12, start=1)]
    assert rest == [0] + [('stamp', i) for i in range(1, 13)]
    assert strict.stats.pushed == 14 and strict.stats.pending == 0


@pytest.mark.parametrize('bad', [np.zeros((H, W, 3), np.float32), np.zeros((H, W), np.uint8),
                                 np.zeros((H, W, 4), np.uint8), [[1, 2, 3]], None])
def test_invalid_frames_are_counted_and_raise(bad):
    sd = StreamingDepth(Oracle(10), 13, 4)
    sd.push(frame(0), 0)
    with pytest.raises(InputError, match='uint8'):
        sd.push(bad, 'bad')
    st = sd.stats
    assert st.dropped == {'invalid': 1} and st.pushed == 2 and st.pending == 1


def test_model_error_drops_the_window_and_restarts():
    class Flaky(Oracle):
        def predict(self, frames):
            if len(self.calls) == 1:
                self.calls.append('failed')
                raise RuntimeError('CUDA out of memory')
            return super().predict(frames)

    sd = StreamingDepth(Flaky(11), 13, 4)
    out = []
    with pytest.raises(RuntimeError):
        for i in range(40):
            out += sd.push(frame(i), i)
    assert sd.stats.dropped == {'model_error': 9}
    out += stream(sd, 20, start=22)
    st = sd.stats
    assert st.pushed == st.emitted + st.dropped_total and st.restarts == 1
    assert st.as_dict()['dropped_model_error'] == 9


def test_wrong_output_shape_is_an_input_error():
    class Bad:
        def predict(self, frames):
            return np.zeros((len(frames) + 3, H, W), np.float32)

    sd = StreamingDepth(Bad(), 5, 1)
    for i in range(4):
        sd.push(frame(i), i)
    with pytest.raises(InputError, match='predict must return'):
        sd.push(frame(4), 4)


def test_reset_and_external_drops_are_counted():
    sd = StreamingDepth(Oracle(12), 13, 4, policy='blend')
    for i in range(15):
        sd.push(frame(i), i)
    sd.note_dropped('busy', 3)
    sd.reset()
    st = sd.stats
    assert st.dropped == {'busy': 3, 'reset': 6}
    assert st.pushed == st.emitted + 6 and st.emitted == 9
    d = st.as_dict()
    assert d['dropped'] == 9 and d['windows'] == 1 and d['last_model_seconds'] >= 0


def test_stats_report_last_alignment():
    sd = StreamingDepth(Oracle(13, noise=0.0, bias=0.0), 13, 4)
    stream(sd, 40)
    st = sd.stats
    assert 0.7 <= st.last_scale <= 1.5 and st.last_residual < 1e-5 and not st.last_clipped


@pytest.mark.parametrize('kw', [{'policy': 'fast'}, {'flush_mode': 'x'}, {'on_resize': 'x'},
                                {'window': 0}, {'overlap': 13}, {'scale_clip': (2, 1)},
                                {'robust': 'l1'}, {'drift_strength': -1},
                                {'confidence_tau': 0}, {'drift_horizon': 0}])
def test_bad_parameters_raise(kw):
    args = {'window': 13, 'overlap': 4}
    args.update(kw)
    with pytest.raises(InputError):
        StreamingDepth(Oracle(), **args)
    with pytest.raises(InputError, match='predict'):
        StreamingDepth(object())


@pytest.mark.parametrize('variant, schedule, clip', [('single', offline_windows,
                                                      REFERENCE_SCALE_CLIP),
                                                     ('eval', eval_windows, None)])
@pytest.mark.parametrize('total', [50, 13, 7, 58])
def test_run_offline_equals_stitch_offline(variant, schedule, clip, total):
    window, overlap = 13, 4
    read = []

    def frames():
        for i in range(total):
            read.append(i)
            yield frame(i)

    lag = []
    got = []
    for index, value in run_offline(Oracle(14), frames(), window, overlap, total=total,
                                    variant=variant):
        got.append((index, value))
        lag.append(len(read) - index)
    assert [i for i, _ in got] == list(range(total))
    assert max(lag) <= window + 1  # frames are read at most about one window ahead
    wins = schedule(total, window, overlap)
    replay = Oracle(14)
    raws = [replay.predict(np.stack([frame(i) for i in range(s, e)])) for s, e in wins]
    want = stitch_offline(raws, wins, total=total, scale_clip=clip)
    np.testing.assert_allclose(np.stack([v for _, v in got]), want, atol=1e-6)


def test_offline_stitcher_bounds_memory_and_rejects_extra_windows():
    st = OfflineStitcher(300, 81, 21)
    assert st.next_window == (0, 81)
    out = st.add(np.zeros((81, 2, 2)))
    assert [i for i, _ in out] == list(range(60)) and len(st._tail) == 21
    for _ in range(4):
        st.add(np.zeros((81, 2, 2)))
    assert st.next_window is None
    with pytest.raises(InputError, match='already added'):
        st.add(np.zeros((81, 2, 2)))
    with pytest.raises(InputError, match='total='):
        list(run_offline(Oracle(), iter([]), 13, 4))


@pytest.mark.parametrize('policy', ['immediate', 'blend'])
@pytest.mark.parametrize('window, overlap', [(9, 6), (5, 0), (1, 0), (2, 1)])
def test_any_window_and_overlap_emits_every_frame(policy, window, overlap):
    sd = StreamingDepth(Oracle(15), window, overlap, policy=policy)
    out = stream(sd, 50)
    assert [f.index for f in out] == list(range(50))
    assert sd.stats.pending == 0
    expected = window - 1 + (min(overlap, window - overlap) if policy == 'blend' else 0)
    assert sd.latency_frames == expected


def test_blend_flush_keeps_the_window_confidence():
    sd = StreamingDepth(Oracle(16), 13, 4, policy='blend')
    out = stream(sd, 13 + 9)  # flush releases the held frames of the last window
    held = out[-4:]
    assert all(f.window == 1 for f in held)
    assert held[0].confidence is out[-5].confidence
    assert held[0].confidence.min() < 1.0


def test_model_error_during_resize_restart_is_counted():
    class FailOnFlush(Oracle):
        def predict(self, frames):
            if len(frames) < 13:
                raise RuntimeError('boom')
            return super().predict(frames)

    sd = StreamingDepth(FailOnFlush(17), 13, 4, flush_mode='pad')
    for i in range(15):
        sd.push(frame(i), i)
    with pytest.raises(RuntimeError):
        sd.push(np.zeros((H + 2, W, 3), np.uint8), 'big')
    st = sd.stats
    assert st.pushed == 16 and st.emitted == 13 and st.dropped == {'model_error': 3}
    assert st.pending == 0
