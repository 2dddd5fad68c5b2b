"""`dvd-ros demo`: synthetic camera -> depth node over loopback DDS, scored against truth.

Writes into ``--out``: ``demo.png`` (rows: RGB | predicted depth | ground truth),
``cloud.ply`` (the node's metric point cloud of one frame), ``recording.npz`` (every array
the scores come from) and ``metrics.json``; prints the scores. ``score_recording`` recomputes
the scores from ``recording.npz`` alone.
"""

import json
from pathlib import Path
import time

import numpy as np

from dvd_ros.cli.main import CliError

# Held-out scene seeds start here: the embedded model was trained on lower seeds.
DEMO_SEED = 100_000


def add_parser(subparsers):
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        'demo', help='synthetic camera -> depth node demo with accuracy report',
        description='Run the synthetic camera and the depth node (embedded tiny model, or '
        '--weights) in one process over loopback DDS, then write a picture, a PLY cloud and '
        'the accuracy against ground truth.')
    parser.add_argument('--out', default='out/demo', help='output folder (default out/demo)')
    parser.add_argument('--weights', default='',
                        help='DVD weights (release .safetensors or converted folder); default: '
                        'the embedded tiny model')
    parser.add_argument('--device', default='cpu', help='torch device (cpu, cuda:0)')
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16', 'float16'))
    parser.add_argument('--frames', type=int, default=40, help='frames to score (default 40)')
    parser.add_argument('--seed', type=int, default=DEMO_SEED, help='synthetic scene seed')
    parser.add_argument('--height', type=int, default=96, help='camera height (px)')
    parser.add_argument('--width', type=int, default=128, help='camera width (px)')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate (Hz)')
    parser.add_argument('--window', type=int, default=None,
                        help='model window (4n+1 frames); default: what the weights recommend '
                        '(5 for the embedded model), else 9')
    parser.add_argument('--overlap', type=int, default=None,
                        help='window overlap (frames); default: (window - 1) / 2')
    parser.add_argument('--timeout', type=float, default=300.0,
                        help='give up after this many seconds')
    parser.add_argument('--domain-id', type=int, default=None, metavar='ID',
                        help='ROS domain of the demo (e.g. to watch it in RViz); default: a '
                        'private one no other process on this host uses (ROS_DOMAIN_ID is '
                        'ignored: the demo is self-contained)')
    parser.set_defaults(func=run)
    return parser


def _check_args(args):
    if args.window is None:
        from dvd_ros.model.checkpoint import recommended_window
        args.window = recommended_window(args.weights or None) or 9
    if args.overlap is None:
        args.overlap = (args.window - 1) // 2
    if args.frames < 2:
        raise CliError(f'--frames {args.frames}: need at least 2 frames to score')
    if args.window < 1 or args.window % 4 != 1:
        raise CliError(f'--window {args.window}: use 4n+1 frames (e.g. 9, 25, 45, 81)')
    if not 0 <= args.overlap < args.window:
        raise CliError(f'--overlap {args.overlap}: must be >= 0 and smaller than --window '
                       f'{args.window}')
    if min(args.height, args.width) < 16:
        raise CliError(f'--height/--width {args.height}x{args.width}: at least 16 px each')
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        raise CliError(f'--domain-id {args.domain_id}: ROS domains are 0..232 (0..101 are '
                       'safe on Linux)')
    if args.weights and not Path(args.weights).exists():
        raise CliError(f'--weights {args.weights}: no such file or folder (see `dvd-ros '
                       'weights` for where the official weights are published)')


def run(args):
    """Run the demo; returns the exit status."""
    _check_args(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f'cannot create --out {out}: {exc.strerror}; choose a writable '
                       'folder') from None

    from dvd_ros.errors import DvdError
    from dvd_ros.ros.recorder import record_demo

    camera = {'source': 'synthetic', 'seed': args.seed, 'height': args.height,
              'width': args.width, 'rate': args.rate,
              'num_frames': max(args.frames, args.window) + args.window, 'loop': True}
    depth = {'weights': args.weights, 'device': args.device, 'dtype': args.dtype,
             'window': args.window, 'overlap': args.overlap, 'metric_mode': 'anchored',
             'hint_type': 'image', 'queue_size': 64}
    print(f'demo: synthetic camera {args.width}x{args.height} @ {args.rate:g} Hz (seed '
          f'{args.seed}) -> depth node ({args.weights or "embedded tiny model"}, window '
          f'{args.window}, overlap {args.overlap}); metric depth anchored to ground-truth '
          'hints', flush=True)
    started = time.monotonic()
    try:
        recording = record_demo(camera, depth, args.frames, args.timeout,
                                log=lambda line: print(line, flush=True),
                                domain_id=args.domain_id)
    except DvdError as exc:
        raise CliError(str(exc)) from None
    stamps = recording.complete_stamps()[:args.frames]
    if len(stamps) < 2:
        raise CliError(f'only {len(stamps)} frames came back from the depth node within '
                       f'{args.timeout:g} s; raise --timeout or lower --rate')
    arrays = _arrays(recording, stamps)
    np.savez_compressed(out / 'recording.npz', **arrays)
    metrics = score_recording(arrays)
    metrics['wall_seconds'] = round(time.monotonic() - started, 2)
    metrics['diagnostics'] = dict(recording.diagnostics)
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    _write_picture(out / 'demo.png', arrays)
    cloud = _write_cloud(out / 'cloud.ply', recording, stamps)
    print(format_metrics(metrics))
    print(f'demo: wrote {out / "demo.png"}, {out / "cloud.ply"} ({cloud} points), '
          f'{out / "recording.npz"}, {out / "metrics.json"}')
    return 0


