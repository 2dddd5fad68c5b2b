"""`dvd-ros demo`: synthetic camera -> depth node over loopback DDS, scored against truth.

The camera is paced by the node (it publishes a frame only while the node has room, see
``synthetic_camera``), so no frame is dropped on any machine and a run is reproducible: the
same seed gives the same frames, the same windows and the same accuracy. The model runs on the
fastest path that keeps its accuracy on this machine (``--backend auto``, ``--dtype auto``).

Writes into ``--out``: ``demo.png`` (see ``demo_figure``), ``cloud.ply`` (the node's metric
point cloud of one frame), ``recording.npz`` (every array the scores come from) and
``metrics.json``; prints frames in / out / dropped, the latency and the scores.
``score_recording`` recomputes the scores from ``recording.npz`` alone.
"""

import json
from pathlib import Path
import time

import numpy as np

from dvd_ros.cli.main import CliError

# Held-out scene seeds start here: the embedded model was trained on lower seeds.
DEMO_SEED = 100_000
# Camera size when the weights name no processing size (or a large one: rendering the
# synthetic rooms is slow).
FALLBACK_SIZE = (96, 128)
MAX_RENDER_PIXELS = 240 * 320
METRIC_KEYS = ('abs_rel', 'delta1', 'boundary_f1', 'flicker')


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
    parser.add_argument('--backend', default='auto',
                        help='execution backend; auto = torch where bfloat16 is native (GPU, '
                        'AMX / AVX-512-BF16 CPU), else onnxruntime where installed, else torch')
    parser.add_argument('--dtype', default='auto',
                        choices=('auto', 'float32', 'bfloat16', 'float16'),
                        help='auto = bfloat16 where the device runs it natively, else float32')
    parser.add_argument('--frames', type=int, default=40, help='frames to score (default 40)')
    parser.add_argument('--seed', type=int, default=DEMO_SEED, help='synthetic scene seed')
    parser.add_argument('--height', type=int, default=None,
                        help="camera height (px); default: the weights' processing size "
                        '(64x96 for the embedded model), so frames are not resized')
    parser.add_argument('--width', type=int, default=None, help='camera width (px)')
    parser.add_argument('--rate', type=float, default=30.0,
                        help='camera rate (Hz); with pacing (the default) an upper bound')
    parser.add_argument('--no-pace', dest='pace', action='store_false',
                        help='publish at --rate whatever the node sustains (a real camera): '
                        'the node drops frames when the model is slower')
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


def camera_size(weights):
    """Return the camera ``(height, width)``: the weights' processing size when it is small.

    Frames at the processing size are not resized on the way in and out of the model; a
    96x128 camera on the 64x96 embedded model is processed at 80x96 and scored AbsRel 0.149 /
    boundary F1 0.03 instead of 0.112 / 0.38 on the same scene (docs/training.md).
    """
    try:
        meta = json.loads((Path(weights) / 'dvd_ros.json').read_text())
        size = int(meta['height']), int(meta['width'])
    except (OSError, ValueError, KeyError, TypeError):
        return FALLBACK_SIZE
    return size if size[0] * size[1] <= MAX_RENDER_PIXELS else FALLBACK_SIZE


def _check_args(args):
    from dvd_ros.model import devices
    from dvd_ros.model.checkpoint import DEFAULT_WEIGHTS, recommended_window

    if args.window is None:
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
    if args.domain_id is not None and not 0 <= args.domain_id <= 232:
        raise CliError(f'--domain-id {args.domain_id}: ROS domains are 0..232 (0..101 are '
                       'safe on Linux)')
    if args.weights and not Path(args.weights).exists():
        raise CliError(f'--weights {args.weights}: no such file or folder (see `dvd-ros '
                       'weights` for where the official weights are published)')
    default_height, default_width = camera_size(args.weights or DEFAULT_WEIGHTS)
    args.height = default_height if args.height is None else args.height
    args.width = default_width if args.width is None else args.width
    if min(args.height, args.width) < 16:
        raise CliError(f'--height/--width {args.height}x{args.width}: at least 16 px each')
    if args.backend == 'auto':
        args.backend = devices.fastest_backend(args.device)


