"""Time and peak memory of the weights paths on a full-size stand-in of the DVD release file.

Builds a stand-in of ``dvd_1.1.safetensors`` with ``write_release_checkpoint`` (every name and
shape of the real file from the fixture ``dvd_1p3b_checkpoint_keys.json``: the 1.3B Wan DiT
wrapped with rank-512 LoRA plus the Wan VAE copy, random bfloat16 values, ~4.5 GB) in a
temporary folder (removed afterwards), then runs each step in its own process so that the
peak resident memory (``VmHWM``) is that step's alone:

- ``info``: ``dvd-ros weights info FILE``;
- ``convert``: ``dvd-ros weights convert FILE DIR --dtype bfloat16``;
- ``load-file``: ``load_models(FILE, dtype=bfloat16)`` (merges the LoRA at load);
- ``load-folder``: ``load_models(DIR, dtype=bfloat16)``.

``resident after`` is the process's resident memory when the step is done (after a garbage
collection), i.e. what a node keeps for the life of the process; for the load steps also
after every weight was read once (weights left in a file mapping count only once touched).

    nice -n 19 python benchmarks/bench_weights.py            # ~5 min, ~7 GB RAM, 10 GB disk
    python benchmarks/bench_weights.py --tmp /big/disk --out /tmp/bench_weights.md

Writes ``benchmarks/results/bench_weights.md``.
"""

import argparse
import gc
import json
import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.fspath(ROOT))

from report import command_line, write_report  # noqa: E402

KEYS = 'dvd_1p3b_checkpoint_keys.json'
STEPS = ('info', 'convert', 'load-file', 'load-folder')


def _status_kb(field):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    return 0


def build_stand_in(keys_json, path):
    """Write the stand-in release file; return its size in bytes."""
    import torch

    from dvd_ros.model.checkpoint import write_release_checkpoint

    spec = json.loads(Path(keys_json).read_text())
    generator = torch.Generator().manual_seed(0)

    def tensor(shape):
        return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)

    dit = {k.removeprefix('pipe.dit.'): tensor(s) for k, s in spec['pipe_dit'].items()}
    vae = {k.removeprefix('pipe.vae.model.'): tensor(s) for k, s in spec['pipe_vae'].items()}
    write_release_checkpoint(path, dit, vae=vae, metadata={'stand_in': 'bench_weights'})
    return Path(path).stat().st_size


def run_step(step, src, dst):
    """Run one step in this process; return ``{wall_s, peak_kb, resident_kb}``."""
    started = time.monotonic()
    if step in ('info', 'convert'):
        from dvd_ros.cli.main import main

        argv = (['weights', 'info', str(src)] if step == 'info' else
                ['weights', 'convert', str(src), str(dst), '--dtype', 'bfloat16', '--force'])
        status = main(argv)
        if status:
            raise SystemExit(status)
        kept = None
    else:
        import torch

        from dvd_ros.model.checkpoint import load_models

        kept = load_models(src if step == 'load-file' else dst, dtype=torch.bfloat16)
    wall = time.monotonic() - started
    gc.collect()
    result = {'wall_s': wall, 'peak_kb': _status_kb('VmHWM'), 'resident_kb': _status_kb('VmRSS')}
    if kept is not None:
        # Weights left in a file mapping are paged in on first use: read every one once so
        # that the resident set is what a node holds after its first window.
        for module in (kept.transformer, kept.vae):
            for tensor in module.state_dict().values():
                tensor.float().sum() if tensor.numel() < 2 ** 20 else tensor.sum()
        result['touched_kb'] = _status_kb('VmRSS')
    del kept
    return result


def _child(step, src, dst):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.fspath(ROOT), os.environ.get('PYTHONPATH', '')]))
    out = subprocess.run(
        [sys.executable, __file__, '--step', step, '--src', str(src), '--dst', str(dst)],
        capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f'step {step} failed ({out.returncode}):\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gb(kb):
    return kb * 1024 / 1e9


def main():
    """Build the stand-in, run every step in a child process, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--fixtures', type=Path,
                        default=ROOT.parent / 'shared' / 'reference' / 'fixtures')
    parser.add_argument('--tmp', type=Path, default=None, help='where the ~10 GB go')
    parser.add_argument('--out', type=Path, default=None)
    parser.add_argument('--label', default='', help='a word for the table title')
    parser.add_argument('--step', choices=STEPS + ('build',), help=argparse.SUPPRESS)
    parser.add_argument('--src', type=Path, help=argparse.SUPPRESS)
    parser.add_argument('--dst', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == 'build':
        started = time.monotonic()
        size = build_stand_in(args.fixtures / KEYS, args.src)
        print(json.dumps({'wall_s': time.monotonic() - started, 'size': size,
                          'peak_kb': _status_kb('VmHWM'), 'resident_kb': 0}))
        return 0
    if args.step:
        print(json.dumps(run_step(args.step, args.src, args.dst)))
        return 0

    keys_json = args.fixtures / KEYS
    if not keys_json.is_file():
        raise SystemExit(f'{keys_json} not found; pass --fixtures DIR')
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix='bench_weights_') as tmp:
        src, dst = Path(tmp) / 'dvd_1.1.safetensors', Path(tmp) / 'converted'
        env = dict(os.environ, PYTHONPATH=os.fspath(ROOT))
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, __file__, '--step', 'build', '--src', str(src),
             '--fixtures', str(args.fixtures)],
            capture_output=True, text=True, env=env, check=False)
        if out.returncode:
            raise SystemExit(f'building the stand-in failed:\n{out.stderr[-3000:]}')
        size = src.stat().st_size
        print(f'stand-in {size / 1e9:.2f} GB built in {time.monotonic() - started:.0f} s',
              flush=True)
        for step in STEPS:
            result = _child(step, src, dst)
            rows.append((step, result))
            print(step, result, flush=True)
        folder_size = sum(f.stat().st_size for f in dst.rglob('*') if f.is_file())
        shutil.rmtree(dst, ignore_errors=True)

    commands = {
        'info': '`dvd-ros weights info FILE`',
        'convert': '`dvd-ros weights convert FILE DIR --dtype bfloat16`',
        'load-file': '`load_models(FILE, dtype=bfloat16)`',
        'load-folder': '`load_models(DIR, dtype=bfloat16)`',
    }
    lines = [
        f'# bench_weights{" (" + args.label + ")" if args.label else ""}',
        '',
        f'Stand-in release file: {size / 1e9:.2f} GB (bfloat16, 1.3B DiT + rank-512 LoRA + VAE); '
        f'converted folder: {folder_size / 1e9:.2f} GB. Each step in its own process; '
        f'CPU threads: {os.cpu_count()} cores on the machine (shared).',
        '',
        '| step | wall | peak RSS | peak / file | resident after | resident after reading '
        'every weight |',
        '|---|---|---|---|---|---|',
    ]
    for step, r in rows:
        lines.append(f'| {commands[step]} | {r["wall_s"]:.1f} s | {_gb(r["peak_kb"]):.2f} GB | '
                     f'{_gb(r["peak_kb"]) * 1e9 / size:.2f}x | {_gb(r["resident_kb"]):.2f} GB | '
                     + (f'{_gb(r["touched_kb"]):.2f} GB |' if 'touched_kb' in r else '- |'))
    lines += ['', f'Command: `{command_line("bench_weights.py")}`', '']
    write_report('\n'.join(lines), out=args.out, name='bench_weights')
    return 0


if __name__ == '__main__':
    sys.exit(main())
