"""Tests of the procedural ray-cast scenes."""

import numpy as np
import pytest

from dvd_ros.errors import InputError
from dvd_ros.synthetic import SyntheticScene


def test_render_shapes_dtypes_and_determinism():
    a = SyntheticScene(3, height=24, width=32).render(5)
    b = SyntheticScene(3, height=24, width=32).render(5)
    assert a.rgb.shape == (24, 32, 3) and a.rgb.dtype == np.uint8
    assert a.depth.shape == (24, 32) and a.depth.dtype == np.float32
    assert a.K.shape == (3, 3)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert np.isfinite(a.depth).all() and (a.depth > 0).all()


def test_seeds_differ_and_camera_moves_smoothly():
    s = SyntheticScene(1, height=24, width=32)
    other = SyntheticScene(2, height=24, width=32).render(0)
    f0, f1, f30 = s.render(0), s.render(1), s.render(30)
    assert not np.array_equal(f0.rgb, other.rgb)
    step = np.abs(f1.depth - f0.depth).mean()
    far_step = np.abs(f30.depth - f0.depth).mean()
    assert 0 < step < far_step


def test_depth_is_z_depth_consistent_with_intrinsics_and_pose():
    scene = SyntheticScene(4, height=30, width=40, hfov_deg=60, noise=0)
    frame = scene.render(7)
    fx = frame.K[0, 0]
    assert fx == pytest.approx(20.0 / np.tan(np.radians(30.0)))
    # Back-project every pixel to the world: all points lie inside the room box.
    v, u = np.mgrid[0:30, 0:40]
    z = frame.depth
    cam = np.stack([(u - frame.K[0, 2]) / fx * z, (v - frame.K[1, 2]) / frame.K[1, 1] * z, z], -1)
    world = cam.reshape(-1, 3) @ frame.pose[:3, :3].T + frame.pose[:3, 3]
    assert (world >= scene.room_lo - 1e-3).all() and (world <= scene.room_hi + 1e-3).all()
    # Something sits on a room face (the far wall or floor), within float32 rounding.
    lo_gap = np.abs(world - scene.room_lo).min(axis=1)
    hi_gap = np.abs(world - scene.room_hi).min(axis=1)
    assert (np.minimum(lo_gap, hi_gap) < 1e-3).mean() > 0.3


def test_frames_and_clip_agree_with_render():
    scene = SyntheticScene(9, height=16, width=24)
    rgb, depth = scene.clip(3, start=2, stride=2)
    assert rgb.shape == (3, 16, 24, 3) and depth.shape == (3, 16, 24)
    np.testing.assert_array_equal(rgb[1], scene.render(4).rgb)
    assert [f.index for f in scene.frames(3, start=2, stride=2)] == [2, 4, 6]


def test_rejects_bad_arguments():
    with pytest.raises(InputError, match='at least 8x8'):
        SyntheticScene(0, height=4, width=32)
    with pytest.raises(InputError, match='hfov_deg'):
        SyntheticScene(0, hfov_deg=200)


def test_clutter_and_photos_enrich_a_scene_and_keep_the_default_one():
    plain = SyntheticScene(8, height=24, width=32)
    again = SyntheticScene(8, height=24, width=32, clutter=False, photos=None)
    np.testing.assert_array_equal(plain.render(3).rgb, again.render(3).rgb)
    rng = np.random.default_rng(0)
    photos = [rng.uniform(0, 1, size=(16, 24, 3)).astype(np.float32)]
    rich = SyntheticScene(8, height=24, width=32, clutter=True, photos=photos)
    assert len(rich.boxes) + len(rich.spheres) > len(plain.boxes) + len(plain.spheres)
    np.testing.assert_array_equal(rich.room_lo, plain.room_lo)  # same room, more inside
    frame = rich.render(3)
    assert np.isfinite(frame.depth).all() and (frame.depth > 0).all()
    assert not np.array_equal(frame.rgb, plain.render(3).rgb)
    textures = rich.room_tex + [b[4] for b in rich.boxes] + [s[2] for s in rich.spheres]
    assert any(type(t).__name__ == '_PhotoTexture' for t in textures)
    a = SyntheticScene(8, height=24, width=32, clutter=True, photos=photos).render(3)
    np.testing.assert_array_equal(frame.rgb, a.rgb)


def test_photo_textures_come_from_scikit_image_samples_without_depth():
    pytest.importorskip('skimage')
    from dvd_ros.train.photos import PHOTOS, load_photos

    assert not any('motorcycle' in name for name in PHOTOS)  # stereo pair with disparity
    photos = load_photos(PHOTOS[:2], max_side=32)
    assert len(photos) == 2
    for p in photos:
        assert p.ndim == 3 and p.shape[2] == 3 and max(p.shape[:2]) <= 32
        assert p.dtype == np.float32 and 0.0 <= p.min() and p.max() <= 1.0
    with pytest.raises(InputError, match='motorcycle_left'):
        load_photos(['motorcycle_left'])
