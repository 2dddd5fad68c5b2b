"""Streaming at camera rate: a fixed-rate source -> the streaming worker -> outputs, no DDS.

The real streaming path of the node without ROS: frames arrive at ``--rate`` Hz into a
drop-oldest input queue of ``--queue`` frames (the node's ``queue_size``), the worker cuts
windows, runs the model, aligns, and a sink does the node's CPU work per output frame
(colorize, disparity -> depth -> organized points -> PointCloud2 bytes; ``--sink none``
skips it). Rows per setting ``window/overlap`` (or ``window/auto``) and model path:

* ``pipelined``: :class:`~dvd_ros.stream.pipeline.StreamPipeline` (the model runs window
  k+1 while window k is aligned and sunk), what the node runs;
* ``sequential``: one thread that runs ``StreamingDepth.push`` and then the sink, the node's
  former worker (for the settings in ``--sequential``).

Models: CUDA: the Wan2.1-1.3B DiT + Wan2.1 VAE, random weights, bfloat16, 480x640 frames;
paths ``eager`` (``--eager-options``) and ``fast`` (``--fast-options``, passed to
``DepthRegressor`` as keyword arguments: the fast CUDA path's options; a build that does not
accept them skips the row with the reason). CPU: ``--model stand-in`` (channel mean after a
sleep of ``--delay`` seconds per window frame: like a GPU it leaves the CPU free; default
0.03 s/frame ~ the eager H200 per-window time) or ``--model tiny`` (the embedded model).

Reported: sustained output frames/s (outputs between the first one and the end of the
source, per second), latency arrival -> output p50/p99, frames dropped, frames still pending
at the end, the overlap in force (auto: range over the run and last), model time per window
(median), peak GPU memory.

    python benchmarks/bench_stream_gpu.py                      # CPU, stand-in, ~3 min
    python benchmarks/bench_stream_gpu.py --device cuda        # 1.3B, eager + fast
    python benchmarks/bench_stream_gpu.py --device cuda --fast-options cuda_graphs=true

Writes a markdown table (``--out``, default ``benchmarks/results/stream_<device>.md``,
rewritten after every row) and, when matplotlib is installed, a PNG plot next to it.
"""

import argparse
from collections import deque
import math
import os
from pathlib import Path
import statistics
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros import geometry  # noqa: E402
from dvd_ros.colorize import colorize  # noqa: E402
from dvd_ros.stream.estimator import StreamingDepth  # noqa: E402
from dvd_ros.stream.pipeline import StreamPipeline  # noqa: E402

DEFAULT_SETTINGS = '9/4,9/2,25/8,auto'
AUTO_WINDOW = 25  # the window of a bare 'auto' setting
DRAIN_S = 30.0  # longest wait for the last windows after the source stopped


class DelayStandIn:
    """Channel mean as disparity after ``per_frame * T`` seconds of sleep (no CPU use)."""

    backend_name = 'stand-in'

    def __init__(self, per_frame):
        self.per_frame = per_frame

    def predict(self, frames):
        """Return ``(T, H, W)`` float32 after the window's delay."""
        time.sleep(self.per_frame * len(frames))
        return frames.astype(np.float32).mean(axis=-1) / np.float32(255.0)


class SequentialWorker:
    """The former node worker: one thread runs push (model + alignment), then the sink."""

    def __init__(self, streaming, sink, capacity):
        self.streaming, self.sink, self.capacity = streaming, sink, capacity
        self._queue = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name='sequential', daemon=True)
        self._thread.start()

    def push(self, frame, stamp, arrival):
        """Queue a frame; when full the oldest is dropped (counted as ``queue_full``)."""
        with self._cond:
            self._queue.append((frame, stamp, arrival))
            if len(self._queue) > self.capacity:
                self._queue.popleft()
                self.streaming.note_dropped('queue_full')
            self._cond.notify_all()
        return True

    def drain(self, timeout):
        """Wait until every queued frame has been processed; True when it has."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not (self._queue or self._busy)

    def cancel(self, timeout):
        """Stop the thread (after its current frame)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(0.05)
                if self._stop:
                    return
                item = self._queue.popleft()
                self._busy = True
            try:
                out = self.streaming.push(*item[:2], arrival=item[2])
                if out:
                    self.sink(out)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class Sink:
    """What the node does per output frame on the CPU, and the measurements."""

    def __init__(self, frames, streaming, clock, work=True):
        height, width = frames[0].shape[:2]
        self.frames, self.streaming, self.clock, self.work = frames, streaming, clock, work
        self.intrinsics = geometry.PinholeIntrinsics.from_fov(width, height, 70.0)
        self.out_times, self.latencies, self.overlaps, self.model_s = [], [], [], []
        self.bytes = 0

    def __call__(self, outputs):
        """Do the node's CPU work for the frames one window made final; time them."""
        stats = self.streaming.stats
        self.overlaps.append(stats.overlap)
        self.model_s.append(stats.last_model_seconds)
        for f in outputs:
            index, arrival = f.stamp
            if self.work:
                image = colorize(f.disparity)
                depth = geometry.disparity_to_depth(f.disparity, 1.0, 0.1)
                points = geometry.depth_to_points(depth, self.intrinsics)
                cloud = geometry.pack_points(points, self.frames[index % len(self.frames)])
                self.bytes += image.nbytes + len(cloud.data)
            now = self.clock()
            self.out_times.append(now)
            self.latencies.append(now - arrival)


