"""Frames per second of the synthetic ray caster at a few sizes (one process, one core)."""

import time

from dvd_ros.synthetic import SyntheticScene


def main():
    for height, width in ((64, 96), (96, 128), (240, 320)):
        scenes = [SyntheticScene(s, height=height, width=width) for s in range(4)]
        n = 0
        t0 = time.perf_counter()
        for scene in scenes:
            for _ in scene.frames(25):
                n += 1
        dt = time.perf_counter() - t0
        print(f'{height}x{width}: {n / dt:7.1f} frames/s ({n} frames, {dt:.2f} s)')


if __name__ == '__main__':
    main()
