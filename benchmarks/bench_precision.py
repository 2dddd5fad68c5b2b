"""What each precision costs in depth accuracy and buys in speed, side by side in one run.

The embedded tiny DVD (trained here) on held-out synthetic clips, through
``DepthRegressor`` with each backend/precision pair that runs on this machine: the
spec's protocol (one disparity scale+shift per clip, then AbsRel / delta1 in depth,
boundary F1, flicker), the mean |disparity - float32 torch disparity|, and the median
time per window. FP8 is calibrated on a rendered synthetic room (the default), never on
the clips it is scored on.

    python benchmarks/bench_precision.py                 # CPU, ~2 min
    python benchmarks/bench_precision.py --device cuda   # adds torch bf16/fp16, TensorRT

Writes ``benchmarks/results/precision_<device>.md``.
"""

import argparse
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros.errors import BackendUnavailable  # noqa: E402
from dvd_ros.model.regressor import DepthRegressor  # noqa: E402
from dvd_ros.train.evaluate import evaluate, held_out_clips  # noqa: E402

# The reference arm runs first and again last: the two show the timing noise of the run.
CPU_ARMS = [('torch', 'float32', None), ('torch', 'bfloat16', None),
            ('torch', 'bfloat16', 'fp8'),
            ('onnxruntime', 'float32', 'fp32'), ('onnxruntime', 'float32', 'fp16'),
            ('onnxruntime', 'float32', 'fp8'), ('torch', 'float32', None)]
CUDA_ARMS = [('torch', 'float32', None), ('torch', 'bfloat16', None),
             ('torch', 'float16', None), ('torch', 'bfloat16', 'fp8'),
             ('tensorrt', 'float32', 'fp32'),
             ('tensorrt', 'float32', 'fp16'), ('tensorrt', 'float32', 'bf16'),
             ('tensorrt', 'float32', 'fp8'), ('torch', 'float32', None)]


class Timed:
    """``predict`` that records the seconds of every call."""

    def __init__(self, regressor):
        self.regressor, self.seconds = regressor, []

    def __call__(self, frames):
        """Return ``predict(frames)``, timing it."""
        start = time.perf_counter()
        out = self.regressor.predict(frames)
        self.seconds.append(time.perf_counter() - start)
        return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--clips', type=int, default=32, help='held-out clips (default 32)')
    parser.add_argument('--frames', type=int, default=5, help='frames per clip (4n+1)')
    parser.add_argument('--start', type=int, default=100000, help='first held-out scene seed')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads')
    parser.add_argument('--out', type=Path, default=None, help='markdown output file')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clips = held_out_clips(range(args.start, args.start + args.clips), frames=args.frames)
    height, width = clips[0][0].shape[1:3]
    arms = CUDA_ARMS if args.device == 'cuda' else CPU_ARMS
    rows, reference = [], None
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='dvd-precision-') as cache:
        for backend, dtype, precision in arms:
            name = f'{backend} {precision or dtype}'
            options = {} if precision is None else {'precision': precision, 'cache_dir': cache}
            if backend == 'torch' and precision:  # fp8 DiT in torch: calibrated at this size
                options = {'precision': precision, 'calibration_size': (height, width)}
            if backend == 'onnxruntime':
                options['threads'] = args.threads
            try:
                regressor = DepthRegressor.from_pretrained(
                    None, device=args.device, dtype=dtype, height=height, width=width,
                    backend=backend, **options)
            except BackendUnavailable as exc:
                rows.append({'arm': name, 'note': f'unavailable: {exc}'})
                print(f'{name:22s} unavailable: {exc}', flush=True)
                continue
            predict = Timed(regressor)
            predict(clips[0][0])  # first call: export / build, not timed below
            predict.seconds.clear()
            outputs = []

            def keep(frames, predict=predict, outputs=outputs):
                out = predict(frames)
                outputs.append(out)
                return out

            scores = evaluate(keep, clips)
            if reference is None:
                reference = outputs
            drift = float(np.mean([np.abs(a - b).mean() for a, b in zip(outputs, reference)]))
            rows.append({'arm': name, **scores, 'vs_fp32': drift,
                         'ms': 1e3 * statistics.median(predict.seconds)})
            print(f'{name:22s} AbsRel {scores["abs_rel"]:.4f} delta1 {scores["delta1"]:.4f} '
                  f'|d - fp32| {drift:.2e} window {rows[-1]["ms"]:.1f} ms', flush=True)
    lines = ['| backend precision | AbsRel | delta1 | boundary F1 | flicker | '
             'mean abs disparity vs torch float32 | ms per window |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        if 'note' in r:
            lines.append(f'| {r["arm"]} | {r["note"]} | | | | | |')
            continue
        lines.append(f'| {r["arm"]} | {r["abs_rel"]:.4f} | {r["delta1"]:.4f} | '
                     f'{r["boundary_f1"]:.4f} | {r["flicker"]:.4f} | {r["vs_fp32"]:.2e} | '
                     f'{r["ms"]:.1f} |')
    text = (f'# DVD precisions ({args.device}): embedded tiny model, {args.clips} held-out '
            f'{args.frames}-frame clips at {height}x{width} (seeds {args.start}+)\n\n'
            f'torch {torch.__version__}, {args.threads} thread(s); total '
            f'{time.perf_counter() - begin:.0f} s. Disparity in [0, 1].\n'
            f'Command: `{command_line("bench_precision.py", argv)}`\n\n'
            + '\n'.join(lines) + '\n')
    write_report(text, args.out, f'precision_{args.device}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
