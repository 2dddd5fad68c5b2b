"""The demo picture: the point-cloud splat render and the composed figure (numpy, no ROS)."""

import numpy as np

from dvd_ros.cli.demo_figure import demo_figure, splat_render


def _scene(height=24, width=32):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = np.full((height, width), 4.0, np.float32)
    depth[8:16, 10:20] = 2.0  # a box in front of a wall
    focal = 30.0
    K = np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]])
    return rgb, depth, K


def test_unturned_render_reproduces_the_image():
    rgb, depth, K = _scene()
    assert np.array_equal(splat_render(depth, rgb, K, yaw_deg=0, pitch_deg=0, point_px=1), rgb)


def test_turned_render_moves_near_points_more_than_far_ones():
    rgb, depth, K = _scene()
    rgb[:] = 0
    rgb[8:16, 10:20] = (255, 0, 0)  # the box is red, the wall black
    image = splat_render(depth, rgb, K, yaw_deg=20, pitch_deg=0, point_px=1)
    red = np.argwhere((image == (255, 0, 0)).all(-1))
    wall = np.argwhere((image == (0, 0, 0)).all(-1))
    assert len(red) and len(wall)
    # The box sits nearer than the pivot (median depth = the wall): it shifts sideways.
    assert abs(red[:, 1].mean() - 14.5) > 1.0
    invalid = depth.copy()
    invalid[:] = np.nan
    assert (splat_render(invalid, rgb, K) == 255).all()  # no points: white


def test_figure_has_every_panel_and_one_colour_scale():
    rgb, depth, K = _scene()
    frames = 6
    rgbs = np.repeat(rgb[None], frames, 0)
    truth = np.repeat(depth[None], frames, 0)
    pred = truth * 1.1
    image = demo_figure(rgbs, pred, truth, np.ones_like(truth), K, title='t')
    assert image.dtype == np.uint8 and image.ndim == 3
    # Five detail panels of 7x the 32 px width side by side, and more rows below them.
    assert image.shape[1] >= 5 * 7 * 32 and image.shape[0] > 3 * 7 * 24
    same = demo_figure(rgbs, truth, truth, None, np.full((3, 3), np.nan), title='t')
    assert same.shape == image.shape
