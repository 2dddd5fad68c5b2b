"""`dvd-ros offline`: depth for a video file, an image folder or a ROS 2 bag."""

import argparse
import math
import sys

from dvd_ros.cli.main import CliError
from dvd_ros.errors import BackendUnavailable, InputError, WeightsError

# Window and overlap of the authors' open-world script (spec 2.1), for weights that recommend
# nothing (the official release files).
REFERENCE_WINDOW = (81, 21)

EPILOG = """outputs (--outputs, comma separated):
  png16      disparity/NNNNNN.png (uint16 = disparity x 32768) and, with a metric
             conversion, depth/NNNNNN.png (uint16 millimetres, 0 = no data)
  npz        npz/NNNNNN.npz: disparity, depth (metric only), stamp_ns, frame_id, K
  mp4        depth.mp4: colorized disparity (fixed 0..1 range)
  ply        ply/NNNNNN.ply per frame (needs --metric-a/--metric-b)
  ply-fused  fused.ply, every frame's points in its own camera frame (needs metric)
  bag        bag/: the input topics plus <ns>/depth/{disparity,image,camera_info,points}
             with the input stamps (depth/image and points need metric)
frames.csv (index, stamp_ns, log_time_ns, frame_id) is always written.

exit status: 0 done; 1 incomplete (the input ended before its announced length: the
frames before are written); 2 error; 130 interrupted (Ctrl-C).
"""