def _model(args):
    """Build the model as the node would (threads, dtype choice) -> (regressor, params)."""
    from dataclasses import replace

    from dvd_ros.ros.depth_node import build_regressor
    from dvd_ros.ros.params import DepthParams

    params = replace(DepthParams.defaults(), weights=args.weights, device=args.device,
                     dtype=args.dtype, backend=args.backend, window=args.window,
                     overlap=args.overlap).validate()
    regressor = build_regressor(params)
    # The first window exports / builds / allocates; keep that out of the node's timings.
    regressor.predict(np.zeros((args.window, args.height, args.width, 3), np.uint8))
    return regressor, params


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

    started = time.monotonic()
    try:
        regressor, params = _model(args)
    except DvdError as exc:
        raise CliError(str(exc)) from None
    hop = args.window - args.overlap
    camera = {'source': 'synthetic', 'seed': args.seed, 'height': args.height,
              'width': args.width, 'rate': args.rate,
              # Enough frames that the scored ones and the windows that finish them never
              # reach the loop's jump back to the start.
              'num_frames': args.frames + 2 * args.window, 'loop': True,
              # The node and the recorder: no frame published before both listen.
              'min_subscribers': 2}
    if args.pace:
        # A window of frames plus the next hop: the model never waits for frames and the
        # node's queue never fills.
        camera.update(pace_topic='depth/disparity', max_in_flight=args.window + hop)
    depth = {'weights': args.weights, 'device': args.device, 'dtype': args.dtype,
             'backend': args.backend, 'window': args.window, 'overlap': args.overlap,
             'metric_mode': 'anchored', 'hint_type': 'image', 'queue_size': 64,
             'publish_confidence': True,
             # A paced camera pauses whenever it waits for the node's output (longest while
             # the process starts): that is not the end of the stream, and a flush would
             # restart it mid-way. The demo's stream ends when the recording has its frames.
             'flush_timeout': 0.0}
    dtype = str(getattr(regressor, 'dtype', '')).removeprefix('torch.')
    print(f'demo: synthetic camera {args.width}x{args.height} (seed {args.seed}), '
          + (f'paced by the node (at most {args.window + hop} frames in flight, <= '
             f'{args.rate:g} Hz)' if args.pace else f'{args.rate:g} Hz, not paced')
          + f' -> depth node ({args.weights or "embedded tiny model"}, {args.backend} {dtype}, '
          f'window {args.window}, overlap {args.overlap}); metric depth anchored to '
          'ground-truth hints', flush=True)
    try:
        recording = record_demo(camera, depth, args.frames, args.timeout, regressor=regressor,
                                log=lambda line: print(line, flush=True),
                                domain_id=args.domain_id)
    except DvdError as exc:
        raise CliError(str(exc)) from None
    stamps = recording.complete_stamps()[:args.frames]
    if len(stamps) < 2:
        raise CliError(f'only {len(stamps)} frames came back from the depth node within '
                       f'{args.timeout:g} s; raise --timeout or lower --rate')
    arrays = _arrays(recording, stamps)
    # The live stream ran on past the scored frames; the offline re-run gets the same frames.
    later = [recording.rgb[s] for s in sorted(recording.rgb) if s > stamps[-1]]
    arrays.update(offline_predictions(regressor, params, arrays['rgb'], args.window,
                                      later[:2 * args.window]))
    np.savez_compressed(out / 'recording.npz', **arrays)
    metrics = score_recording(arrays, clip=args.window)
    metrics['run'] = run_summary(recording, stamps, args)
    metrics['wall_seconds'] = round(time.monotonic() - started, 2)
    metrics['diagnostics'] = dict(recording.diagnostics)
    (out / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
    _write_picture(out / 'demo.png', arrays, metrics, args)
    cloud = _write_cloud(out / 'cloud.ply', recording, stamps)
    print(format_run(metrics['run']))
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
    known = [s for s in stamps if s in recording.info]
    return {
        'stamps_ns': np.array(stamps, np.int64),
        'rgb': np.stack([recording.rgb[s] for s in stamps]),
        'truth_depth': truth,
        'disparity': disparity,
        'confidence': np.stack([recording.confidence.get(s, nan) for s in stamps]),
        'metric_depth': np.stack([recording.depth.get(s, nan) for s in stamps]),
        'K': (recording.info[known[0]] if known else np.full((3, 3), np.nan)).astype(
            np.float64),
    }


def offline_predictions(regressor, params, rgb, clip, later=()):
    """Predict the recorded frames without ROS, two ways, for the live vs offline comparison.

    :param regressor: the model the node ran.
    :param params: the node's ``DepthParams`` (window, overlap, alignment options).
    :param rgb: (T, H, W, 3) uint8 recorded frames.
    :param clip: frames per independent clip.
    :param later: frames the camera sent after ``rgb`` (the live windows that finished the
        last scored frames saw them).
    :return: ``{'offline_clips': the model on independent clips of ``clip`` frames (the
        held-out evaluation), 'offline_stream': the node's estimator over the same frames}``,
        each (T, H, W) float32 disparity.
    """
    from dvd_ros.stream.estimator import StreamingDepth

    clips = np.concatenate([regressor.predict(rgb[i:i + clip])
                            for i in range(0, len(rgb), clip)])
    window, overlap = params.resolved_window(None)
    stream = StreamingDepth(regressor, window, overlap, **params.stream_options())
    frames = []
    for index, frame in enumerate(list(rgb) + list(later)):
        frames += stream.push(frame, index)
        if len(frames) >= len(rgb):
            break
    else:
        frames += stream.flush()
    return {'offline_clips': clips.astype(np.float32),
            'offline_stream': np.stack([f.disparity for f in frames[:len(rgb)]]).astype(
                np.float32)}


def per_clip(pred, truth, clip):
    """Mean of the spec protocol over consecutive clips of ``clip`` frames (the held-out way).

    :return: dict of :data:`METRIC_KEYS` and ``clips``.
    """
    from dvd_ros.train.evaluate import evaluate_clip

    rows = [evaluate_clip(pred[i:i + clip], truth[i:i + clip])
            for i in range(0, len(truth) - clip + 1, clip)]
    if not rows:  # fewer frames than one clip: score what there is
        rows = [evaluate_clip(pred, truth)]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in METRIC_KEYS} | {
        'clips': len(rows)}


