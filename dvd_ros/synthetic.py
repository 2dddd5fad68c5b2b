"""Procedural 3D scenes rendered by vectorised ray casting: RGB + exact metric depth.

A scene is a closed, textured room (floor, walls, ceiling) holding randomly placed boxes
(rotated about the vertical axis) and spheres, seen by a pinhole camera that moves along a
smooth closed trajectory. ``outdoor=True`` gives an open scene instead: textured ground, a far
sky surface, buildings and trees. Everything is derived from one integer seed, so frame ``i``
of scene ``seed`` is bit-identical on every machine. Pure numpy.

Conventions: world frame right-handed with ``+y`` up (floor at ``y = 0``); camera frame is the
OpenCV one (x right, y down, z forward); ``K`` maps camera coordinates to pixel *indices*
(pixel ``(u, v)`` has its centre at ``u = (x / z) fx + cx``, ``cx = (W - 1) / 2``); depth is the
z-depth along the optical axis, in metres (what a depth camera reports), never the ray length.
"""

from dataclasses import dataclass
import math

import numpy as np

from dvd_ros.errors import InputError

_EPS = 1e-6


@dataclass(frozen=True)
class SyntheticFrame:
    """One rendered frame: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) float32 metres, ``K``."""

    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    index: int = 0
    pose: np.ndarray | None = None  # (4, 4) float64 camera-to-world