def test_frames(count, height, width, seed=0):
    """Return ``count`` smooth moving (H, W, 3) uint8 frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(count):
        base = 0.5 + 0.3 * np.sin(xx / width * 6 + t * 0.2) * np.cos(yy / height * 4 - t * 0.1)
        img = np.stack([base, base * 0.8 + 0.1, 1 - base], -1) * 255
        out.append(np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8))
    return out


def parse_setting(text, overlap_min):
    """Return ``(label, window, overlap, options)`` of ``'9/4'``, ``'25/auto'`` or ``'auto'``."""
    text = text.strip()
    if text == 'auto':
        text = f'{AUTO_WINDOW}/auto'
    window, _, overlap = text.partition('/')
    window = int(window)
    if overlap == 'auto':
        start = max((window - 1) // 2, overlap_min)
        return text, window, start, {'overlap_mode': 'auto', 'overlap_min': overlap_min}
    return text, window, int(overlap), {}


def parse_options(text):
    """Return ``{name: value}`` of ``'a=1,b=true,c=name'`` (bools, ints, floats, strings)."""
    options = {}
    for part in filter(None, (p.strip() for p in (text or '').split(','))):
        name, _, value = part.partition('=')
        low = value.lower()
        if low in ('true', 'false'):
            options[name] = low == 'true'
        else:
            for kind in (int, float):
                try:
                    options[name] = kind(value)
                    break
                except ValueError:
                    continue
            else:
                options[name] = value
    return options


def run_row(regressor, frames, setting, worker, args, cuda):
    """Stream ``args.seconds`` of frames at ``args.rate`` Hz; return the row's figures."""
    label, window, overlap, options = setting
    clock = time.perf_counter
    sd = StreamingDepth(regressor, window, overlap, clock=clock, **options)
    sink = Sink(frames, sd, clock, work=args.sink == 'node')
    if worker == 'pipelined':
        runner = StreamPipeline(sd, sink, input_capacity=args.queue, overflow='drop_oldest',
                                name='bench')
    else:
        runner = SequentialWorker(sd, sink, args.queue)
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    total = max(1, round(args.seconds * args.rate))
    start = clock()
    for i in range(total):
        delay = start + i / args.rate - clock()
        if delay > 0:
            time.sleep(delay)
        now = clock()
        runner.push(frames[i % len(frames)], (i % len(frames), now), arrival=now)
    end = clock()
    runner.drain(DRAIN_S)
    runner.cancel(DRAIN_S)
    stats = sd.stats
    outs = sink.out_times
    during = [t for t in outs if t <= end]
    fps = ((len(during) - 1) / (end - during[0])) if len(during) > 1 and end > during[0] else 0
    lat = sorted(sink.latencies)
    row = {
        'setting': label, 'worker': worker, 'window': window, 'inputs': total,
        'outputs': len(outs), 'fps': fps, 'dropped': stats.dropped_total,
        'pending': total - len(outs) - stats.dropped_total,
        'p50': _percentile(lat, 50), 'p99': _percentile(lat, 99),
        'model': statistics.median(sink.model_s) if sink.model_s else math.nan,
        'overlap': _overlaps(sink.overlaps, overlap, options),
    }
    if cuda:
        import torch

        row['gpu_gib'] = torch.cuda.max_memory_allocated() / 2**30
    return row


def _percentile(values, q):
    if not values:
        return math.nan
    return float(np.percentile(values, q))


def _overlaps(seen, fixed, options):
    if not options:
        return str(fixed)
    if not seen:
        return f'auto (start {fixed})'
    return f'auto {min(seen)}-{max(seen)} (last {seen[-1]})'


def build_regressor(args, options):
    """Return the model of a path (or raise TypeError when the build rejects ``options``)."""
    if args.model == 'stand-in':
        return DelayStandIn(args.delay)
    import torch

    from dvd_ros.model.regressor import DepthRegressor
    if args.model == 'tiny':
        return DepthRegressor.from_pretrained(None, device=args.device, **options)
    if args.models is None:
        args.models = build_1p3b(args.device)
    return DepthRegressor(args.models, device=args.device, dtype=torch.bfloat16,
                          height=args.height, width=args.width, **options)


