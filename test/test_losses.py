"""Tests of the DVD latent losses (MSE + LMR) and the disparity targets."""

import numpy as np
import pytest
import torch

from dvd_ros.errors import InputError
from dvd_ros.train.losses import dvd_loss, lmr_terms
from dvd_ros.train.targets import normalized_disparity, rgb_video, target_video


def test_loss_matches_hand_computation():
    # B=1, C=1, T'=2, h=2, w=2: every term small enough to do by hand.
    pred = torch.tensor([[[[[1.0, 2.0], [3.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]]])
    target = torch.zeros_like(pred)
    # mse = (1+4+9+16 + 4*4) / 8 = 46/8
    # dt: pred[1]-pred[0] = [[1,0],[-1,-2]] -> mean |.| = 4/4 = 1
    # dh: frame0 rows [3-1, 4-2] = [2,2]; frame1 [0,0] -> mean = 4/4 = 1
    # dw: frame0 [1, 1]; frame1 [0, 0] -> mean = 2/4 = 0.5
    loss, logs = dvd_loss(pred, target)
    assert logs['mse'] == pytest.approx(46 / 8)
    assert (logs['l_t'], logs['l_h'], logs['l_w']) == pytest.approx((1.0, 1.0, 0.5))
    assert float(loss) == pytest.approx(46 / 8 + 0.5 * 2.5)
    l2, logs2 = dvd_loss(pred, target, kind='l2')
    assert float(l2) == pytest.approx(46 / 8)


def test_no_temporal_term_for_images_and_offsets_are_free():
    g = torch.randn(2, 16, 1, 4, 6)
    l_t, l_h, l_w = lmr_terms(g + 3.0, g)
    assert float(l_t) == 0.0
    assert float(l_h) == pytest.approx(0.0, abs=1e-6)
    assert float(l_w) == pytest.approx(0.0, abs=1e-6)
    loss, logs = dvd_loss(g + 3.0, g)
    assert float(loss) == pytest.approx(9.0, rel=1e-5)  # a constant offset costs only MSE


def test_loss_rejects_bad_shapes_and_kind():
    with pytest.raises(ValueError, match='equal'):
        dvd_loss(torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 16, 1, 2, 3))
    with pytest.raises(ValueError, match='full'):
        dvd_loss(torch.zeros(1, 1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2), kind='l1')


def test_gradient_flows_through_all_terms():
    pred = torch.randn(1, 2, 3, 4, 4, requires_grad=True)
    loss, _ = dvd_loss(pred, torch.zeros(1, 2, 3, 4, 4))
    loss.backward()
    assert pred.grad.abs().sum() > 0


def test_normalized_disparity_uses_joint_percentiles_and_clips():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 10.0, size=(3, 20, 20))
    depth[2] *= 0.5  # a nearer last frame: the joint percentiles see it
    out = normalized_disparity(depth)
    disp = 1.0 / depth
    lo, hi = np.percentile(disp, [2, 98])
    expected = np.clip((disp - lo) / (hi - lo + 1e-5), 0, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert out[2].mean() > out[0].mean()  # not normalised per frame
    assert (out == 1.0).mean() == pytest.approx(0.02, abs=0.01)


def test_normalized_disparity_ignores_invalid_pixels():
    depth = np.full((1, 4, 4), 2.0)
    depth[0, 0, 0] = 0.0
    depth[0, 0, 1] = np.nan
    depth[0, 1] = [1.0, 1.0, 4.0, 4.0]
    out = normalized_disparity(depth)
    assert out[0, 0, 0] == 0.0 and out[0, 0, 1] == 0.0
    assert np.isfinite(out).all()
    with pytest.raises(InputError, match='no valid pixel'):
        normalized_disparity(np.zeros((2, 3, 3)))


def test_target_and_rgb_videos_map_to_minus_one_one():
    d = np.array([[[0.0, 0.5, 1.0]]], dtype=np.float32)
    v = target_video(d)
    assert v.shape == (3, 1, 1, 3)
    np.testing.assert_allclose(v[:, 0, 0], [[-1, 0, 1]] * 3)
    rgb = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    r = rgb_video(rgb)
    assert r.shape == (3, 2, 4, 5)
    assert r[0].max() == -1.0 and r[1].min() == 1.0
    with pytest.raises(InputError, match='uint8'):
        rgb_video(rgb.astype(np.float32))
