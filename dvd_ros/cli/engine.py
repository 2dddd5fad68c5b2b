"""`dvd-ros engine`: export ONNX graphs / build TensorRT engines ahead of time, list the cache."""

import argparse
import json
from pathlib import Path
import time

from dvd_ros.cli.main import CliError

EPILOG = """\
Engines are cached per GPU (name and compute capability), TensorRT version, window
shape, precision and weights hash; a node started with the same settings loads them
directly, and any mismatch rebuilds with a log line naming what changed.

Examples:
  dvd-ros engine build --weights weights/dvd-1.1-bf16 --backend tensorrt \\
      --window 25 --height 480 --width 640 --precision bf16
  dvd-ros engine build --weights weights/dvd-1.1-bf16 --backend tensorrt \\
      --window 25 --precision fp8 --calibration recording.mcap
  dvd-ros engine build --backend onnxruntime --window 9 --height 48 --width 80 --check
  dvd-ros engine list
"""
BACKEND_CHOICES = ('onnxruntime', 'tensorrt')
PRECISION_CHOICES = ('fp32', 'fp16', 'bf16', 'fp8')
STAGE_CHOICES = ('encoder', 'dit', 'decoder')


def add_parser(subparsers):
    """Add the `engine` command with its `build` and `list` subcommands."""
    parser = subparsers.add_parser(
        'engine', help='export ONNX / build TensorRT engines',
        description='Export the DVD stages to ONNX and build TensorRT engines into the engine '
                    'cache, or list what the cache holds.',
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run, engine_command=None)
    sub = parser.add_subparsers(dest='engine_command', metavar='SUBCOMMAND')

    build = sub.add_parser('build', help='export / build for one window shape',
                           description='Export (and for tensorrt, build) the encoder, DiT and '
                                       'decoder for one fixed window shape.')
    build.add_argument('--weights', type=Path, default=None,
                       help='official DVD .safetensors or converted folder '
                            '(default: the embedded tiny model)')
    build.add_argument('--vae', type=Path, default=None,
                       help='Wan2.1_VAE.pth when the weights file has no VAE copy')
    build.add_argument('--backend', choices=BACKEND_CHOICES, default='tensorrt',
                       help='what to build (default: %(default)s)')
    build.add_argument('--window', type=int, default=9, help='frames per window, 4n+1 '
                       '(default: %(default)s)')
    build.add_argument('--height', type=int, default=None,
                       help="processing height, multiple of 16 (default: the weights' "
                            'recommended size, 480 for DVD)')
    build.add_argument('--width', type=int, default=None,
                       help='processing width, multiple of 16 (default: as --height)')
    build.add_argument('--precision', choices=PRECISION_CHOICES, default=None,
                       help='what the graphs compute in (tensorrt default fp16, onnxruntime '
                            'default fp32); bf16 not on the onnxruntime CPU provider; fp8 = FP8 '
                            'DiT linears, fp16 elsewhere')
    build.add_argument('--calibration', type=Path, default=None,
                       help='fp8: video, image folder or bag of your scene whose first '
                            '--window frames calibrate the FP8 scales (default: a rendered '
                            'synthetic room)')
    build.add_argument('--provider', choices=('cpu', 'cuda', 'tensorrt'), default=None,
                       help='onnxruntime execution provider (default: cuda when --device is '
                            'cuda, else cpu)')
    build.add_argument('--device', default=None,
                       help='where to trace and run (default: cuda for tensorrt, else cpu)')
    build.add_argument('--stages', default=','.join(STAGE_CHOICES),
                       help='comma-separated subset of encoder,dit,decoder (default: all)')
    build.add_argument('--cache-dir', type=Path, default=None,
                       help='engine cache (default: $DVD_ROS_ENGINE_CACHE or '
                            '~/.cache/dvd_ros/engines)')
    build.add_argument('--workspace-gib', type=float, default=None,
                       help='tensorrt builder workspace limit in GiB')
    build.add_argument('--check', action='store_true',
                       help='onnxruntime/cpu: compare each graph with the float32 torch stage '
                            'on a random input (runs the torch model once at full size)')

    listing = sub.add_parser('list', help='list the cached graphs and engines')
    listing.add_argument('--cache-dir', type=Path, default=None, help='engine cache folder')
    listing.add_argument('--json', action='store_true', help='print JSON')
    return parser


def run(args):
    """Dispatch `dvd-ros engine build|list`."""
    if args.engine_command == 'build':
        return _build(args)
    if args.engine_command == 'list':
        return _list(args)
    print('usage: dvd-ros engine {build,list} ... (see dvd-ros engine --help)')
    return 2


def _stages(text):
    stages = [s.strip() for s in text.split(',') if s.strip()]
    unknown = [s for s in stages if s not in STAGE_CHOICES]
    if unknown or not stages:
        raise CliError(f'--stages {text!r}: unknown stage(s) {unknown}; use a comma-separated '
                       f'subset of {",".join(STAGE_CHOICES)}')
    return stages


def _load(args, device):
    import torch

    from dvd_ros.errors import DvdError
    from dvd_ros.model.checkpoint import DEFAULT_WEIGHTS, load_models

    path = args.weights if args.weights is not None else DEFAULT_WEIGHTS
    start = time.perf_counter()
    print(f'loading weights {path} ...', flush=True)
    try:
        # Graphs are float32; TensorRT lowers precision at build time.
        models = load_models(path, vae_path=args.vae, dtype=torch.float32, device=device)
    except DvdError as exc:
        raise CliError(str(exc)) from None
    print(f'loaded in {time.perf_counter() - start:.1f} s', flush=True)
    return models


