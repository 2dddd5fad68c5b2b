"""FiniteOutputGuard: NaN / inf model windows are rejected and counted, a few NaN pixels pass."""

import numpy as np
import pytest

from dvd_ros.stream.estimator import StreamingDepth
from dvd_ros.stream.output_check import FiniteOutputGuard, NonFiniteOutput


class Model:
    recommended_window = 5

    def __init__(self, poison):
        self.poison = poison  # window index -> function mutating the output
        self.calls = 0

    def predict(self, frames):
        out = frames.astype(np.float32).mean(axis=-1) / 255.0
        poison = self.poison.get(self.calls)
        self.calls += 1
        if poison is not None:
            poison(out)
        return out


def _frames(n, h=6, w=8):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_mostly_non_finite_window_rejected_and_counted():
    def all_nan(out):
        out[1] = np.nan

    def inf_majority(out):
        out[0, :4] = np.inf  # 4 of 6 rows

    guard = FiniteOutputGuard(Model({0: all_nan, 1: inf_majority}))
    frames = np.stack(_frames(5))
    with pytest.raises(NonFiniteOutput, match='NaN/inf in 100%'):
        guard.predict(frames)
    with pytest.raises(NonFiniteOutput, match='67%'):
        guard.predict(frames)
    out = guard.predict(frames)
    assert np.isfinite(out).all()
    assert (guard.windows, guard.rejected, guard.rejected_frames, guard.partial) == (3, 2, 10, 0)
    assert guard.recommended_window == 5  # the wrapped model's attributes show through


def test_a_few_nan_pixels_are_no_data_not_a_rejection():
    def speck(out):
        out[2, 0, :3] = np.nan

    guard = FiniteOutputGuard(Model({0: speck}))
    out = guard.predict(np.stack(_frames(5)))
    assert np.isnan(out[2, 0, :3]).all() and (guard.partial, guard.rejected) == (1, 0)


def test_rejected_window_is_not_published_by_the_stream():
    def all_nan(out):
        out[...] = np.nan

    guard = FiniteOutputGuard(Model({0: all_nan}))
    stream = StreamingDepth(guard, window=5, overlap=2)
    published = []
    errors = 0
    for i, frame in enumerate(_frames(13)):
        try:
            published += stream.push(frame, i)
        except NonFiniteOutput:
            errors += 1
    assert errors == 1 and guard.rejected == 1
    stamps = [f.stamp for f in published]
    assert not set(stamps) & set(range(5))  # the poisoned window's frames never come out
    assert all(np.isfinite(f.disparity).all() for f in published) and stamps
    assert stream.stats.dropped.get('model_error') == 5
