"""Tests of the evaluation protocol and its metrics."""

import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.synthetic import SyntheticScene
from dvd_ros.train.evaluate import (
    MeanDisparity,
    aligned_depth,
    boundary_f1,
    evaluate,
    evaluate_clip,
    fit_disparity_scale_shift,
)


@pytest.fixture(scope='module')
def clip():
    return SyntheticScene(5, height=32, width=48).clip(5, stride=2)


def test_exact_affine_disparity_scores_perfectly(clip):
    _, depth = clip
    pred = 3.0 * (1.0 / depth) - 0.05  # any positive scale and shift in disparity space
    m = evaluate_clip(pred, depth)
    assert m['abs_rel'] < 1e-6 and m['delta1'] == 1.0
    assert m['boundary_f1'] == pytest.approx(1.0)
    assert m['flicker'] < 1e-6
    assert m['scale'] == pytest.approx(1 / 3.0, rel=1e-6)


def test_scale_shift_fit_is_joint_least_squares():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(2, 5, 5))
    g = 1.0 / (0.4 * p + 0.2)
    s, b = fit_disparity_scale_shift(p, g, np.ones_like(p, dtype=bool))
    assert (s, b) == pytest.approx((0.4, 0.2))


def test_constant_prediction_becomes_mean_disparity(clip):
    rgb, depth = clip
    pred = MeanDisparity()(rgb)
    d, mask, _ = aligned_depth(pred, depth)
    np.testing.assert_allclose(d, 1.0 / np.mean(1.0 / depth.astype(np.float64)), rtol=1e-9)
    m = evaluate_clip(pred, depth)
    assert m['abs_rel'] > 0.1 and m['boundary_f1'] == 0.0


def test_flicker_and_boundaries_detect_degradations(clip):
    _, depth = clip
    good = 1.0 / depth
    rng = np.random.default_rng(1)
    # Per-frame gain jitter: a flickering prediction of exactly the right shape.
    flick = good * rng.uniform(0.8, 1.2, size=(len(good), 1, 1))
    blurred = good.copy()
    for _ in range(4):
        blurred = (blurred + np.roll(blurred, 1, 1) + np.roll(blurred, 1, 2)
                   + np.roll(blurred, -1, 1) + np.roll(blurred, -1, 2)) / 5
    m_good, m_flick = evaluate_clip(good, depth), evaluate_clip(flick, depth)
    assert m_flick['flicker'] > 10 * max(m_good['flicker'], 1e-4)
    assert boundary_f1(1 / blurred, depth) < 0.9 * boundary_f1(1 / good, depth)


def test_evaluate_averages_over_clips_and_validates(clip):
    rgb, depth = clip
    res = evaluate(lambda f: 1.0 / depth[: len(f)], [clip, clip])
    assert res['clips'] == 2 and res['abs_rel'] < 1e-6
    with pytest.raises(InputError, match='T, H, W'):
        evaluate_clip(np.ones((2, 3)), np.ones((2, 3)))
