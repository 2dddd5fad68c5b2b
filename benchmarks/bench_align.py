"""Cost of aligning one window: least-squares scale/shift over the overlap, plus stitching.

Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_align.py [--overlap 21 --width 640 --height 480]
        [--drift 320]

Prints milliseconds per window for each fit variant (same machine, same run).
"""

import argparse
import time

import numpy as np
from timing import best_ms

from dvd_ros.stream.align import (
    apply_alignment,
    crossfade,
    disagreement_confidence,
    fit_scale_shift,
)
from dvd_ros.stream.estimator import StreamingDepth


class ConstantRegressor:
    """Return a fixed window of disparity at once, so only the streaming overhead is timed."""

    def __init__(self, window, height, width):
        rng = np.random.default_rng(1)
        self.out = rng.uniform(0.0, 1.0, (window, height, width)).astype(np.float32)

    def predict(self, frames):
        """Return the first ``len(frames)`` frames of the fixed output."""
        return self.out[: len(frames)]


class Oracle:
    """Ground truth under a random affine per window, a smooth per-window bias and noise."""

    def __init__(self, seed, noise, bias, height=12, width=16):
        self.rng = np.random.default_rng(seed)
        self.noise, self.bias = noise, bias
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)

    def truth(self, t):
        """Return the ground-truth disparity of frame ``t``."""
        g = 0.35 + 0.25 * np.sin(0.4 * self.xx + 0.3 * self.yy + 0.05 * t)
        g += 0.1 * np.cos(0.2 * self.yy - 0.03 * t)
        cx = 8 + 6 * np.sin(0.02 * t)
        return g + 0.3 * np.exp(-((self.xx - cx) ** 2 + (self.yy - 6) ** 2) / 8)

    def predict(self, frames):
        """Return the distorted truth for the frames (indices encoded in pixel (0, 0))."""
        idx = frames[:, 0, 0, 0].astype(int) + 256 * frames[:, 0, 0, 1].astype(int)
        a, c = self.rng.uniform(0.85, 1.15), self.rng.uniform(-0.05, 0.05)
        k = self.rng.uniform(0.1, 0.5, 2)
        field = self.bias * np.sin(self.rng.uniform(0, 6) + k[0] * self.xx + k[1] * self.yy)
        out = np.stack([a * (self.truth(i) + field) + c for i in idx])
        return (out + self.noise * self.rng.standard_normal(out.shape)).astype(np.float32)


def drift(n, seed, noise, bias, **kw):
    """Stream n oracle frames; return the drift of the output against the truth.

    Drift = max over windows of |per-window affine map truth->output - the first window's map|
    over the truth's range, relative to the output range (0 = none).
    """
    oracle = Oracle(seed, noise, bias)
    sd = StreamingDepth(oracle, 13, 4, **kw)
    out = []
    for i in range(n):
        f = np.zeros((12, 16, 3), np.uint8)
        f[0, 0, 0], f[0, 0, 1] = i % 256, i // 256
        out += sd.push(f, i)
    out += sd.flush()
    g = np.stack([oracle.truth(f.index) for f in out]).astype(np.float64)
    o = np.stack([f.disparity for f in out]).astype(np.float64)
    wins = np.array([f.window for f in out])
    maps = [np.polyfit(g[wins == k].ravel(), o[wins == k].ravel(), 1) for k in np.unique(wins)]
    grid = np.linspace(g.min(), g.max(), 11)
    first = np.polyval(maps[0], grid)
    return max(np.abs(np.polyval(m, grid) - first).max() for m in maps) / np.ptp(first)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--overlap', type=int, default=21)
    parser.add_argument('--window', type=int, default=81)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--drift', type=int, default=0, metavar='FRAMES',
                        help='also measure drift on oracle streams of this many frames')
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
        ms = best_ms(lambda kw=kw: fit_scale_shift(x, y, **kw), args.repeat)
        print(f'  fit {label:30s} {ms:8.1f} ms   scale {fit.scale:.4f} shift {fit.shift:.4f}')
    fit = fit_scale_shift(x, y)
    ms = best_ms(lambda: apply_alignment(window, fit), args.repeat)
    print(f'  apply scale/shift + clamp to the window    {ms:8.1f} ms')
    ms = best_ms(lambda: crossfade(y, x), args.repeat)
    print(f'  cross-fade the overlap                      {ms:8.1f} ms')
    ms = best_ms(lambda: disagreement_confidence(y, x), args.repeat)
    print(f'  confidence map from the overlap             {ms:8.1f} ms')

    hop = args.window - args.overlap
    for policy in ('immediate', 'blend'):
        sd = StreamingDepth(ConstantRegressor(args.window, args.height, args.width),
                            args.window, args.overlap, policy=policy)
        frame = np.zeros((args.height, args.width, 3), np.uint8)
        for i in range(args.window):
            sd.push(frame, i)
        per_window, per_frame = [], []
        for _ in range(max(3, args.repeat)):
            t0 = time.perf_counter()
            for i in range(hop - 1):
                sd.push(frame, i)
            per_frame.append((time.perf_counter() - t0) / (hop - 1))
            t0 = time.perf_counter()
            sd.push(frame, i)  # this push runs the window
            per_window.append(time.perf_counter() - t0)
        print(f'  StreamingDepth ({policy:9s}) push that runs a window: median '
              f'{np.median(per_window) * 1e3:6.1f} ms, min {min(per_window) * 1e3:6.1f} ms '
              f'(model excluded); other pushes {np.median(per_frame) * 1e3:.2f} ms')

    if args.drift:
        print(f'drift on oracle streams of {args.drift} frames (window 13, overlap 4; mean and '
              'max over 3 seeds)')
        for noise, bias in ((0.01, 0.01), (0.02, 0.02)):
            for label, kw in (('reference OLS', {'symmetric': False}),
                              ('symmetric (default)', {}),
                              ('symmetric + prior 0.01', {'drift_strength': 0.01})):
                d = [drift(args.drift, seed, noise, bias, **kw) for seed in range(3)]
                print(f'  noise {noise} bias {bias}  {label:24s} mean {np.mean(d):.3f} '
                      f'max {np.max(d):.3f}')


if __name__ == '__main__':
    main()