def _arrays(recording, stamps):
    shape = recording.disparity[stamps[0]].shape
    nan = np.full(shape, np.nan, np.float32)
    truth = np.stack([recording.truth[s] for s in stamps]).astype(np.float32)
    disparity = np.stack([recording.disparity[s] for s in stamps]).astype(np.float32)
    if truth.shape != disparity.shape:
        raise CliError(f'ground truth {truth.shape[1:]} and disparity {disparity.shape[1:]} '
                       'differ in size; run the demo with output_scale 1')
    return {
        'stamps_ns': np.array(stamps, np.int64),
        'rgb': np.stack([recording.rgb[s] for s in stamps]),
        'truth_depth': truth,
        'disparity': disparity,
        'metric_depth': np.stack([recording.depth.get(s, nan) for s in stamps]),
    }


def score_recording(arrays):
    """Score a recording (the arrays of ``recording.npz``) -> dict of metrics.

    ``protocol``: the spec's protocol (one scale+shift per sequence in disparity space, then
    depth metrics); ``baseline``: the same for a constant (mean-disparity) prediction;
    ``online_metric``: the node's own metric depth (anchored fit), no fitting afterwards.
    """
    from dvd_ros.train.evaluate import evaluate_clip

    truth = arrays['truth_depth']
    protocol = evaluate_clip(arrays['disparity'], truth)
    baseline = evaluate_clip(np.ones_like(arrays['disparity']), truth)
    metric = arrays['metric_depth']
    valid = np.isfinite(metric) & (truth > 0) & np.isfinite(truth)
    online = {'coverage': float(valid.mean())}
    if valid.any():
        ratio = metric[valid] / truth[valid]
        online['abs_rel'] = float(np.mean(np.abs(ratio - 1)))
        online['delta1'] = float(np.mean(np.maximum(ratio, 1 / ratio) < 1.25))
    return {'frames': int(len(truth)), 'protocol': protocol, 'baseline': baseline,
            'online_metric': online}


def format_metrics(metrics):
    """Return the printed accuracy summary for :func:`score_recording` output."""
    p, b, o = metrics['protocol'], metrics['baseline'], metrics['online_metric']
    lines = [
        f'accuracy over {metrics["frames"]} frames (scale+shift fit in disparity space):',
        f'  dvd       AbsRel {p["abs_rel"]:.4f}  delta1 {p["delta1"]:.4f}  '
        f'boundary F1 {p["boundary_f1"]:.4f}  flicker {p["flicker"]:.4f}',
        f'  baseline  AbsRel {b["abs_rel"]:.4f}  delta1 {b["delta1"]:.4f}  '
        '(constant mean disparity)',
    ]
    if 'abs_rel' in o:
        lines.append(f'  online metric depth (anchored): AbsRel {o["abs_rel"]:.4f}  delta1 '
                     f'{o["delta1"]:.4f}  coverage {o["coverage"]:.3f}')
    else:
        lines.append('  online metric depth: none published (no anchored fit yet)')
    return '\n'.join(lines)


def _write_picture(path, arrays, columns=4):
    import cv2

    from dvd_ros.colorize import colorize
    from dvd_ros.train.evaluate import aligned_depth

    truth = arrays['truth_depth']
    aligned, _, _ = aligned_depth(arrays['disparity'], truth)
    # One colour scale for prediction and truth (inverse depth: near = hot).
    inv_truth = 1.0 / np.where(truth > 0, truth, np.nan)
    lo, hi = np.nanpercentile(inv_truth, [2, 98])
    picks = np.linspace(0, len(truth) - 1, min(columns, len(truth))).round().astype(int)
    rows = []
    for i in picks:
        rows.append(np.concatenate([
            arrays['rgb'][i],
            colorize((1.0 / aligned[i]).astype(np.float32), lo, hi),
            colorize(inv_truth[i].astype(np.float32), lo, hi)], axis=1))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 480 // grid.shape[1] + 1)
    grid = cv2.resize(grid, (grid.shape[1] * scale, grid.shape[0] * scale),
                      interpolation=cv2.INTER_NEAREST)
    band = np.full((24, grid.shape[1], 3), 255, np.uint8)
    third = grid.shape[1] // 3
    for k, text in enumerate(('RGB', 'predicted (DVD)', 'ground truth')):
        cv2.putText(band, text, (k * third + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([band, grid]), cv2.COLOR_RGB2BGR))


def _write_cloud(path, recording, stamps):
    from dvd_ros.offline.writers import ply_header, ply_vertices

    with_points = [s for s in stamps if s in recording.points]
    xyz, rgb = np.zeros((0, 3), np.float32), None
    if with_points:
        stamp = with_points[len(with_points) // 2]
        xyz, rgb = recording.points[stamp], recording.rgb[stamp].reshape(-1, 3)
        if len(rgb) != len(xyz):  # a strided or flat cloud: no colour per point
            rgb = None
    vertices = ply_vertices(xyz, rgb)
    with open(path, 'wb') as fh:
        fh.write(ply_header(len(vertices)))
        fh.write(vertices.tobytes())
    return len(vertices)
