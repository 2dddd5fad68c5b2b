"""Procedural 3D scenes rendered by vectorised ray casting: RGB + exact metric depth.

A scene is a closed, textured room (floor, walls, ceiling) holding randomly placed boxes
(rotated about the vertical axis) and spheres, seen by a pinhole camera that moves along a
smooth closed trajectory. Everything is derived from one integer seed, so frame ``i`` of
scene ``seed`` is bit-identical on every machine. Pure numpy.

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
    """

    def __init__(self, seed, height=96, width=128, hfov_deg=None, frames_per_loop=None,
                 noise=1.5, fog=True, clutter=False, photos=None):
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
        if clutter or photos:
            self._enrich(path, bool(clutter), photos)

        # Pixel ray directions in the camera frame with unit z: the hit parameter is z-depth.
        u, v = np.meshgrid(np.arange(self.width), np.arange(self.height))
        self._x = ((u - self.K[0, 2]) / self.K[0, 0]).ravel()
        self._y = ((v - self.K[1, 2]) / self.K[1, 1]).ravel()

    def _enrich(self, path, clutter, photos):
        """Add clutter, lighting variety and photo textures from a separate random stream."""
        rng = np.random.default_rng([self.seed, 0xC1077E2])
        if clutter:
            sy = self.room_hi[1]
            wanted = len(self.boxes) + len(self.spheres) + int(rng.integers(6, 17))
            for _ in range(400):
                if len(self.boxes) + len(self.spheres) >= wanted:
                    break
                size = rng.uniform(0.15, 0.5)
                centre = np.array([rng.uniform(self.room_lo[0] + size, self.room_hi[0] - size),
                                   0.0,
                                   rng.uniform(self.room_lo[2] + size, self.room_hi[2] - size)])
                clearance = np.hypot(path[:, 0] - centre[0], path[:, 2] - centre[2]).min()
                if clearance < 1.5 * size + 0.3:
                    continue
                if rng.random() < 0.4:
                    centre[1] = size if rng.random() < 0.5 else rng.uniform(size, sy - size)
                    self.spheres.append((centre, size, _Texture(rng, (0.1, 0.4))))
                else:
                    half = size * rng.uniform(0.4, 1.2, size=3)
                    lo = np.array([-half[0], 0.0, -half[2]])
                    hi = np.array([half[0], 2 * half[1], half[2]])
                    if rng.random() < 0.3:  # a shelf or picture hanging in the air
                        lo[1] = rng.uniform(0.3, sy - 2 * half[1] - 0.1)
                        hi[1] = lo[1] + 2 * half[1]
                    self.boxes.append((centre, _rotation_y(rng.uniform(0, math.pi)), lo, hi,
                                       _Texture(rng, (0.1, 0.4))))
            self.ambient = rng.uniform(0.1, 0.5)
            self.light_colour = rng.uniform(0.75, 1.0, size=3) / 0.875
        if photos:
            def swap(tex):
                return _PhotoTexture(rng, photos) if rng.random() < 0.5 else tex

            self.room_tex = [swap(t) for t in self.room_tex]
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
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)  # OpenCV camera y points down
        T = np.eye(4)
        T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, forward, pos
        return T

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

        # Room interior: the exit plane along each axis; the nearest of the three is hit.
        safe = np.where(np.abs(d) < _EPS, _EPS, d)
        bound = np.where(safe > 0, self.room_hi[None], self.room_lo[None])
        t_axes = (bound - origin[None]) / safe
        axis = np.argmin(t_axes, axis=1)
        t_best = t_axes[np.arange(n_rays), axis]
        sign = np.sign(safe[np.arange(n_rays), axis])
        normal[np.arange(n_rays), axis] = -sign
        obj[:] = axis * 2 + (sign > 0)  # 0..5: room faces
        hit = origin[None] + t_best[:, None] * d
        other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
        uv[:, 0] = hit[np.arange(n_rays), other[:, 0]]
        uv[:, 1] = hit[np.arange(n_rays), other[:, 1]]

        for k, (centre, rot, lo, hi, _tex) in enumerate(self.boxes):
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
        albedo = np.empty((n_rays, 3))
        for k, tex in enumerate(textures):
            sel = obj == k
            if sel.any():
                albedo[sel] = tex(uv[sel, 0], uv[sel, 1], footprint[sel])
        sun = np.clip(normal @ self.light_dir, 0.0, None)
        head = np.abs(np.einsum('ij,ij->i', normal, d)) / ray_len
        shade = self.ambient + (1 - self.ambient) * 0.8 * sun + self.headlight * head
        colour = albedo * shade[:, None] * self.light_colour[None]
        fog = np.exp(-dist / self.fog_distance)[:, None]
        colour = colour * fog + self.fog_colour[None] * (1 - fog)
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
