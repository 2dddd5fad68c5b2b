"""Cost of aligning one window: least-squares scale/shift over the overlap, plus stitching.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_align.py [--overlap 21 --width 640 --height 480]

Prints milliseconds per window for each fit variant (same machine, same run).
"""

import argparse
import math
import time

import numpy as np

from dvd_ros.stream.align import (
    apply_alignment,
    crossfade,
    disagreement_confidence,
    fit_scale_shift,
)


def timed(fn, repeat):
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--overlap', type=int, default=21)
    parser.add_argument('--window', type=int, default=81)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--repeat', type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.overlap, args.height, args.width)
    x = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    y = (0.9 * x + 0.05 + rng.normal(0, 0.01, shape)).astype(np.float32)
    y[:, 100:200, 100:250] += 0.3  # a moving object
    window = rng.uniform(0.0, 1.0, (args.window, args.height, args.width)).astype(np.float32)
    print(f'overlap {args.overlap}x{args.height}x{args.width} '
          f'({x.size / 1e6:.1f} M pixels), window {args.window} frames')
    for label, kw in (('least squares (reference)', {}),
                      ('symmetric (streaming default)', {'symmetric': True}),
                      ('huber IRLS', {'robust': 'huber'}),
                      ('tukey IRLS', {'robust': 'tukey'}),
                      ('trimmed 20 %', {'robust': 'trim'})):
        fit = fit_scale_shift(x, y, **kw)
        ms = timed(lambda kw=kw: fit_scale_shift(x, y, **kw), args.repeat)
        print(f'  fit {label:30s} {ms:8.1f} ms   scale {fit.scale:.4f} shift {fit.shift:.4f}')
    fit = fit_scale_shift(x, y)
    ms = timed(lambda: apply_alignment(window, fit), args.repeat)
    print(f'  apply scale/shift + clamp to the window    {ms:8.1f} ms')
    ms = timed(lambda: crossfade(y, x), args.repeat)
    print(f'  cross-fade the overlap                      {ms:8.1f} ms')
    ms = timed(lambda: disagreement_confidence(y, x), args.repeat)
    print(f'  confidence map from the overlap             {ms:8.1f} ms')


if __name__ == '__main__':
    main()