def score_recording(arrays, clip=5):
    """Score a recording (the arrays of ``recording.npz``) -> dict of metrics.

    Two protocols on the same frames. ``per_clip``: one scale+shift per clip of ``clip``
    frames (how held-out accuracy is measured); ``sequence``: one scale+shift over all frames
    (also charges the window-to-window alignment of a stream). Each for the live stream, the
    model offline on independent clips (``offline_clips``), the node's estimator re-run
    offline on the recorded frames (``offline_stream``; equal to live when nothing was
    dropped), and a constant (mean-disparity) prediction. ``online_metric``: the node's own
    metric depth (anchored fit), no fitting afterwards.
    """
    from dvd_ros.train.evaluate import evaluate_clip

    truth = arrays['truth_depth']
    arms = {'live': arrays['disparity'], 'baseline': np.ones_like(arrays['disparity'])}
    for name in ('offline_clips', 'offline_stream'):
        if name in arrays:
            arms[name] = arrays[name]
    scores = {'frames': int(len(truth)), 'clip': int(clip), 'per_clip': {}, 'sequence': {}}
    for name, pred in arms.items():
        scores['per_clip'][name] = per_clip(pred, truth, clip)
        scores['sequence'][name] = {k: float(v) for k, v in evaluate_clip(pred, truth).items()}
    if 'offline_stream' in arrays:
        scores['live_vs_offline_stream_max_abs'] = float(np.nanmax(np.abs(
            arrays['disparity'] - arrays['offline_stream'])))
    metric = arrays['metric_depth']
    valid = np.isfinite(metric) & (truth > 0) & np.isfinite(truth)
    online = {'coverage': float(valid.mean())}
    if valid.any():
        ratio = metric[valid] / truth[valid]
        online['abs_rel'] = float(np.mean(np.abs(ratio - 1)))
        online['delta1'] = float(np.mean(np.maximum(ratio, 1 / ratio) < 1.25))
    scores['online_metric'] = online
    return scores


