"""False-colour rendering."""

import numpy as np
import pytest

from dvd_ros.colorize import COLORMAPS, colorize
from dvd_ros.errors import InputError


def test_shape_dtype_and_nan_black():
    values = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    values[0, 0] = np.nan
    values[2, 3] = np.inf
    for name in COLORMAPS:
        rgb = colorize(values, colormap=name)
        assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
        assert (rgb[0, 0] == 0).all() and (rgb[2, 3] == 0).all()


def test_gray_ramp_and_explicit_range():
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    rgb = colorize(values, colormap='gray')
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 127, 255])
    assert (rgb[..., 0] == rgb[..., 1]).all()
    # Values outside [vmin, vmax] saturate at the ends.
    rgb = colorize(values, vmin=0.25, vmax=0.5, colormap='gray')
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 255, 255])


def test_turbo_is_rgb_not_bgr():
    # Turbo's low end is dark blue-violet, the high end dark red.
    rgb = colorize(np.array([[0.0, 1.0]], np.float32), colormap='turbo')
    assert rgb[0, 0, 2] > rgb[0, 0, 0]
    assert rgb[0, 1, 0] > rgb[0, 1, 2]


def test_constant_and_all_nan_do_not_fail():
    assert colorize(np.full((2, 2), 3.0, np.float32)).shape == (2, 2, 3)
    assert (colorize(np.full((2, 2), np.nan, np.float32)) == 0).all()


def test_bad_input():
    with pytest.raises(InputError, match='unknown colormap'):
        colorize(np.zeros((2, 2), np.float32), colormap='rainbow')
    with pytest.raises(InputError, match='shape'):
        colorize(np.zeros((2, 2, 3), np.float32))