def add_parser(subparsers):
    """Add the `offline` subcommand parser."""
    parser = subparsers.add_parser(
        'offline', help='process a video, image folder or ROS 2 bag',
        description='Run DVD depth on recorded data. Non-causal reference stitching by '
                    'default; --causal previews what the ROS node publishes.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', metavar='INPUT',
                        help='video file, image folder (png/jpg) or ROS 2 bag (dir, .mcap, .db3)')
    parser.add_argument('--out', required=True, metavar='DIR', help='output directory')
    parser.add_argument('--outputs', default='png16,mp4',
                        help='any of png16,npz,mp4,ply,ply-fused,bag (default: %(default)s)')
    parser.add_argument('--topic', help='image topic of a bag (default: the only image topic)')
    parser.add_argument('--camera-info-topic',
                        help='CameraInfo topic of a bag (default: <image namespace>/camera_info)')
    parser.add_argument('--weights', metavar='PATH',
                        help='DVD weights (release .safetensors or converted folder; default: '
                             'the embedded tiny model)')
    parser.add_argument('--device', default='cpu', help='torch device (default: %(default)s)')
    parser.add_argument('--dtype', default='auto',
                        choices=('auto', 'float32', 'bfloat16', 'float16'),
                        help='model dtype (default: %(default)s = bfloat16 where the device '
                        'has it natively, else float32)')
    parser.add_argument('--backend', default='torch',
                        help='execution backend (see `dvd-ros engine`; default: %(default)s)')
    parser.add_argument('--height', type=int,
                        help="processing height in pixels (default: the weights' own, 480)")
    parser.add_argument('--width', type=int,
                        help="processing width in pixels (default: the weights' own, 640)")
    parser.add_argument('--window', type=int, default=None,
                        help='frames per model window (default: what the weights recommend, '
                        '5 for the embedded tiny model; else 81 as the reference)')
    parser.add_argument('--overlap', type=int, default=None,
                        help='frames shared by consecutive windows (default: 21 with window '
                        '81 as the reference, else (window - 1) / 2)')
    parser.add_argument('--causal', action='store_true',
                        help='stitch causally like the ROS node instead of the reference')
    parser.add_argument('--policy', default='immediate', choices=('immediate', 'blend'),
                        help='causal publishing policy (with --causal; default: %(default)s)')
    parser.add_argument('--metric-a', type=float, metavar='A',
                        help='metric conversion depth = 1 / (A * disparity + B), A in 1/m')
    parser.add_argument('--metric-b', type=float, metavar='B', help='see --metric-a, B in 1/m')
    parser.add_argument('--max-depth', type=float, default=math.inf,
                        help='depth beyond this many metres is invalid (default: no limit)')
    parser.add_argument('--max-frames', type=int, metavar='N',
                        help='process only the first N frames')
    parser.add_argument('--hfov', type=float, default=60.0,
                        help='horizontal field of view in degrees when there is no CameraInfo '
                             '(default: %(default)s)')
    parser.add_argument('--fps', type=float,
                        help='frame rate of an image folder (stamps, MP4; default 30)')
    parser.add_argument('--frame-id', help='header frame_id for video/folder frames '
                                           '(default: camera_optical_frame)')
    parser.add_argument('--point-stride', type=int, default=1,
                        help='keep every N-th row/column in point clouds (default: %(default)s)')
    parser.add_argument('--depth-namespace',
                        help='namespace of the depth topics in the output bag (default: the '
                             "image topic's namespace; /camera for video/folder)")
    parser.add_argument('--overwrite', action='store_true',
                        help='replace outputs of a previous run in --out (only those this run '
                             'writes, and only after every start-up check passed)')
    parser.add_argument('--max-pixels', type=int, metavar='N',
                        help='refuse input images or frames above N pixels before decoding '
                             '(guards against decompression bombs; default: 100000000)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.set_defaults(func=run)
    return parser


def load_regressor(args):
    """Load the DVD regressor of the command line (embedded tiny model without --weights)."""
    from dvd_ros.model.regressor import DepthRegressor

    size = {k: v for k, v in (('height', args.height), ('width', args.width)) if v is not None}
    return DepthRegressor.from_pretrained(args.weights, device=args.device, dtype=args.dtype,
                                          backend=args.backend, **size)


def _window(args):
    """Return (window, overlap): given values, else the weights' recommendation."""
    window = args.window
    if window is None:
        from dvd_ros.model.checkpoint import recommended_window
        window = recommended_window(args.weights) or REFERENCE_WINDOW[0]
    overlap = args.overlap
    if overlap is None:
        overlap = REFERENCE_WINDOW[1] if window == REFERENCE_WINDOW[0] else (window - 1) // 2
    return window, overlap


def _config(args):
    from dvd_ros.offline.pipeline import OfflineConfig
    from dvd_ros.offline.writers import parse_outputs

    if (args.metric_a is None) != (args.metric_b is None):
        raise CliError('pass both --metric-a and --metric-b (depth = 1 / (A * disparity + B)) '
                       'or neither')
    metric = None if args.metric_a is None else (args.metric_a, args.metric_b)
    window, overlap = _window(args)
    return OfflineConfig(
        out_dir=args.out, outputs=parse_outputs(args.outputs), window=window,
        overlap=overlap, causal=args.causal, causal_policy=args.policy, metric=metric,
        max_depth=args.max_depth, max_frames=args.max_frames, hfov_deg=args.hfov,
        point_stride=args.point_stride, depth_namespace=args.depth_namespace,
        overwrite=args.overwrite, progress=not args.no_progress)


def _summary(report):
    lines = [f'{report.state}: {report.frames_written}/{report.frames_total} frames in '
             f'{report.seconds:.1f} s ({report.fps:.2f} frames/s, {report.windows} model windows'
             + (f', {report.frames_dropped} dropped' if report.frames_dropped else '') + ')']
    lines += [f'  {kind}: {path}' for kind, path in report.paths.items()]
    lines += [f'note: {note}' for note in report.notes]
    if report.incomplete:
        lines.append(f'incomplete: {report.incomplete}')
    return '\n'.join(lines)


def run(args):
    """Run the `offline` subcommand; returns the exit status (see EPILOG)."""
    from dvd_ros.offline.pipeline import check_start, run_pipeline
    from dvd_ros.offline.sources import DEFAULT_MAX_PIXELS, SourceEndedEarly, open_source
    from dvd_ros.offline.writers import check_output_dir

    try:
        config = _config(args)
        max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
        if max_pixels < 1:
            raise InputError(f'--max-pixels must be >= 1, got {max_pixels}')
        # Everything that can fail without the source or the model, before either is opened
        # (and before --out is created).
        check_start(config, args.input)
        check_output_dir(config.out_dir)
        source = open_source(args.input, topic=args.topic,
                             camera_info_topic=args.camera_info_topic, fps=args.fps,
                             frame_id=args.frame_id, max_pixels=max_pixels)
        print(source.describe(), file=sys.stderr)
        if getattr(source, 'shortfall', None):
            print(f'warning: {source.shortfall}', file=sys.stderr)
        regressor = load_regressor(args)
        report = run_pipeline(source, regressor, config)
    except KeyboardInterrupt as exc:
        report = getattr(exc, 'report', None)
        if report is not None:
            print(_summary(report), file=sys.stderr)
        raise
    except SourceEndedEarly as exc:
        report = getattr(exc, 'report', None)
        if report is None:
            raise CliError(str(exc)) from exc
        print(_summary(report), file=sys.stderr)
        return 1
    except (InputError, WeightsError, BackendUnavailable) as exc:
        _print_report(exc)
        raise CliError(str(exc)) from exc
    except OSError as exc:
        # Disk full or permissions changed mid-run: the finished frames are valid files.
        _print_report(exc)
        raise CliError(f'{exc}; free space or fix permissions under {args.out} and run '
                       'again (--overwrite)') from exc
    print(_summary(report), file=sys.stderr)
    return 1 if report.incomplete else 0


def _print_report(exc):
    """Print the summary of a run that stopped on `exc` after its outputs were opened."""
    report = getattr(exc, 'report', None)
    if report is not None:
        print(_summary(report), file=sys.stderr)