def run_summary(recording, stamps, args):
    """Return frames in / out / dropped, latency and model time of a run (for printing)."""
    diag = dict(recording.diagnostics)

    def number(key):
        try:
            return float(diag[key])
        except (KeyError, ValueError):
            return float('nan')

    latency = np.array([recording.latency_s[s] for s in stamps if s in recording.latency_s])
    run = {
        'camera_published': int(recording.camera.get('published', 0)),
        'camera_lost': int(recording.camera.get('lost', 0)),
        'paced': bool(args.pace),
        'node_frames_in': int(number('frames in')) if diag else 0,
        'node_frames_out': int(number('frames out')) if diag else 0,
        'node_frames_dropped': int(number('frames dropped')) if diag else -1,
        'dropped_reasons': {k[len('dropped: '):]: v for k, v in diag.items()
                            if k.startswith('dropped: ')},
        'scored_frames': len(stamps),
        'scored_consecutive': bool(len(stamps) == args.frames),
        'latency_mean_s': float(latency.mean()) if len(latency) else float('nan'),
        'latency_max_s': float(latency.max()) if len(latency) else float('nan'),
        'model_ms_per_window': number('model time per window mean (ms)'),
        'backend': diag.get('backend', args.backend),
        'dtype': diag.get('dtype', args.dtype),
    }
    # Received but not yet through a window when the run stopped after its scored frames
    # (every frame is out, dropped or counted here).
    run['node_frames_in_flight'] = (run['node_frames_in'] - run['node_frames_out']
                                    - run['node_frames_dropped']) if diag else 0
    return run


def format_run(run):
    """Return the printed line about frames and latency for :func:`run_summary` output."""
    reasons = ', '.join(f'{k} {v}' for k, v in run['dropped_reasons'].items())
    return (f'frames: camera published {run["camera_published"]}'
            f'{" (paced by the node)" if run["paced"] else ""}, node in '
            f'{run["node_frames_in"]} / out {run["node_frames_out"]} / dropped '
            f'{run["node_frames_dropped"]}{f" ({reasons})" if reasons else ""} / in flight at '
            f'stop {run["node_frames_in_flight"]}; latency stamp '
            f'-> disparity mean {run["latency_mean_s"]:.2f} s, max {run["latency_max_s"]:.2f} s;'
            f' model {run["model_ms_per_window"]:.0f} ms per window ({run["backend"]}, '
            f'{run["dtype"].removeprefix("torch.")})')


def format_metrics(metrics):
    """Return the printed accuracy summary for :func:`score_recording` output."""
    names = {'live': 'live (streamed through the node)',
             'offline_stream': 'offline, same estimator, no ROS',
             'offline_clips': 'offline, model on independent clips',
             'baseline': 'constant mean disparity'}

    def line(name, m):
        return (f'  {names[name]:37s} AbsRel {m["abs_rel"]:.4f}  delta1 {m["delta1"]:.4f}  '
                f'boundary F1 {m["boundary_f1"]:.4f}  flicker {m["flicker"]:.4f}')

    lines = [f'accuracy over {metrics["frames"]} frames, one scale+shift per '
             f'{metrics["clip"]}-frame clip (the held-out protocol):']
    lines += [line(n, metrics['per_clip'][n]) for n in names if n in metrics['per_clip']]
    lines.append(f'one scale+shift over all {metrics["frames"]} frames (also charges the '
                 'window-to-window alignment):')
    lines += [line(n, metrics['sequence'][n]) for n in names if n in metrics['sequence']]
    if 'live_vs_offline_stream_max_abs' in metrics:
        lines.append(f'  live vs offline estimator: max |disparity difference| '
                     f'{metrics["live_vs_offline_stream_max_abs"]:.2e}')
    o = metrics['online_metric']
    if 'abs_rel' in o:
        lines.append(f'online metric depth (anchored, no fit afterwards): AbsRel '
                     f'{o["abs_rel"]:.4f}  delta1 {o["delta1"]:.4f}  coverage '
                     f'{o["coverage"]:.3f}')
    else:
        lines.append('online metric depth: none published (no anchored fit yet)')
    return '\n'.join(lines)


def _write_picture(path, arrays, metrics, args):
    import cv2

    from dvd_ros.cli.demo_figure import demo_figure
    from dvd_ros.train.evaluate import aligned_depth

    aligned, _, _ = aligned_depth(arrays['disparity'], arrays['truth_depth'])
    live = metrics['per_clip']['live']
    title = (f'dvd-ros demo: seed {args.seed}, {len(aligned)} frames, live AbsRel '
             f'{live["abs_rel"]:.3f} / delta1 {live["delta1"]:.3f} / boundary F1 '
             f'{live["boundary_f1"]:.3f} (per {metrics["clip"]}-frame clip); depth colours: '
             'inverse depth, one scale')
    image = demo_figure(arrays['rgb'], aligned, arrays['truth_depth'], arrays['confidence'],
                        arrays['K'], title=title)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


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
