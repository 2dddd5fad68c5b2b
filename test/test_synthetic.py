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


def _digest(frames):
    import hashlib

    h = hashlib.sha256()
    for f in frames:
        h.update(f.rgb.tobytes())
        h.update(f.depth.tobytes())
    return h.hexdigest()


def test_default_scenes_are_unchanged_by_the_outdoor_option():
    # Digest of these frames rendered on main before `outdoor` existed: the shipped model's
    # training data (plain and rich scenes) must stay bit-identical.
    rng = np.random.default_rng(0)
    photos = [rng.uniform(0, 1, size=(16, 24, 3)).astype(np.float32)]
    frames = [SyntheticScene(s, height=16, width=24).render(3) for s in (0, 5)]
    frames.append(SyntheticScene(8, height=16, width=24, clutter=True, photos=photos).render(3))
    assert _digest(frames) == '6b0ad6f53ee81ebcb8cfae034f124ba1ec7080d67e1c500e4c07f756784664dd'
    explicit = SyntheticScene(0, height=16, width=24, outdoor=False).render(3)
    np.testing.assert_array_equal(explicit.rgb, frames[0].rgb)
    np.testing.assert_array_equal(explicit.depth, frames[0].depth)


def test_outdoor_scene_is_deterministic_with_ground_sky_and_level_camera():
    h, w = 32, 48
    v, u = np.mgrid[0:h, 0:w]
    top_has_sky = 0
    for seed in range(6):
        scene = SyntheticScene(seed, height=h, width=w, outdoor=True, noise=0)
        room = SyntheticScene(seed, height=h, width=w)
        np.testing.assert_array_equal(scene.K, room.K)  # same intrinsics convention and draw
        assert scene.frames_per_loop == room.frames_per_loop
        f = scene.render(11)
        again = SyntheticScene(seed, height=h, width=w, outdoor=True, noise=0).render(11)
        np.testing.assert_array_equal(f.rgb, again.rgb)
        np.testing.assert_array_equal(f.depth, again.depth)
        assert not np.array_equal(f.rgb, room.render(11).rgb)
        assert np.isfinite(f.depth).all() and (f.depth > 0).all()
        assert f.depth.max() < 100.0
        # Camera: orthonormal pose, 1.2-2.1 m up, looking within ~15 degrees of level.
        R = f.pose[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert 1.1 < f.pose[1, 3] < 2.1 and abs(R[1, 2]) < np.sin(np.radians(15))
        # Back-project: every point is on/above the ground, inside the far sky surface.
        z = f.depth.astype(np.float64)
        cam = np.stack([(u - f.K[0, 2]) / f.K[0, 0] * z, (v - f.K[1, 2]) / f.K[1, 1] * z, z], -1)
        world = cam.reshape(-1, 3) @ R.T + f.pose[:3, 3]
        radius = np.hypot(world[:, 0], world[:, 2])
        assert (world[:, 1] > -1e-3).all() and (world[:, 1] < scene.sky_top + 1e-3).all()
        assert (radius < scene.sky_radius + 1e-3).all()
        sky = (radius > scene.sky_radius - 1e-3) | (world[:, 1] > scene.sky_top - 1e-3)
        ground = np.abs(world[:, 1]) < 1e-3
        assert (z.ravel()[sky] > 25.0).all()  # the sky is far
        assert ground.reshape(h, w)[-1].any() and z[-1].max() < 10.0  # near ground below
        assert sky.reshape(h, w)[-1].sum() == 0
        top_has_sky += bool(sky.reshape(h, w)[0].any())
        # Far pixels sit above near ones in the image (a horizon between ground and sky).
        assert v.ravel()[sky].mean() < v.ravel()[z.ravel() < 5.0].mean()
    assert top_has_sky >= 4


def test_outdoor_camera_stays_clear_of_objects_and_composes_with_clutter_and_photos():
    scene = SyntheticScene(4, height=16, width=24, outdoor=True)
    assert len(scene.boxes) >= 3 and len(scene.spheres) >= 1
    heights = [hi[1] - lo[1] for _c, _r, lo, hi, _t in scene.boxes]
    assert max(heights) >= 3.0  # at least one building
    depths = np.stack([scene.render(i).depth for i in range(0, scene.frames_per_loop, 7)])
    assert depths.min() > 0.3  # nothing touches the camera anywhere on its path
    near = [np.minimum(scene.render(i).depth, 20.0) for i in (0, 1, 30)]  # smooth motion
    assert 0 < np.abs(near[1] - near[0]).mean() < np.abs(near[2] - near[0]).mean()
    rng = np.random.default_rng(0)
    photos = [rng.uniform(0, 1, size=(16, 24, 3)).astype(np.float32)]
    rich = SyntheticScene(4, height=16, width=24, outdoor=True, clutter=True, photos=photos)
    assert len(rich.boxes) + len(rich.spheres) > len(scene.boxes) + len(scene.spheres)
    assert rich.room_tex[2] is not None and [rich.room_tex[k] for k in (0, 1, 3, 4, 5)] == [
        None] * 5  # the sky is never photo textured
    frame = rich.render(5)
    assert np.isfinite(frame.depth).all() and (frame.depth > 0).all()
    again = SyntheticScene(4, height=16, width=24, outdoor=True, clutter=True, photos=photos)
    np.testing.assert_array_equal(frame.rgb, again.render(5).rgb)
    assert not np.array_equal(frame.rgb, scene.render(5).rgb)


def test_render_bank_orders_plain_rich_outdoor_seeds():
    pytest.importorskip('skimage')
    from dvd_ros.train.data import render_bank
    from dvd_ros.train.photos import load_photos

    kw = {'clips_per_seed': 2, 'frames': 2, 'height': 16, 'width': 24}
    bank = render_bank([1], rich_seeds=[2], outdoor_seeds=[3, 4], **kw)
    np.testing.assert_array_equal(bank.seeds, [1, 1, 2, 2, 3, 3, 4, 4])
    assert bank.rgb.shape == (8, 2, 16, 24, 3) and bank.depth.shape == (8, 2, 16, 24)
    plain = render_bank([1], **kw)
    np.testing.assert_array_equal(bank.rgb[:2], plain.rgb)
    photos = load_photos()
    rich = SyntheticScene(2, height=16, width=24, clutter=True, photos=photos)
    np.testing.assert_array_equal(bank.depth[2], rich.clip(2, stride=2)[1])
    out = SyntheticScene(4, height=16, width=24, clutter=True, photos=photos, outdoor=True)
    np.testing.assert_array_equal(bank.rgb[7], out.clip(2, start=37, stride=2)[0])
    assert bank.depth[4:].max() > 25.0 > bank.depth[:4].max()  # outdoor scenes see the sky


def test_outdoor_view_culling_changes_no_pixel():
    scene = SyntheticScene(6, height=24, width=32, outdoor=True, clutter=True)
    frames = [scene.render(i) for i in (0, 40, 90)]
    centres, radii = scene._bounds
    scene._bounds = (centres, radii + 1e6)  # every object passes the frustum test
    for f in frames:
        full = scene.render(f.index)
        np.testing.assert_array_equal(f.rgb, full.rgb)
        np.testing.assert_array_equal(f.depth, full.depth)
    assert (scene._in_view(frames[0].pose[:3, :3], frames[0].pose[:3, 3])).all()
    scene._bounds = (centres, radii)
    assert not scene._in_view(frames[0].pose[:3, :3], frames[0].pose[:3, 3]).all()
