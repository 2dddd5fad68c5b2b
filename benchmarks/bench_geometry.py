"""Depth image -> PointCloud2 bytes: vectorised geometry vs a naive per-point Python loop.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_geometry.py [--width 640 --height 480 --repeat 20]

Prints milliseconds per frame for both and their ratio (same machine, same run).
"""

import argparse
import math
import struct

import numpy as np
from timing import best_ms

from dvd_ros.geometry import PinholeIntrinsics, depth_to_points, disparity_to_depth, pack_points


def naive_cloud(depth, rgb, k):
    """Pack x, y, z, rgb point by point, the way a straightforward node loop would."""
    out = bytearray()
    h, w = depth.shape
    for v in range(h):
        for u in range(w):
            z = float(depth[v, u])
            if not (math.isfinite(z) and z > 0):
                x = y = z = float('nan')
            else:
                x = (u - k.cx) * z / k.fx
                y = (v - k.cy) * z / k.fy
            r, g, b = (int(c) for c in rgb[v, u])
            packed = struct.unpack('<f', struct.pack('<I', (r << 16) | (g << 8) | b))[0]
            out += struct.pack('<ffff', x, y, z, packed)
    return bytes(out)


def fast_cloud(disparity, rgb, k):
    depth = disparity_to_depth(disparity, 2.0, 0.2, max_depth=20.0)
    return pack_points(depth_to_points(depth, k), rgb)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--repeat', type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    w, h = args.width, args.height
    k = PinholeIntrinsics.from_fov(w, h, 70.0)
    disparity = rng.uniform(0.0, 1.0, (h, w)).astype(np.float32)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = disparity_to_depth(disparity, 2.0, 0.2, max_depth=20.0)

    fast = fast_cloud(disparity, rgb, k)
    assert fast.data == naive_cloud(depth, rgb, k) or np.allclose(
        np.frombuffer(fast.data, '<f4'), np.frombuffer(naive_cloud(depth, rgb, k), '<f4'),
        rtol=1e-6, equal_nan=True)
    t_fast = best_ms(lambda: fast_cloud(disparity, rgb, k), args.repeat)
    t_pack = best_ms(lambda: pack_points(depth_to_points(depth, k), rgb), args.repeat)
    t_naive = best_ms(lambda: naive_cloud(depth, rgb, k), 1)
    print(f'{w}x{h} organized cloud, x y z rgb float32 ({len(fast.data) / 1e6:.1f} MB)')
    print(f'  vectorised disparity->depth->points->bytes: {t_fast:8.2f} ms')
    print(f'  vectorised depth->points->bytes:            {t_pack:8.2f} ms')
    print(f'  naive per-point Python loop:                {t_naive:8.1f} ms')
    print(f'  ratio naive / vectorised (depth->bytes):    {t_naive / t_pack:8.0f} x')


if __name__ == '__main__':
    main()