def _build(args):
    from dvd_ros.errors import DvdError
    from dvd_ros.model.backends import create_backend
    from dvd_ros.model.engine_cache import EngineCache
    from dvd_ros.model.export import WindowShape, compare_with_onnxruntime, stage_module

    stages = _stages(args.stages)
    device = args.device or ('cuda' if args.backend == 'tensorrt' else 'cpu')
    if args.backend == 'tensorrt' and args.provider:
        raise CliError('--provider applies to --backend onnxruntime only')
    if args.check and (args.backend != 'onnxruntime' or device != 'cpu'):
        raise CliError('--check compares onnxruntime on the CPU with torch; use it with '
                       '--backend onnxruntime and no --device')
    if args.backend == 'onnxruntime' and args.precision:
        from dvd_ros.model.backends.onnxrt import check_precision

        try:  # before the (slow) weights, so the error comes first
            check_precision(args.precision, args.provider or ('cpu' if device == 'cpu'
                                                               else 'cuda'))
        except DvdError as exc:
            raise CliError(str(exc)) from None
    calibration = _calibration_frames(args)  # before the weights too
    try:
        # Check the shape before loading weights (the 1.3B model takes a while to load).
        WindowShape(args.window, args.height or 16, args.width or args.height or 16)
        models = _load(args, 'cpu' if args.backend == 'tensorrt' else device)
        meta = getattr(models, 'meta', {}) or {}
        height = args.height or meta.get('height') or 480
        width = args.width or meta.get('width') or (640 if args.height is None else args.height)
        shape = WindowShape(args.window, height, width)
    except DvdError as exc:
        raise CliError(str(exc)) from None

    options = {'device': device, 'cache_dir': args.cache_dir, 'progress': _say,
               'calibration': calibration}
    if args.backend == 'onnxruntime':
        options.update(provider=args.provider, precision=args.precision or 'fp32')
    else:
        options.update(precision=args.precision or 'fp16', workspace_gib=args.workspace_gib)
    try:
        backend = create_backend(args.backend, models, **options)
        cache = EngineCache(args.cache_dir)
        print(f'{args.backend}: {", ".join(stages)} at {shape.tag} into {cache.root}',
              flush=True)
        total = time.perf_counter()
        for i, stage in enumerate(stages, 1):
            start = time.perf_counter()
            _say(f'[{i}/{len(stages)}] {stage} ...')
            if args.backend == 'onnxruntime':
                backend.session(stage, shape)
            else:
                backend.prepare(shape, [stage])
            _say(f'[{i}/{len(stages)}] {stage} ready ({time.perf_counter() - start:.1f} s)')
            if args.check:
                path = cache.entry_dir(backend.onnx_key(stage, shape)) / 'model.onnx'
                error, scale = compare_with_onnxruntime(stage_module(models, stage), stage,
                                                        shape, path)
                _say(f'    check: onnxruntime vs torch max |diff| = {error:.2e} '
                     f'(output max {scale:.2f})')
    except DvdError as exc:
        raise CliError(str(exc)) from None
    print(f'done in {time.perf_counter() - total:.1f} s', flush=True)
    if calibration is not None:
        from dvd_ros.model.precision import save_calibration

        saved = save_calibration(calibration, cache.root)
        print(f'calibration frames saved to {saved}; start the node with precision:=fp8 '
              f'fp8_calibration:={saved} to use these engines', flush=True)
    return 0


def _calibration_frames(args):
    """Read the first ``--window`` frames of ``--calibration`` as (T, H, W, 3) uint8, or None."""
    if args.calibration is None:
        return None
    if (args.precision or '') != 'fp8':
        raise CliError('--calibration sets the FP8 scales; use it with --precision fp8')
    import numpy as np

    from dvd_ros.errors import DvdError
    from dvd_ros.offline.sources import open_source

    try:
        frames = []
        for frame in open_source(args.calibration):
            frames.append(frame.rgb)
            if len(frames) == args.window:
                break
        if not frames:
            raise CliError(f'--calibration {args.calibration}: no frames found')
        if len({f.shape for f in frames}) > 1:
            raise CliError(f'--calibration {args.calibration}: frames change size')
    except DvdError as exc:
        raise CliError(f'--calibration: {exc}') from None
    print(f'calibrating FP8 on {len(frames)} frames of {args.calibration}', flush=True)
    return np.stack(frames)


def _say(line):
    print(line, flush=True)


def _list(args):
    from dvd_ros.model.engine_cache import EngineCache

    cache = EngineCache(args.cache_dir)
    entries = cache.entries()
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f'engine cache {cache.root} is empty')
        return 0
    print(f'engine cache {cache.root}:')
    header = ('slot', 'device', 'cc', 'runtime', 'weights', 'MB', 'created')
    rows = [header]
    for entry in entries:
        key = entry.get('key', {})
        rows.append((entry.get('slot', '?'), key.get('device', ''),
                     key.get('compute_capability', ''), key.get('runtime', ''),
                     str(key.get('weights', ''))[:10], f'{entry["bytes"] / 2**20:.1f}',
                     entry.get('created', '')))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    for row in rows:
        print('  '.join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0