def build_1p3b(device, seed=0):
    """Random-weight Wan2.1-1.3B DiT + Wan2.1 VAE on ``device`` (float32, cast by the backend)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    import torch

    from dvd_ros.model import presets
    from dvd_ros.model.checkpoint import DVDModels

    torch.manual_seed(seed)
    vae = dict(presets.VAE_WAN21)
    vae['dim_mult'] = list(vae['dim_mult'])
    vae['temperal_downsample'] = list(vae['temperal_downsample'])
    with torch.device(device):
        transformer = WanTransformer3DModel(**presets.DIT_1P3B).eval()
        model = AutoencoderKLWan(**vae).eval()
    return DVDModels(transformer, model, presets.LATENTS_MEAN, presets.LATENTS_STD)


def warm_up(regressor, frames, windows):
    """Run each window size twice: kernels chosen, graphs captured, before the clock runs."""
    for window in sorted(set(windows)):
        batch = np.stack([frames[i % len(frames)] for i in range(window)])
        for _ in range(2):
            regressor.predict(batch)


def table(rows, notes):
    cuda = any('gpu_gib' in r for r in rows)
    head = ('| path | setting | worker | overlap | out fps | latency p50 / p99 (s) | dropped '
            '| pending | model s/window |' + (' GPU GiB |' if cuda else '') + '\n'
            '|---|---|---|---|---|---|---|---|---|' + ('---|' if cuda else '') + '\n')
    lines = []
    for r in rows:
        if 'skipped' in r:
            lines.append(f"| {r['path']} | {r['setting']} | {r['worker']} | skipped: "
                         f"{r['skipped']} |")
            continue
        lines.append(
            f"| {r['path']} | {r['setting']} | {r['worker']} | {r['overlap']} | {r['fps']:.1f} "
            f"| {r['p50']:.2f} / {r['p99']:.2f} | {r['dropped']} of {r['inputs']} "
            f"| {r['pending']} | {r['model']:.3f} |"
            + (f" {r['gpu_gib']:.1f} |" if cuda else ''))
    return head + '\n'.join(lines) + '\n' + ''.join(f'\n{n}' for n in notes)


def plot(rows, path, rate):
    """Write out fps and p99 latency bars when matplotlib is installed; return the path."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = [r for r in rows if 'fps' in r]
    if not measured:
        return None
    labels = [f"{r['path']}\n{r['setting']}\n{r['worker'][:4]}" for r in measured]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(labels)), 6),
                                      sharex=True)
    xs = range(len(labels))
    top.bar(xs, [r['fps'] for r in measured])
    top.axhline(rate, color='k', linestyle='--', label=f'camera {rate:g} Hz')
    top.set_ylabel('output frames / s')
    top.legend()
    bottom.bar(xs, [r['p99'] for r in measured], color='tab:orange')
    bottom.set_ylabel('latency p99 (s)')
    bottom.set_xticks(list(xs))
    bottom.set_xticklabels(labels, fontsize=7)
    fig.suptitle('DVD streaming at camera rate')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='default: cuda when torch sees one, else cpu')
    parser.add_argument('--model', choices=('stand-in', 'tiny', '1.3b'), default=None,
                        help='default: 1.3b on cuda, stand-in on cpu')
    parser.add_argument('--settings', default=DEFAULT_SETTINGS,
                        help='comma-separated window/overlap, window/auto or auto '
                             f'(= {AUTO_WINDOW}/auto); default %(default)s')
    parser.add_argument('--overlap-min', type=int, default=1, help='overlap_min of auto')
    parser.add_argument('--sequential', default='9/4',
                        help='settings that also get a sequential-worker row ("" = none)')
    parser.add_argument('--paths', default=None,
                        help='comma-separated model paths: eager, fast (default: both on '
                             'cuda, eager on cpu)')
    parser.add_argument('--eager-options', default='',
                        help='DepthRegressor keyword options of the eager path, a=1,b=true')
    parser.add_argument('--fast-options', default='cuda_graphs=true',
                        help='DepthRegressor keyword options of the fast CUDA path '
                             '(default %(default)s)')
    parser.add_argument('--rate', type=float, default=None,
                        help='camera frames/s (default 30 on cuda, 20 on cpu)')
    parser.add_argument('--seconds', type=float, default=None,
                        help='source seconds per row (default 6 on cuda, 12 on cpu)')
    parser.add_argument('--height', type=int, default=None,
                        help='frame height (default 480 on cuda, 240 on cpu)')
    parser.add_argument('--width', type=int, default=None,
                        help='frame width (default 640 on cuda, 320 on cpu)')
    parser.add_argument('--queue', type=int, default=32,
                        help='input queue (frames), oldest dropped when full (node queue_size)')
    parser.add_argument('--sink', choices=('node', 'none'), default='node',
                        help="per-frame CPU work after the stream: the node's, or none")
    parser.add_argument('--delay', type=float, default=0.03,
                        help='stand-in: seconds per window frame (default %(default)s)')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (cpu)')
    parser.add_argument('--out', type=Path, default=None, help='markdown output file')
    args = parser.parse_args(argv)
    if args.device is None:
        try:
            import torch

            args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
        except ImportError:
            args.device = 'cpu'
    cuda = args.device == 'cuda'
    args.model = args.model or ('1.3b' if cuda else 'stand-in')
    if args.model == '1.3b' and not cuda:
        parser.error('--model 1.3b needs --device cuda (too slow on a CPU)')
    args.rate = args.rate or (30.0 if cuda else 20.0)
    args.seconds = args.seconds or (6.0 if cuda else 12.0)
    args.height = args.height or (480 if cuda else 240)
    args.width = args.width or (640 if cuda else 320)
    args.models = None
    if args.model != 'stand-in':
        import torch

        torch.set_num_threads(args.threads)
    settings = [parse_setting(s, args.overlap_min) for s in args.settings.split(',')
                if s.strip()]
    sequential = {parse_setting(s, args.overlap_min)[0] for s in args.sequential.split(',')
                  if s.strip()}
    paths = (args.paths or ('eager,fast' if cuda else 'eager')).split(',')
    path_options = {'eager': parse_options(args.eager_options),
                    'fast': parse_options(args.fast_options)}
    frames = test_frames(16, args.height, args.width)
    rows, notes = [], []
    started = time.perf_counter()
    out = args.out or Path(__file__).resolve().parent / 'results' / f'stream_{args.device}.md'

    def report(final):
        model = {'stand-in': f'stand-in model, {args.delay:g} s per window frame (sleeps: '
                 'leaves the CPU free like a GPU)', 'tiny': 'embedded tiny model',
                 '1.3b': 'Wan2.1-1.3B DiT + Wan2.1 VAE, random weights, bfloat16'}[args.model]
        state = '' if final else ' (incomplete: rewritten after every row)'
        text = (f'# DVD streaming at camera rate ({args.device})\n\n'
                f'{environment(args)}; {model}; camera {args.rate:g} Hz, '
                f'{args.width}x{args.height}, {args.seconds:g} s per row, input queue '
                f'{args.queue} (oldest dropped), sink: {args.sink}; total run '
                f'{time.perf_counter() - started:.0f} s{state}.\n'
                'out fps: outputs from the first one to the end of the source, per second; '
                'latency: frame arrival -> output after the sink; pending: frames still in '
                'the last, incomplete window at the end.\n\n'
                f'`{command_line("bench_stream_gpu.py", argv)}`\n\n' + table(rows, notes))
        write_report(text, out, quiet=not final)

    for path in paths:
        options = path_options.get(path, {}) if args.model != 'stand-in' else {}
        if path not in path_options:
            notes.append(f'- path {path!r}: unknown (eager, fast); skipped')
            continue
        try:
            regressor = build_regressor(args, options)
        except TypeError as exc:
            for setting in settings:
                rows.append({'path': path, 'setting': setting[0], 'worker': 'pipelined',
                             'skipped': f'options {options} not accepted by this build'})
            notes.append(f'- path {path}: {type(exc).__name__}: {exc}')
            report(False)
            continue
        warm_up(regressor, frames, [s[1] for s in settings])
        for setting in settings:
            for worker in ('pipelined', 'sequential'):
                if worker == 'sequential' and setting[0] not in sequential:
                    continue
                row = run_row(regressor, frames, setting, worker, args, cuda)
                row['path'] = path if args.model != 'stand-in' else 'stand-in'
                rows.append(row)
                print(row, flush=True)
                report(False)
        del regressor
    if args.model == 'stand-in' and 'fast' in paths:
        notes.append('- the fast CUDA path needs --device cuda; the stand-in has one path')
    png = plot(rows, out.with_suffix('.png'), args.rate)
    notes.append(f'- plot: {png.name}' if png else
                 '- plot: skipped (matplotlib is not installed)')
    report(True)


def environment(args):
    import platform

    parts = [f'python {platform.python_version()}']
    if args.model != 'stand-in' or args.device == 'cuda':
        import torch

        parts.append(f'torch {torch.__version__}')
        if args.device == 'cuda':
            parts.append(f'GPU {torch.cuda.get_device_name()}')
    parts.append(f'{os.cpu_count()} CPU cores')
    return ', '.join(parts)


if __name__ == '__main__':
    main()
