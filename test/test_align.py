"""Scale/shift alignment: properties, degenerate inputs, robust fits, golden stitching."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from safetensors.numpy import load_file

from dvd_ros.errors import InputError
from dvd_ros.stream.align import (
    REFERENCE_SCALE_CLIP,
    Alignment,
    alignment_residual,
    apply_alignment,
    clip_scale,
    crossfade,
    crossfade_weights,
    disagreement_confidence,
    fit_scale_shift,
    stitch_offline,
    stitch_step,
)
from dvd_ros.stream.windows import eval_windows, offline_windows

scales = st.floats(0.05, 20.0)
shifts = st.floats(-5.0, 5.0)


def _x(seed, shape=(3, 6, 8)):
    return np.random.default_rng(seed).uniform(0.0, 1.0, shape).astype(np.float32)


@pytest.fixture(scope='module')
def golden(fixtures):
    meta = json.loads((fixtures / 'dvd_sliding_window_golden.json').read_text())
    return meta['stitch_cases'], load_file(fixtures / 'dvd_sliding_window_golden.safetensors')


def test_golden_stitching_all_cases(golden):
    cases, tensors = golden
    assert len(cases) >= 4
    assert any(case.endswith('clip') for case in cases)
    for name, case in cases.items():
        single = case['variant'] == 'single'
        schedule = offline_windows if single else eval_windows
        wins = schedule(case['T'], case['window'], case['overlap'])
        assert [w['frames'][0] for w in case['window_calls']] == [s for s, _ in wins]
        raws = [tensors[f'{name}/window_{k}_raw'][0] for k in range(len(wins))]
        got = stitch_offline(raws, wins, total=case['T'],
                             scale_clip=REFERENCE_SCALE_CLIP if single else None)
        want = tensors[f'{name}/stitched'][0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=name)


def test_golden_clip_case_needs_the_clip(golden):
    cases, tensors = golden
    name = next(c for c in cases if c.endswith('clip'))
    case = cases[name]
    wins = offline_windows(case['T'], case['window'], case['overlap'])
    raws = [tensors[f'{name}/window_{k}_raw'][0] for k in range(len(wins))]
    unclipped = stitch_offline(raws, wins, scale_clip=None)
    assert np.abs(unclipped - tensors[f'{name}/stitched'][0]).max() > 1e-2


@settings(max_examples=50, deadline=None)
@given(scales, shifts, st.integers(0, 2**31 - 1))
def test_recovers_scale_shift_exactly_without_noise(scale, shift, seed):
    x = _x(seed).astype(np.float64)
    y = scale * x + shift
    for robust in (False, 'huber', 'tukey', 'trim'):
        for symmetric in (False, True):
            fit = fit_scale_shift(x, y, robust=robust, symmetric=symmetric)
            assert not fit.degenerate and fit.n == x.size
            assert fit.scale == pytest.approx(scale, rel=1e-9)
            assert fit.shift == pytest.approx(shift, abs=1e-9 * (1 + abs(shift) + scale))
            assert fit.residual < 1e-9 * (1 + scale + abs(shift))


@settings(max_examples=50, deadline=None)
@given(st.floats(0.3, 3.0), st.floats(-1.0, 1.0), st.floats(1e-4, 0.05),
       st.integers(0, 2**31 - 1))
def test_recovers_scale_shift_with_noise(scale, shift, sigma, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, 5000)
    y = scale * x + shift + rng.normal(0.0, sigma, x.size)
    fit = fit_scale_shift(x, y)
    # Standard errors of OLS with var(x) = 1/12: se(scale) ~ sigma * sqrt(12 / n); 6 sigma bound.
    se = sigma * np.sqrt(12.0 / x.size)
    assert abs(fit.scale - scale) < 6 * se
    assert abs(fit.shift - shift) < 6 * 2 * se
    assert fit.residual == pytest.approx(sigma, rel=0.1)


degenerate_cases = {
    'constant_x': (np.full((2, 4, 4), 0.3), np.arange(32.0).reshape(2, 4, 4), None),
    'zeros': (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), None),
    'empty_mask': (_x(1), _x(2), np.zeros((3, 6, 8), bool)),
    'all_nan_x': (np.full((3, 4), np.nan), np.ones((3, 4)), None),
    'nan_y': (_x(3, (4,)), np.full(4, np.nan), None),
    'inf': (np.array([np.inf, 1.0, -np.inf]), np.array([1.0, np.inf, 2.0]), None),
    'empty': (np.zeros(0), np.zeros(0), None),
    'single_pixel': (np.array([0.5]), np.array([0.7]), None),
}


@pytest.mark.parametrize('name', sorted(degenerate_cases))
@pytest.mark.parametrize('robust', [False, 'huber', 'tukey', 'trim'])
def test_degenerate_inputs_give_identity_without_nan(name, robust):
    x, y, mask = degenerate_cases[name]
    fit = fit_scale_shift(x, y, mask=mask, robust=robust, symmetric=robust == 'huber')
    assert fit.degenerate
    assert (fit.scale, fit.shift) == (1.0, 0.0)
    assert all(np.isfinite([fit.scale, fit.shift, fit.residual, fit.inlier_fraction]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                          st.just(0.5)), min_size=0, max_size=30),
       st.integers(0, 2**31 - 1), st.sampled_from([False, 'huber', 'tukey', 'trim']))
def test_never_raises_and_never_nan(values, seed, robust):
    x = np.asarray(values, np.float32)
    y = np.random.default_rng(seed).permutation(x)
    fit = fit_scale_shift(x, y, robust=robust)
    assert all(np.isfinite([fit.scale, fit.shift, fit.residual, fit.inlier_fraction]))
    out = apply_alignment(x, clip_scale(fit))
    assert np.isnan(out).sum() <= np.isnan(x).sum() + np.isinf(x).sum()


def test_nan_pixels_are_ignored():
    x = _x(4)
    y = 1.2 * x + 0.1
    x[0, 0, :3] = np.nan
    y[1, 2, 2] = np.inf
    fit = fit_scale_shift(x, y)
    assert fit.n == x.size - 4
    assert fit.scale == pytest.approx(1.2, rel=1e-5)


def test_mask_and_weights_exclude_pixels():
    x = _x(5)
    y = 2.0 * x - 0.3
    y[0] += 5.0  # corrupted frame
    mask = np.ones(x.shape, bool)
    mask[0] = False
    assert fit_scale_shift(x, y, mask=mask).scale == pytest.approx(2.0, rel=1e-5)
    weights = np.ones(x.shape)
    weights[0] = 0.0
    assert fit_scale_shift(x, y, weights=weights).shift == pytest.approx(-0.3, abs=1e-5)
    assert fit_scale_shift(x, y).scale != pytest.approx(2.0, rel=1e-2)


@pytest.mark.parametrize('robust', ['huber', 'tukey', 'trim'])
def test_robust_fit_resists_a_moving_object(robust):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (5, 24, 32))
    y = 0.8 * x + 0.05 + rng.normal(0, 0.005, x.shape)
    y[:, 5:12, 5:14] += 0.4  # an object that moved between the two windows' predictions
    plain = fit_scale_shift(x, y)
    fit = fit_scale_shift(x, y, robust=robust)
    assert abs(plain.scale - 0.8) > 0.01 or abs(plain.shift - 0.05) > 0.01
    assert fit.scale == pytest.approx(0.8, abs=0.01)
    assert fit.shift == pytest.approx(0.05, abs=0.01)
    assert 0.5 < fit.inlier_fraction < 1.0


def test_symmetric_fit_avoids_regression_dilution():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0.0, 1.0, 200_000)
    x = truth + rng.normal(0, 0.1, truth.size)  # both windows equally noisy
    y = 1.3 * truth + 0.1 + 1.3 * rng.normal(0, 0.1, truth.size)
    ols = fit_scale_shift(x, y)
    sym = fit_scale_shift(x, y, symmetric=True)
    assert ols.scale < 1.3 * 0.92  # var 1/12 vs noise 0.01: 11 % shrink
    assert sym.scale == pytest.approx(1.3, rel=0.01)


def test_prior_pulls_towards_pseudo_observations():
    x = _x(6)
    y = 1.4 * x
    assert fit_scale_shift(x, y, prior=([0.0, 1.0], [0.0, 1.0], 0.0)).scale == pytest.approx(1.4)
    strong = fit_scale_shift(x, y, prior=([0.0, 1.0], [0.0, 1.0], 1e6))
    assert strong.scale == pytest.approx(1.0, abs=1e-3)
    assert strong.n == x.size
    with pytest.raises(InputError, match='prior'):
        fit_scale_shift(x, y, prior=([0.0], [0.0, 1.0], 1.0))


def test_clip_keeps_shift_and_flags():
    fit = Alignment(3.0, -0.2, 0.0, 10, False)
    clipped = clip_scale(fit)
    assert (clipped.scale, clipped.shift, clipped.clipped) == (1.5, -0.2, True)
    assert clip_scale(fit, None) is fit
    assert not clip_scale(Alignment(1.0, 0.0, 0.0, 1, False)).clipped
    with pytest.raises(InputError, match='scale_clip'):
        clip_scale(fit, (1.5, 0.7))


def test_apply_alignment_clamps_negatives_keeps_nan():
    v = np.array([0.0, 0.5, 1.0, np.nan], np.float32)
    out = apply_alignment(v, Alignment(2.0, -0.5, 0.0, 4, False))
    np.testing.assert_array_equal(out[:3], [0.0, 0.5, 1.5])
    assert np.isnan(out[3]) and out.dtype == np.float32
    assert apply_alignment(v, Alignment(2.0, -0.5), clamp_negative=False)[0] == -0.5


def test_crossfade_reference_ramp():
    np.testing.assert_allclose(crossfade_weights(5), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_array_equal(crossfade_weights(1), [0.0])
    old = np.zeros((3, 2, 2))
    new = np.ones((3, 2, 2))
    np.testing.assert_allclose(crossfade(old, new)[:, 0, 0], [0, 0.5, 1])
    np.testing.assert_array_equal(crossfade(old[:1], new[:1]), old[:1])


def test_confidence_formula():
    old = np.zeros((2, 3, 3), np.float32)
    new = old.copy()
    new[:, 0, 0] = 0.05
    new[0, 1, 1] = np.nan
    new[:, 2, 2] = np.nan
    conf = disagreement_confidence(old, new, tau=0.05)
    assert conf.dtype == np.float32 and conf.shape == (3, 3)
    assert conf[0, 0] == pytest.approx(np.exp(-1.0))
    assert conf[1, 1] == 1.0 and conf[2, 2] == 1.0 and conf[0, 1] == 1.0


def test_stitch_step_reports_clipped_residual():
    raw = _x(7, (4, 3, 3))
    tail = raw[:2] * 3.0
    merged, fit = stitch_step(tail, raw)
    assert fit.clipped and fit.scale == 1.5
    assert fit.residual == pytest.approx(alignment_residual(raw[:2], tail, fit))
    assert fit.residual > 0.1
    np.testing.assert_array_equal(merged[0], tail[0])  # first overlap frame keeps the old value


def test_stitch_offline_rejects_short_outputs():
    with pytest.raises(InputError, match='needs 5 frames'):
        stitch_offline([np.zeros((3, 2, 2))], [(0, 5)])
    with pytest.raises(InputError):
        fit_scale_shift(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match='robust'):
        fit_scale_shift(np.zeros(3), np.zeros(3), robust='l1')
