"""`dvd-ros weights`: where to get the DVD weights, convert them, inspect a weights file."""

import argparse
import json
from pathlib import Path
import time

from dvd_ros.cli.main import CliError

WHERE = """\
DVD weights are published by the authors on Hugging Face, repository
FayeHongfeiZhang/DVD:
  model.safetensors     DVD v1.0
  dvd_1.1.safetensors   DVD v1.1 (more robust on reflective surfaces, steadier in time)
The Wan2.1 VAE, needed only when a DVD file carries no VAE copy (pipe.vae.model.*),
is Wan2.1_VAE.pth in Wan-AI/Wan2.1-T2V-1.3B.

Licence: the DVD weights are CC BY-NC 4.0 -- NON-COMMERCIAL use only (the DVD code is
Apache-2.0). Nothing is downloaded automatically; fetch the files yourself, e.g.
  huggingface-cli download FayeHongfeiZhang/DVD dvd_1.1.safetensors --local-dir weights/

Then convert once (merges the LoRA, writes diffusers safetensors; later starts load fast):
  dvd-ros weights convert weights/dvd_1.1.safetensors weights/dvd-1.1-bf16 --dtype bfloat16
and inspect any weights file or converted folder with
  dvd-ros weights info weights/dvd_1.1.safetensors
"""

DTYPE_CHOICES = ('float32', 'bfloat16', 'float16')


def add_parser(subparsers):
    """Add the `weights` command and its `convert` / `info` subcommands."""
    parser = subparsers.add_parser(
        'weights', help='inspect, convert and locate DVD weights',
        description='Where the official DVD weights are, how to convert and inspect them.',
        epilog=WHERE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(func=run, weights_command=None)
    sub = parser.add_subparsers(dest='weights_command', metavar='SUBCOMMAND')

    convert = sub.add_parser(
        'convert', help='convert an official DVD file into a fast-loading folder',
        description='Merge the LoRA (float64), map the names to diffusers and write SRC as a '
                    'folder (dvd_ros.json + transformer/ + vae/, safetensors) that loads '
                    'without merging.')
    convert.add_argument('src', type=Path, help='model.safetensors / dvd_1.1.safetensors')
    convert.add_argument('dst', type=Path, help='output folder')
    convert.add_argument('--vae', type=Path, default=None,
                         help='Wan2.1_VAE.pth (or .safetensors) when SRC has no VAE copy')
    convert.add_argument('--alpha', type=float, default=None,
                         help='LoRA alpha (default: the rank, as DVD was trained)')
    convert.add_argument('--dtype', choices=DTYPE_CHOICES, default='bfloat16',
                         help='dtype of the written weights (default: %(default)s, as released)')
    convert.add_argument('--num-heads', type=int, default=None,
                         help='DiT attention heads if not 128-channel heads (Wan convention)')
    convert.add_argument('--height', type=int, default=None,
                         help='recommended processing height stored in the folder (default 480)')
    convert.add_argument('--width', type=int, default=None,
                         help='recommended processing width stored in the folder (default 640)')
    convert.add_argument('--force', action='store_true', help='write into a non-empty DST')

    info = sub.add_parser('info', help='describe a weights file or converted folder',
                          description='Layout, tensor counts, LoRA rank, dtypes and size, '
                                      'read from the file header (no tensors loaded).')
    info.add_argument('path', type=Path, help='weights file or converted folder')
    info.add_argument('--json', action='store_true', help='print JSON')
    return parser


def run(args):
    """Dispatch `dvd-ros weights [convert|info]`; without a subcommand print where to get them."""
    if args.weights_command is None:
        print(WHERE, end='')
        return 0
    if args.weights_command == 'convert':
        return _convert(args)
    return _info(args)


def _convert(args):
    import torch

    from dvd_ros.errors import WeightsError
    from dvd_ros.model import checkpoint
    from dvd_ros.model.weights.manifest import file_digest
    from dvd_ros.model.weights.memory import release_memory

    if args.dst.exists() and (not args.dst.is_dir() or any(args.dst.iterdir())) and not (
            args.force):
        raise CliError(f'{args.dst} exists and is not empty; choose another DST or pass --force')
    if args.dst.resolve() == args.src.resolve():
        raise CliError('DST must differ from SRC')
    if args.dst.is_dir():
        foreign = _foreign_files(args.dst)
        if foreign:
            # A converted folder holds exactly its manifest's files; anything else would be
            # refused at load time, and --force never deletes what this run does not write.
            raise CliError(
                f'{args.dst} holds files a converted folder does not ({", ".join(foreign)}); '
                'choose an empty DST')
    meta = {}
    for name in ('height', 'width'):
        value = getattr(args, name)
        if value is not None:
            if value < 16:
                raise CliError(f'--{name} must be >= 16, got {value}')
            meta[name] = value
    started = time.monotonic()
    try:
        if checkpoint.detect_layout(args.src) != 'release':
            raise CliError(
                f'{args.src} is not an official DVD file (no pipe.dit.* keys); convert '
                'model.safetensors or dvd_1.1.safetensors')
        # The hash is read through the page cache before the merge: it costs no memory.
        meta['source_size'], meta['source_sha256'] = file_digest(args.src)
        models = checkpoint.load_models(
            args.src, vae_path=args.vae, lora_alpha=args.alpha,
            dtype=getattr(torch, args.dtype), num_heads=args.num_heads)
        folder = checkpoint.save_converted(models, args.dst, meta=meta)
    except WeightsError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        # The folder gets dvd_ros.json last, so a partial one is never taken for weights.
        raise CliError(f'{exc}; SRC must be readable and DST writable with free space') \
            from None
    seconds = time.monotonic() - started
    print(f'wrote {folder} ({args.dtype}, LoRA rank {models.meta["lora_rank"]}, alpha '
          f'{models.meta["lora_alpha"]}, VAE from {models.meta["vae_source"]}) in {seconds:.1f} s')
    del models
    release_memory()  # for callers that go on (main() from Python), not just exit
    return 0


def _foreign_files(folder):
    """Return the entries of ``folder`` that a converted folder does not consist of."""
    from dvd_ros.model.weights.manifest import PAYLOAD
    from dvd_ros.model.weights.names import META_FILE

    allowed = {META_FILE, *PAYLOAD, *(name.split('/')[0] for name in PAYLOAD)}
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))
    return [name for name in found if name not in allowed][:5]


def _info(args):
    from dvd_ros.errors import WeightsError
    from dvd_ros.model import checkpoint

    try:
        info = checkpoint.describe(args.path)
    except WeightsError as exc:
        raise CliError(str(exc)) from None
    info['dtypes'] = [str(d).removeprefix('torch.') for d in info.get('dtypes') or []]
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == 'size_bytes':
            value = f'{value} ({value / 1e9:.2f} GB)'
        elif key == 'metadata' and not value:
            continue
        print(f'{key:>15}: {value}')
    return 0