def _rotation_y(angle):
    """Return the (3, 3) rotation about the world +y axis by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class _Texture:
    """A procedural 2-D pattern with two colours, evaluated on surface coordinates (u, v)."""

    KINDS = ('checker', 'stripes', 'grid', 'blobs', 'bricks')

    def __init__(self, rng, scale_range=(0.25, 0.8)):
        self.kind = self.KINDS[int(rng.integers(len(self.KINDS)))]
        self.period = float(rng.uniform(*scale_range))  # metres per pattern cycle
        base = rng.uniform(0.15, 0.95, size=3)
        other = np.clip(base * rng.uniform(0.3, 0.8) + rng.uniform(-0.15, 0.25, size=3), 0, 1)
        self.c0, self.c1 = base, other
        self.phase = rng.uniform(0, 2 * math.pi, size=4)
        self.angle = float(rng.uniform(0, math.pi))

    def __call__(self, u, v, footprint):
        """Return (N, 3) albedo; ``footprint`` (N,) is the pixel size in metres on the surface."""
        f = 2 * math.pi / self.period
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        if self.kind == 'checker':
            m = 0.5 + 0.5 * np.sign(np.sin(f * u + self.phase[0]) * np.sin(f * v + self.phase[1]))
        elif self.kind == 'stripes':
            m = 0.5 + 0.5 * np.sin(f * (ca * u + sa * v) + self.phase[0])
        elif self.kind == 'grid':
            gu = np.abs(np.sin(f * u / 2 + self.phase[0]))
            gv = np.abs(np.sin(f * v / 2 + self.phase[1]))
            m = ((gu < 0.2) | (gv < 0.2)).astype(np.float64)
        elif self.kind == 'bricks':
            row = np.floor(v / (self.period * 0.5))
            shifted = u / self.period + 0.5 * (row % 2)
            mortar = (np.abs(shifted - np.round(shifted)) < 0.06) | (
                np.abs(v / (self.period * 0.5) - np.round(v / (self.period * 0.5))) < 0.1)
            m = 1.0 - mortar.astype(np.float64)
        else:  # blobs: a sum of sines, smooth organic patches
            m = (np.sin(f * u + self.phase[0]) + np.sin(f * 0.7 * v + self.phase[1])
                 + np.sin(f * 0.5 * (u + v) + self.phase[2])
                 + np.sin(f * 1.3 * (u - v) + self.phase[3]))
            m = 0.5 + 0.5 * np.tanh(m)
        # Fade to the mean colour where the pattern is finer than about two pixels: a cheap
        # prefilter that avoids aliasing and makes texture density a distance cue.
        contrast = np.clip(1.5 - 2.0 * footprint / self.period * 4.0, 0.0, 1.0)
        m = 0.5 + (m - 0.5) * contrast
        return self.c0[None] * m[:, None] + self.c1[None] * (1.0 - m[:, None])


class _PhotoTexture:
    """A photograph tiled over a surface (nearest texel), with a random tint and period."""

    def __init__(self, rng, photos, scale_range=(1.5, 5.0)):
        self.image = photos[int(rng.integers(len(photos)))]
        self.period = float(rng.uniform(*scale_range))  # metres per photo width
        self.tint = rng.uniform(0.6, 1.2, size=3)
        self.mean = self.image.reshape(-1, 3).mean(0)
        self.offset = rng.uniform(0, 1, size=2)

    def __call__(self, u, v, footprint):
        """Return (N, 3) albedo in [0, 1] (same contract as ``_Texture``)."""
        h, w = self.image.shape[:2]
        texel = self.period / w  # metres per texel
        x = np.floor((u / texel + self.offset[0] * w) % w).astype(np.int64)
        y = np.floor((-v / texel + self.offset[1] * h) % h).astype(np.int64)
        colour = self.image[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
        # Where a pixel covers many texels, fade to the mean colour (cheap anti-aliasing).
        contrast = np.clip(1.5 - footprint / (4.0 * texel), 0.0, 1.0)[:, None]
        colour = self.mean[None] + (colour - self.mean[None]) * contrast
        return np.clip(colour * self.tint[None], 0.0, 1.0)


def _hash01(iu, iv, salt):
    """Return a deterministic pseudo-random value in [0, 1) per integer cell ``(iu, iv)``."""
    h = (iu * 374761393 + iv * 668265263 + salt) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return (h ^ (h >> 16)) / 4294967296.0


class _NoiseTexture:
    """Natural materials: grainy speckle over soft patches, two colours from a palette."""

    # kind: (dark colour, light colour, grain size in metres, patch period in metres)
    PALETTES = {
        'grass': ((0.16, 0.30, 0.08), (0.45, 0.58, 0.22), (0.03, 0.08), (1.0, 6.0)),
        'gravel': ((0.35, 0.33, 0.30), (0.70, 0.66, 0.60), (0.02, 0.05), (0.6, 3.0)),
        'asphalt': ((0.12, 0.12, 0.13), (0.36, 0.36, 0.37), (0.015, 0.04), (2.0, 8.0)),
        'dirt': ((0.28, 0.20, 0.12), (0.58, 0.45, 0.30), (0.03, 0.1), (0.8, 4.0)),
        'foliage': ((0.08, 0.20, 0.05), (0.35, 0.52, 0.15), (0.05, 0.15), (0.5, 2.0)),
        'bark': ((0.18, 0.12, 0.07), (0.38, 0.28, 0.18), (0.02, 0.05), (0.2, 0.6)),
    }

    def __init__(self, rng, kind):
        dark, light, grain, patch = self.PALETTES[kind]
        jitter = rng.uniform(0.8, 1.2, size=3)
        self.c0 = np.clip(np.asarray(dark) * jitter, 0, 1)
        self.c1 = np.clip(np.asarray(light) * jitter * rng.uniform(0.9, 1.15), 0, 1)
        self.grain = float(rng.uniform(*grain))
        self.period = float(rng.uniform(*patch))
        self.salt = int(rng.integers(1 << 30))
        self.angles = rng.uniform(0, math.pi, size=3)
        self.phase = rng.uniform(0, 2 * math.pi, size=3)
        self.speckle = float(rng.uniform(0.6, 1.0))
        # Asphalt sometimes carries painted lines (strong perspective cues).
        self.lines = kind == 'asphalt' and rng.random() < 0.6
        self.line_period = float(rng.uniform(3.0, 8.0))

    def __call__(self, u, v, footprint):
        """Return (N, 3) albedo in [0, 1] (same contract as ``_Texture``)."""
        patches = np.zeros_like(u)
        for k, scale in enumerate((1.0, 0.45, 0.2)):
            f = 2 * math.pi / (self.period * scale)
            ca, sa = math.cos(self.angles[k]), math.sin(self.angles[k])
            fade = np.clip(1.5 - footprint / (self.period * scale) * 4.0, 0.0, 1.0)
            wave = (np.sin(f * (ca * u + sa * v) + self.phase[k])
                    * np.sin(f * 0.8 * (ca * v - sa * u) + 2 * self.phase[k]))
            patches += fade * wave / (k + 1.0)
        grain = _hash01(np.floor(u / self.grain).astype(np.int64),
                        np.floor(v / self.grain).astype(np.int64), self.salt) - 0.5
        grain *= np.clip(1.5 - footprint / self.grain * 0.5, 0.0, 1.0)
        m = np.clip(0.5 + 0.35 * patches + self.speckle * grain, 0.0, 1.0)
        colour = self.c0[None] * (1.0 - m[:, None]) + self.c1[None] * m[:, None]
        if self.lines:
            w = 0.12 / self.line_period
            x = np.abs((u / self.line_period) - np.round(u / self.line_period))
            line = (x < w) * np.clip(1.5 - footprint / 0.12 * 2.0, 0.0, 1.0)
            colour = colour * (1 - line[:, None]) + 0.85 * line[:, None]
        return colour


class _FacadeTexture:
    """A building wall: plain colour with a regular grid of windows (same period both ways)."""

    WALLS = ((0.75, 0.72, 0.66), (0.60, 0.32, 0.24), (0.55, 0.55, 0.55), (0.82, 0.78, 0.62),
             (0.40, 0.42, 0.45))

    def __init__(self, rng):
        wall = np.asarray(self.WALLS[int(rng.integers(len(self.WALLS)))])
        self.wall = np.clip(wall * rng.uniform(0.8, 1.15, size=3), 0, 1)
        self.window = np.clip(rng.uniform(0.1, 0.35) * np.array([0.8, 0.9, 1.1])
                              + rng.uniform(0, 0.1, size=3), 0, 1)
        self.period = float(rng.uniform(2.5, 4.0))
        self.fraction = float(rng.uniform(0.3, 0.6))
        self.offset = rng.uniform(0, 1, size=2)
        self.mean = self.wall + (self.window - self.wall) * self.fraction ** 2

    def __call__(self, u, v, footprint):
        """Return (N, 3) albedo in [0, 1] (same contract as ``_Texture``)."""
        fu = (u / self.period + self.offset[0]) % 1.0
        fv = (v / self.period + self.offset[1]) % 1.0
        m = ((fu < self.fraction) & (fv < self.fraction)).astype(np.float64)
        colour = self.wall[None] * (1 - m[:, None]) + self.window[None] * m[:, None]
        contrast = np.clip(1.5 - footprint / self.period * 6.0, 0.0, 1.0)[:, None]
        return self.mean[None] + (colour - self.mean[None]) * contrast


class SyntheticScene:
    """A random room with boxes and spheres and a camera on a smooth closed path.

    :param seed: integer seed; the scene, path, lighting and sensor noise all derive from it
    :param height: image height in pixels
    :param width: image width in pixels
    :param hfov_deg: horizontal field of view in degrees; ``None`` draws one in [55, 75]
    :param frames_per_loop: frames for one full turn of the camera path (smoothness of motion)
    :param noise: standard deviation of additive sensor noise, in 8-bit units (0 disables)
    :param fog: enable distance fog (an extra, realistic depth cue)
    :param clutter: add 6-16 small objects (and vary the lighting more); the default scene of
        a seed is unchanged (these draws use their own random stream)
    :param photos: optional sequence of (h, w, 3) float images in [0, 1]: about half of the
        surfaces are then textured with one of them instead of a procedural pattern
    :param outdoor: an open outdoor scene instead of a room (its own random stream, see
        :meth:`_build_outdoor`): textured ground (grass, gravel, asphalt, dirt, paving or a
        photograph), sky with clouds and a distant skyline, buildings, trees, walls and the
        usual boxes and spheres; the camera moves at 1.2-2 m height, looking about level
    """

    def __init__(self, seed, height=96, width=128, hfov_deg=None, frames_per_loop=None,
                 noise=1.5, fog=True, clutter=False, photos=None, outdoor=False):
        if int(height) < 8 or int(width) < 8:
            raise InputError(f'image size must be at least 8x8 pixels, got {height}x{width}')
        if hfov_deg is not None and not 10.0 <= float(hfov_deg) <= 150.0:
            raise InputError(f'hfov_deg must be in [10, 150] degrees, got {hfov_deg}')
        self.seed = int(seed)
        self.height, self.width = int(height), int(width)
        self.noise = float(noise)
        rng = np.random.default_rng([self.seed, 0x5EED])
        hfov = float(hfov_deg) if hfov_deg is not None else float(rng.uniform(55, 75))
        fx = (self.width / 2.0) / math.tan(math.radians(hfov) / 2.0)
        self.K = np.array([[fx, 0.0, (self.width - 1) / 2.0],
                           [0.0, fx, (self.height - 1) / 2.0],
                           [0.0, 0.0, 1.0]])
        self.frames_per_loop = int(frames_per_loop or rng.integers(160, 400))

        self.outdoor = bool(outdoor)
        if self.outdoor:
            path = self._build_outdoor(np.random.default_rng([self.seed, 0x0D00A]), fog)
        else:
            path = self._build_room(rng, fog)
        if clutter or photos:
            self._enrich(path, bool(clutter), photos)
        self._bounds = None
        if self.outdoor:  # bounding spheres of all objects, for view culling
            centres = [c + rot @ ((lo + hi) / 2) for c, rot, lo, hi, _t in self.boxes]
            radii = [np.linalg.norm(hi - lo) / 2 for _c, _r, lo, hi, _t in self.boxes]
            centres += [c for c, _r, _t in self.spheres]
            radii += [r for _c, r, _t in self.spheres]
            self._bounds = (np.reshape(centres, (-1, 3)), np.asarray(radii, dtype=np.float64))

        # Pixel ray directions in the camera frame with unit z: the hit parameter is z-depth.
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        self._x = ((u - self.K[0, 2]) / self.K[0, 0]).ravel()
        self._y = ((v - self.K[1, 2]) / self.K[1, 1]).ravel()

    def _build_room(self, rng, fog):
        """Draw the room, camera path, objects and lighting -> (97, 3) path samples."""
        # Room: an axis-aligned box, camera inside.
        sx, sz = rng.uniform(5.0, 14.0), rng.uniform(5.0, 14.0)
        sy = rng.uniform(2.6, 4.5)
        self.room_lo = np.array([-sx / 2, 0.0, -sz / 2])
        self.room_hi = np.array([sx / 2, sy, sz / 2])
        self.room_tex = [_Texture(rng, (0.3, 1.2)) for _ in range(6)]

        # Camera path: a wobbly ellipse; the look-at target drifts around the room centre.
        self.path_a = sx / 2 * rng.uniform(0.25, 0.55)
        self.path_b = sz / 2 * rng.uniform(0.25, 0.55)
        self.path_phase = rng.uniform(0, 2 * math.pi)
        self.path_dir = 1.0 if rng.random() < 0.5 else -1.0
        self.cam_height = rng.uniform(0.8, min(2.0, sy - 0.5))
        self.bob = rng.uniform(0.0, 0.25)
        self.look_mode = rng.uniform(0.0, 1.0)  # 0: look at centre, 1: look along the path
        self.target_wobble = rng.uniform(0.2, 1.5, size=2)

        # Objects, kept clear of the camera path.
        path = np.stack([self._position(k) for k in np.linspace(0, self.frames_per_loop, 97)])
        self.boxes, self.spheres = [], []
        n_objects = int(rng.integers(6, 15))
        for _ in range(400):
            if len(self.boxes) + len(self.spheres) >= n_objects:
                break
            is_sphere = rng.random() < 0.4
            size = rng.uniform(0.25, 1.1)
            centre = np.array([rng.uniform(self.room_lo[0] + size, self.room_hi[0] - size), 0.0,
                               rng.uniform(self.room_lo[2] + size, self.room_hi[2] - size)])
            if is_sphere:
                centre[1] = size if rng.random() < 0.6 else rng.uniform(size, sy - size)
            else:
                centre[1] = size * rng.uniform(0.6, 1.6)
            clearance = np.hypot(path[:, 0] - centre[0], path[:, 2] - centre[2]).min()
            if clearance < 1.5 * size + 0.3:
                continue
            if is_sphere:
                self.spheres.append((centre, size, _Texture(rng, (0.15, 0.5))))
            else:
                half = np.array([size * rng.uniform(0.5, 1.2), centre[1],
                                 size * rng.uniform(0.5, 1.2)])
                centre[1] = 0.0  # boxes stand on the floor
                lo = np.array([-half[0], 0.0, -half[2]])
                hi = np.array([half[0], 2 * half[1], half[2]])
                self.boxes.append((centre, _rotation_y(rng.uniform(0, math.pi)), lo, hi,
                                   _Texture(rng, (0.15, 0.6))))

        light = np.array([rng.uniform(-1, 1), rng.uniform(1.0, 2.0), rng.uniform(-1, 1)])
        self.light_dir = light / np.linalg.norm(light)
        self.ambient = rng.uniform(0.25, 0.45)
        self.headlight = rng.uniform(0.0, 0.35)
        self.fog_distance = rng.uniform(12.0, 30.0) if fog else math.inf
        self.fog_colour = rng.uniform(0.5, 0.9) * np.ones(3)
        self.light_colour = np.ones(3)
        self._area_lo, self._area_hi = self.room_lo, self.room_hi
        return path

    def _build_outdoor(self, rng, fog):
        """Draw an open outdoor scene, camera path and lighting -> (97, 3) path samples.

        The ground is the plane ``y = 0`` (a procedural grass, gravel, asphalt, dirt or paving
        texture). The sky is a far surface: a vertical cylinder of radius 55-75 m about the scene
        centre, capped by a flat ceiling 30-45 m up, shaded as sky (a horizon-to-zenith
        gradient, soft clouds and a hazy skyline of hills or distant buildings painted on the
        cylinder's foot), never lit by the sun or the headlight and never fogged. Sky pixels
        carry the z-depth of that surface (about 30-90 m), so every depth stays finite and
        positive. Buildings (3-25 m tall) stand 8-45 m from the centre, trees (a box trunk and a
        sphere crown) and low walls 3-40 m, boxes and spheres near the camera path; all keep
        clear of the path. Fog is aerial perspective toward the horizon colour.
        """
        self.sky_radius = float(rng.uniform(55.0, 75.0))
        self.sky_top = float(rng.uniform(30.0, 45.0))
        self.room_lo = np.array([-self.sky_radius, 0.0, -self.sky_radius])
        self.room_hi = np.array([self.sky_radius, self.sky_top, self.sky_radius])
        kind = ('grass', 'grass', 'gravel', 'asphalt', 'dirt', 'paving')[int(rng.integers(6))]
        if kind == 'paving':
            ground = _Texture(rng, (0.3, 0.8))
            ground.kind = 'bricks'
            ground.c0 = rng.uniform(0.4, 0.7) * rng.uniform(0.9, 1.1, size=3)
            ground.c1 = ground.c0 * rng.uniform(0.5, 0.8)
        else:
            ground = _NoiseTexture(rng, kind)
        self.room_tex = [None, None, ground, None, None, None]  # 2: ground; others: sky

        self.path_a, self.path_b = rng.uniform(2.0, 8.0, size=2)
        self.path_phase = rng.uniform(0, 2 * math.pi)
        self.path_dir = 1.0 if rng.random() < 0.5 else -1.0
        self.cam_height = rng.uniform(1.2, 2.0)
        self.bob = rng.uniform(0.0, 0.08)
        self.look_mode = rng.uniform(0.0, 1.0)
        self.target_wobble = rng.uniform(0.1, 0.4, size=2) * min(self.path_a, self.path_b)
        self.pitch = rng.uniform(-0.2, 0.05)  # radians, negative looks down
        path = np.stack([self._position(k) for k in np.linspace(0, self.frames_per_loop, 97)])
        self.boxes, self.spheres = [], []

        def place(lo_dist, hi_dist, keep_out):
            """Draw a ground point ``lo_dist``-``hi_dist`` from the centre, clear of the path."""
            for _ in range(50):
                r, a = rng.uniform(lo_dist, hi_dist), rng.uniform(0, 2 * math.pi)
                centre = np.array([r * math.cos(a), 0.0, r * math.sin(a)])
                if np.hypot(path[:, 0] - centre[0], path[:, 2] - centre[2]).min() > keep_out:
                    return centre
            return None

        def box(centre, half_x, half_z, y0, y1, tex):
            self.boxes.append((centre, _rotation_y(rng.uniform(0, math.pi)),
                               np.array([-half_x, y0, -half_z]), np.array([half_x, y1, half_z]),
                               tex))

        for _ in range(int(rng.integers(3, 9))):  # buildings
            half = rng.uniform(2.5, 10.0, size=2)
            centre = place(8.0 + half.max(), 45.0, math.hypot(*half) + 2.0)
            if centre is not None:
                box(centre, half[0], half[1], 0.0, rng.uniform(3.0, 25.0), _FacadeTexture(rng))
        for _ in range(int(rng.integers(0, 4))):  # low walls and fences
            length, thick = rng.uniform(1.5, 6.0), rng.uniform(0.08, 0.3)
            centre = place(4.0, 25.0, length + 1.0)
            if centre is not None:
                box(centre, length, thick, 0.0, rng.uniform(0.5, 2.0), _Texture(rng, (0.2, 0.8)))
        for _ in range(int(rng.integers(3, 13))):  # trees
            crown, trunk = rng.uniform(0.8, 2.5), rng.uniform(1.5, 4.0)
            centre = place(3.0, 40.0, crown + 0.8)
            if centre is not None:
                girth = rng.uniform(0.1, 0.3)
                box(centre, girth, girth, 0.0, trunk + 0.5 * crown, _NoiseTexture(rng, 'bark'))
                top = centre + np.array([0.0, trunk + 0.6 * crown, 0.0])
                self.spheres.append((top, crown, _NoiseTexture(rng, 'foliage')))
        lo, hi = path.min(0) - 6.0, path.max(0) + 6.0
        for _ in range(int(rng.integers(4, 11))):  # boxes and spheres near the path
            size = rng.uniform(0.3, 1.2)
            centre = np.array([rng.uniform(lo[0], hi[0]), 0.0, rng.uniform(lo[2], hi[2])])
            if np.hypot(path[:, 0] - centre[0], path[:, 2] - centre[2]).min() < 1.5 * size + 0.5:
                continue
            if rng.random() < 0.4:
                centre[1] = size
                self.spheres.append((centre, size, _Texture(rng, (0.15, 0.5))))
            else:
                half = size * rng.uniform(0.5, 1.2, size=3)
                box(centre, half[0], half[2], 0.0, 2 * half[1], _Texture(rng, (0.15, 0.6)))
        self._area_lo = np.array([lo[0], 0.0, lo[2]])
        self._area_hi = np.array([hi[0], 3.0, hi[2]])

        elevation, azimuth = rng.uniform(0.25, 1.2), rng.uniform(0, 2 * math.pi)
        self.light_dir = np.array([math.cos(elevation) * math.cos(azimuth), math.sin(elevation),
                                   math.cos(elevation) * math.sin(azimuth)])
        self.ambient = rng.uniform(0.3, 0.55)
        self.headlight = rng.uniform(0.0, 0.1)
        self.light_colour = np.array([1.0, rng.uniform(0.9, 1.0), rng.uniform(0.8, 1.0)]) / 0.95
        # Sky: clear, hazy, overcast or evening; horizon and zenith colours, clouds, skyline.
        horizon, zenith = (((0.75, 0.85, 0.95), (0.25, 0.45, 0.85)),
                           ((0.85, 0.87, 0.88), (0.55, 0.65, 0.80)),
                           ((0.78, 0.78, 0.80), (0.58, 0.60, 0.64)),
                           ((0.95, 0.72, 0.52), (0.30, 0.40, 0.70)))[int(rng.integers(4))]
        self.sky_horizon = np.clip(np.asarray(horizon) * rng.uniform(0.9, 1.05, size=3), 0, 1)
        self.sky_zenith = np.clip(np.asarray(zenith) * rng.uniform(0.85, 1.1, size=3), 0, 1)
        self.sky_gamma = rng.uniform(0.4, 0.8)
        self.cloud_cover = rng.uniform(0.0, 0.7)
        self.cloud_waves = rng.uniform(1.0, 4.0, size=(3, 3))  # rows: freq, angle, phase
        self.cloud_colour = rng.uniform(0.85, 1.0) * np.ones(3)
        self.skyline = ('hills', 'city', 'none')[int(rng.integers(3))]
        self.skyline_height = rng.uniform(2.0, 12.0)
        self.skyline_waves = rng.uniform(0, 2 * math.pi, size=5)
        self.skyline_salt = int(rng.integers(1 << 30))
        haze = rng.uniform(0.35, 0.7)
        far = rng.uniform(0.15, 0.35) * np.array([0.9, 1.0, 1.05])
        self.skyline_colour = far * (1 - haze) + self.sky_horizon * haze
        self.fog_distance = rng.uniform(80.0, 250.0) if fog else math.inf
        self.fog_colour = self.sky_horizon
        return path

    def _enrich(self, path, clutter, photos):
        """Add clutter, lighting variety and photo textures from a separate random stream."""
        rng = np.random.default_rng([self.seed, 0xC1077E2])
        if clutter:
            sy = self._area_hi[1]
            wanted = len(self.boxes) + len(self.spheres) + int(rng.integers(6, 17))
            for _ in range(400):
                if len(self.boxes) + len(self.spheres) >= wanted:
                    break
                size = rng.uniform(0.15, 0.5)
                centre = np.array([rng.uniform(self._area_lo[0] + size, self._area_hi[0] - size),
                                   0.0,
                                   rng.uniform(self._area_lo[2] + size, self._area_hi[2] - size)])
                clearance = np.hypot(path[:, 0] - centre[0], path[:, 2] - centre[2]).min()
                if clearance < 1.5 * size + 0.3:
                    continue
                if rng.random() < 0.4:
                    # Outdoors nothing floats: the same draws, the object stays on the ground.
                    centre[1] = size if rng.random() < 0.5 or self.outdoor else rng.uniform(
                        size, sy - size)
                    self.spheres.append((centre, size, _Texture(rng, (0.1, 0.4))))
                else:
                    half = size * rng.uniform(0.4, 1.2, size=3)
                    lo = np.array([-half[0], 0.0, -half[2]])
                    hi = np.array([half[0], 2 * half[1], half[2]])
                    if rng.random() < 0.3 and not self.outdoor:  # a shelf or a picture
                        lo[1] = rng.uniform(0.3, sy - 2 * half[1] - 0.1)
                        hi[1] = lo[1] + 2 * half[1]
                    self.boxes.append((centre, _rotation_y(rng.uniform(0, math.pi)), lo, hi,
                                       _Texture(rng, (0.1, 0.4))))
            self.ambient = rng.uniform(0.1, 0.5)
            self.light_colour = rng.uniform(0.75, 1.0, size=3) / 0.875
        if photos:
            def swap(tex, scale_range=(1.5, 5.0)):
                # Facades keep their windows (a far photo fades to its mean colour).
                if rng.random() < 0.5 and not isinstance(tex, _FacadeTexture):
                    return _PhotoTexture(rng, photos, scale_range)
                return tex

            # Not the sky; an outdoor ground photo is stretched to stay visible far away.
            ground = (4.0, 12.0) if self.outdoor else (1.5, 5.0)
            self.room_tex = [t if t is None else swap(t, ground if k == 2 else (1.5, 5.0))
                             for k, t in enumerate(self.room_tex)]
            self.boxes = [(c, r, lo, hi, swap(t)) for c, r, lo, hi, t in self.boxes]
            self.spheres = [(c, r, swap(t)) for c, r, t in self.spheres]

    # ----------------------------------------------------------------------------------------
    # camera
    def _position(self, i):
        a = self.path_dir * 2 * math.pi * i / self.frames_per_loop + self.path_phase
        return np.array([self.path_a * math.cos(a) * (1 + 0.1 * math.sin(3 * a)),
                         self.cam_height + self.bob * math.sin(2 * a),
                         self.path_b * math.sin(a)])

    def pose(self, i):
        """Return the (4, 4) float64 camera-to-world transform of frame ``i``."""
        pos = self._position(i)
        ahead = self._position(i + self.frames_per_loop / 16.0)
        a = 2 * math.pi * i / self.frames_per_loop
        centre = np.array([self.target_wobble[0] * math.sin(0.7 * a + 1.0),
                           self.cam_height * 0.8,
                           self.target_wobble[1] * math.cos(0.5 * a)])
        target = (1 - self.look_mode) * centre + self.look_mode * ahead
        forward = target - pos
        forward[1] *= 0.5
        if self.outdoor:  # level, tilted by the scene's pitch and a slow nod
            forward[1] = 0.0
            forward /= np.linalg.norm(forward)
            pitch = self.pitch + 0.04 * math.sin(1.3 * a + 0.5)
            forward = forward * math.cos(pitch) + np.array([0.0, math.sin(pitch), 0.0])
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)  # OpenCV camera y points down
        T = np.eye(4)
        T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, pos
        return T

    def _room_interior(self, origin, d, t_best, normal, obj, uv):
        """Hit the room box from inside: fill ``t_best``, ``normal``, ``obj``, ``uv`` in place."""
        n_rays = d.shape[0]
        # Room interior: the exit plane along each axis; the nearest of the three is hit.
        safe = np.where(np.abs(d) < _EPS, _EPS, d)
        bound = np.where(safe > 0, self.room_hi[None], self.room_lo[None])
        t_axes = (bound - origin[None]) / safe
        axis = np.argmin(t_axes, axis=1)
        t_best[:] = t_axes[np.arange(n_rays), axis]
        sign = np.sign(safe[np.arange(n_rays), axis])
        normal[np.arange(n_rays), axis] = -sign
        obj[:] = axis * 2 + (sign > 0)  # 0..5: room faces
        hit = origin[None] + t_best[:, None] * d
        other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        uv[:, 0] = hit[np.arange(n_rays), other[:, 0]]
        uv[:, 1] = hit[np.arange(n_rays), other[:, 1]]


    def _open_ground(self, origin, d):
        """Hit the ground plane or the far sky surface -> (t, normal, obj, uv); obj 2 / 3."""
        dy = d[:, 1]
        t_floor = np.where(dy < -_EPS, -origin[1] / np.minimum(dy, -_EPS), np.inf)
        t_top = np.where(dy > _EPS, (self.sky_top - origin[1]) / np.maximum(dy, _EPS), np.inf)
        a = d[:, 0] ** 2 + d[:, 2] ** 2
        b = origin[0] * d[:, 0] + origin[2] * d[:, 2]
        c = origin[0] ** 2 + origin[2] ** 2 - self.sky_radius ** 2  # < 0: inside
        t_wall = (-b + np.sqrt(b * b - a * c)) / np.maximum(a, _EPS)
        t = np.minimum(np.minimum(t_floor, t_top), t_wall)
        ground = t_floor <= t
        normal = np.zeros_like(d)
        normal[:, 1] = np.where(ground, 1.0, -1.0)
        obj = np.where(ground, 2, 3).astype(np.int64)
        hit = origin[None] + t[:, None] * d
        return t, normal, obj, hit[:, [0, 2]].copy()

    def _in_view(self, R, origin):
        """Return a (n_objects,) bool: may the object's bounding sphere meet the view frustum."""
        centres, radii = self._bounds
        c = (centres - origin[None]) @ R  # camera frame
        visible = c[:, 2] > -radii
        for axis, half in ((0, (self.K[0, 2] + 1) / self.K[0, 0]),
                           (1, (self.K[1, 2] + 1) / self.K[1, 1])):
            norm = math.hypot(1.0, half)
            visible &= np.abs(c[:, axis]) - half * c[:, 2] <= radii * norm
        return visible

    def _sky_colour(self, origin, d, t):
        """Return (n, 3) sky colours for sky rays ``d`` hitting the far surface at ``t``."""
        dn = d / np.linalg.norm(d, axis=1, keepdims=True)
        elev = dn[:, 1]
        g = np.clip(elev, 0.0, 1.0) ** self.sky_gamma
        colour = self.sky_horizon[None] + (self.sky_zenith - self.sky_horizon)[None] * g[:, None]
        if self.cloud_cover > 0:
            q = dn[:, [0, 2]] / np.maximum(elev, 0.03)[:, None]  # on a plane 1 cloud-height up
            m = np.zeros(len(d))
            for freq, angle, phase in self.cloud_waves.T:
                m += np.sin(freq * (math.cos(angle) * q[:, 0] + math.sin(angle) * q[:, 1])
                            + 2 * phase)
            cover = np.clip((m / 3 + self.cloud_cover - 0.5) * 2.5, 0.0, 1.0)
            cover *= np.clip((elev - 0.02) / 0.15, 0.0, 1.0) * 0.9
            colour = colour * (1 - cover[:, None]) + self.cloud_colour[None] * cover[:, None]
        if self.skyline != 'none':
            hit = origin[None] + t[:, None] * d
            az = np.arctan2(hit[:, 2], hit[:, 0])
            if self.skyline == 'hills':
                w = self.skyline_waves
                h = 0.5 + 0.25 * (np.sin(2 * az + w[0]) + np.sin(3 * az + w[1])
                                  + 0.5 * np.sin(7 * az + w[2]) + 0.3 * np.sin(13 * az + w[3]))
            else:  # distant buildings: a random height per angular cell
                cell = np.floor((az + math.pi) / (2 * math.pi) * 90).astype(np.int64)
                h = _hash01(cell, cell * 7 + 3, self.skyline_salt)
                h = np.where(h < 0.3, 0.05, h)
            far = hit[:, 1] < np.maximum(h, 0.02) * self.skyline_height
            colour[far] = self.skyline_colour
        return colour

    # ----------------------------------------------------------------------------------------
    # rendering
    def render(self, i):
        """Render frame ``i`` (any integer; the path is periodic) -> :class:`SyntheticFrame`."""
        i = int(i)
        T = self.pose(i)
        R, origin = T[:3, :3], T[:3, 3]
        d = (self._x[:, None] * R[None, :, 0] + self._y[:, None] * R[None, :, 1]
             + R[None, :, 2])  # (N, 3), unit z in the camera frame
        n_rays = d.shape[0]
        t_best = np.full(n_rays, np.inf)
        normal = np.zeros((n_rays, 3))
        obj = np.full(n_rays, -1, dtype=np.int64)
        uv = np.zeros((n_rays, 2))

        visible = None
        if self.outdoor:
            t_best, normal, obj, uv = self._open_ground(origin, d)
            visible = self._in_view(R, origin)
        else:
            self._room_interior(origin, d, t_best, normal, obj, uv)

        for k, (centre, rot, lo, hi, _tex) in enumerate(self.boxes):
            if visible is not None and not visible[k]:
                continue
            o_l = (origin - centre) @ rot  # world -> box frame (rot is orthonormal)
            d_l = d @ rot
            s_l = np.where(np.abs(d_l) < _EPS, _EPS, d_l)
            t1 = (lo[None] - o_l[None]) / s_l
            t2 = (hi[None] - o_l[None]) / s_l
            tmin_axes = np.minimum(t1, t2)
            t_near = tmin_axes.max(axis=1)
            t_far = np.maximum(t1, t2).min(axis=1)
            better = (t_near <= t_far) & (t_near > 1e-3) & (t_near < t_best)
            if not better.any():
                continue
            ax = np.argmax(tmin_axes[better], axis=1)
            n_l = np.zeros((int(better.sum()), 3))
            n_l[np.arange(len(ax)), ax] = -np.sign(s_l[better][np.arange(len(ax)), ax])
            t_best[better] = t_near[better]
            normal[better] = n_l @ rot.T
            obj[better] = 6 + k
            p_l = o_l[None] + t_near[better, None] * d_l[better]
            oth = np.array([[1, 2], [0, 2], [0, 1]])[ax]
            uv[better, 0] = p_l[np.arange(len(ax)), oth[:, 0]]
            uv[better, 1] = p_l[np.arange(len(ax)), oth[:, 1]]

        dd = np.einsum('ij,ij->i', d, d)
        for k, (centre, radius, _tex) in enumerate(self.spheres):
            if visible is not None and not visible[len(self.boxes) + k]:
                continue
            oc = origin - centre
            b = d @ oc
            c = oc @ oc - radius * radius
            disc = b * b - dd * c
            ok = disc > 0
            t = np.where(ok, (-b - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)
            better = ok & (t > 1e-3) & (t < t_best)
            if not better.any():
                continue
            p = origin[None] + t[better, None] * d[better]
            nrm = (p - centre[None]) / radius
            t_best[better] = t[better]
            normal[better] = nrm
            obj[better] = 6 + len(self.boxes) + k
            uv[better, 0] = np.arctan2(nrm[:, 2], nrm[:, 0]) * radius
            uv[better, 1] = np.arccos(np.clip(nrm[:, 1], -1, 1)) * radius

        # Shading: texture albedo x (ambient + sun + headlight), then fog.
        ray_len = np.sqrt(dd)
        dist = t_best * ray_len
        cos_view = np.abs(normal @ R[:, 2])
        footprint = dist / self.K[0, 0] / np.maximum(cos_view, 0.2)
        textures = self.room_tex + [b[4] for b in self.boxes] + [s[2] for s in self.spheres]
        albedo = np.zeros((n_rays, 3))
        for k, tex in enumerate(textures):
            sel = obj == k
            if tex is not None and sel.any():
                albedo[sel] = tex(uv[sel, 0], uv[sel, 1], footprint[sel])
        sun = np.clip(normal @ self.light_dir, 0.0, None)
        head = np.abs(np.einsum('ij,ij->i', normal, d)) / ray_len
        shade = self.ambient + (1 - self.ambient) * 0.8 * sun + self.headlight * head
        colour = albedo * shade[:, None] * self.light_colour[None]
        fog = np.exp(-dist / self.fog_distance)[:, None]
        colour = colour * fog + self.fog_colour[None] * (1 - fog)
        if self.outdoor:
            sky = obj == 3
            colour[sky] = self._sky_colour(origin, d[sky], t_best[sky])
        rgb = colour.reshape(self.height, self.width, 3) * 255.0
        if self.noise > 0:
            rng = np.random.default_rng([self.seed, 0xF00D, i & 0x7FFFFFFF])
            rgb = rgb + rng.normal(0.0, self.noise, size=rgb.shape)
        rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
        depth = t_best.reshape(self.height, self.width).astype(np.float32)
        return SyntheticFrame(rgb=rgb, depth=depth, K=self.K.copy(), index=i, pose=T)

    def frames(self, n, start=0, stride=1):
        """Yield ``n`` consecutive frames ``start, start + stride, ...`` as SyntheticFrame."""
        if int(n) < 0 or int(stride) < 1:
            raise InputError(f'need n >= 0 and stride >= 1, got n={n}, stride={stride}')
        for k in range(int(n)):
            yield self.render(int(start) + k * int(stride))

    def clip(self, n, start=0, stride=1):
        """Render ``n`` frames -> (rgb (n, H, W, 3) uint8, depth (n, H, W) float32 metres)."""
        frames = list(self.frames(n, start, stride))
        return (np.stack([f.rgb for f in frames]), np.stack([f.depth for f in frames]))
