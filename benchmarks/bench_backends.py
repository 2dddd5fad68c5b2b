"""Per-window latency and frames/s of every available backend, side by side in one run.

CPU (default when no GPU): the tiny fixture-sized model and a mid-size model, random
weights, float32. CUDA: the full Wan2.1-1.3B DiT + Wan2.1 VAE (random weights are fine
for timing) at 480x640 for windows 9/25/45/81, bfloat16 where the backend supports it.

Every backend runs the same three stages (VAE encode, the single DiT pass, VAE decode)
on the same random video. "first call" includes what a backend does once per window
shape (ONNX export, torch.compile, TensorRT engine build); the stage times are medians
of the following calls. A backend that cannot run here is listed with its reason.
``torch`` runs the DiT as ``FoldedDiT`` (constant timestep/cross-attention folded,
DVD_SPEC.md §5.5), like every other backend, and the VAE with our ``FastWanVAE``
executor (and, on CUDA, the whole window replayed as one CUDA graph);
``torch-no-graphs`` is the same without CUDA graphs, ``torch-diffusers-vae`` runs the
diffusers VAE instead (no graphs), ``torch-unfolded`` is the eager torch backend calling
the diffusers transformer with the 512-row zero context and the diffusers VAE, as the
reference does; ``torch:fp8`` runs the DiT's linears in float8 (``torch._scaled_mm``).
"VAE TFLOP/s" is the encode + decode FLOPs counted from the layer shapes
(``FastWanVAE.count_flops``) over the encode + decode time.

    python benchmarks/bench_backends.py                      # CPU, a few minutes
    python benchmarks/bench_backends.py --backends all       # CPU incl. torch-compile (slow)
    python benchmarks/bench_backends.py --device cuda        # 1.3B at 480x640, 9/25/45/81
    python benchmarks/bench_backends.py --backends torch,onnxruntime:fp16 --repeats 5

A backend may name its graph precision after a colon (``onnxruntime:fp8``,
``tensorrt:bf16``); "vs fp32" is the relative error (norm) of the decoded output against
the float32 torch backend on the same video.

Writes a markdown table (``--out``, default ``benchmarks/results/backends_<device>.md``)
and, when matplotlib is installed, a PNG plot next to it.
"""

import argparse
import dataclasses
import gc
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros.errors import BackendUnavailable  # noqa: E402
from dvd_ros.model import presets  # noqa: E402
from dvd_ros.model.backends import BACKENDS, create_backend  # noqa: E402
from dvd_ros.model.checkpoint import DVDModels  # noqa: E402
from dvd_ros.model.fast_vae import FastWanVAE  # noqa: E402

# Fixture-sized tiny model (dvd_tiny_dit_config.json) and a mid-size one that still runs on
# a laptop CPU: 128-channel heads like the real model, 4 blocks, a 16-channel VAE.
TINY_DIT = {**presets.DIT_1P3B, 'num_attention_heads': 2, 'attention_head_dim': 32,
            'ffn_dim': 128, 'num_layers': 2}
TINY_VAE = {**presets.VAE_WAN21, 'base_dim': 8}
MID_DIT = {**presets.DIT_1P3B, 'num_attention_heads': 4, 'attention_head_dim': 128,
           'ffn_dim': 2048, 'num_layers': 4}
MID_VAE = {**presets.VAE_WAN21, 'base_dim': 16}


@dataclasses.dataclass
class Case:
    """One model size at one window shape."""

    config: str
    dit: dict
    vae: dict
    window: int
    height: int
    width: int


CPU_CASES = [
    Case('tiny', TINY_DIT, TINY_VAE, 9, 48, 80),
    Case('mid', MID_DIT, MID_VAE, 9, 96, 160),
]
CUDA_CASES = [Case('dvd-1.3b', presets.DIT_1P3B, presets.VAE_WAN21, w, 480, 640)
              for w in (9, 25, 45, 81)]


def build_models(case, device, seed=0):
    """Random-weight DVD models of ``case`` (float32) on ``device``."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = WanTransformer3DModel(**case.dit).eval()
        vae = AutoencoderKLWan(**{**case.vae, 'dim_mult': list(case.vae['dim_mult']),
                                  'temperal_downsample': list(case.vae['temperal_downsample'])})
    return DVDModels(transformer, vae.eval(), presets.LATENTS_MEAN, presets.LATENTS_STD)


# What --backends means when not given (torch-compile's CPU build takes ~5 min per shape).
CPU_BACKENDS = ('torch', 'torch-diffusers-vae', 'torch-unfolded', 'onnxruntime',
                'onnxruntime:fp16', 'onnxruntime:fp8', 'tensorrt')
CUDA_BACKENDS = ('torch', 'torch-no-graphs', 'torch-diffusers-vae', 'torch:fp8',
                 'torch-unfolded', 'torch-compile', 'onnxruntime', 'tensorrt:fp16',
                 'tensorrt:bf16', 'tensorrt:fp8')
# Variants of the eager torch backend: row name -> options over its defaults.
TORCH_VARIANTS = {
    'torch': {},
    'torch-no-graphs': {'cuda_graphs': False},
    'torch-diffusers-vae': {'fast_vae': False, 'cuda_graphs': False},
    'torch-unfolded': {'fold': False, 'fast_vae': False, 'cuda_graphs': False},
}


def backend_options(entry, device, threads, cache_dir):
    """Return ``(backend name, options)`` of ``entry`` ('name' or 'name:precision')."""
    name, _, precision = entry.partition(':')
    cuda = device == 'cuda'
    low = torch.bfloat16 if cuda else torch.float32
    if name in TORCH_VARIANTS:
        options = {'device': device, 'dtype': low, **TORCH_VARIANTS[name]}
        if precision == 'fp8':
            options['precision'] = 'fp8'
        elif precision:
            raise ValueError(f'{entry}: the torch backend takes precision fp8 or none')
        return 'torch', options
    if name == 'torch-compile':
        if precision:
            raise ValueError(f'{entry}: torch-compile takes no precision (dtype is {low})')
        return name, {'device': device, 'dtype': low}
    if name == 'onnxruntime':
        options = {'device': device, 'dtype': torch.float32, 'cache_dir': cache_dir,
                   'precision': precision or 'fp32'}
        if not cuda:
            options['threads'] = threads
        return name, options
    if name == 'tensorrt':
        return name, {'device': device, 'dtype': torch.float32,
                      'precision': precision or 'bf16', 'cache_dir': cache_dir}
    raise ValueError(f'unknown backend {entry!r}')


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def measure(backend, video, repeats, device):
    """Return first-call seconds, median stage times (seconds) and the decoded output."""
    with torch.inference_mode():
        start = time.perf_counter()
        out = backend.decode(backend.transform(backend.encode(video)))
        sync(device)
        first = time.perf_counter() - start
        stages = {'encode': [], 'dit': [], 'decode': [], 'total': []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            latents = backend.encode(video)
            sync(device)
            t1 = time.perf_counter()
            depth = backend.transform(latents)
            sync(device)
            t2 = time.perf_counter()
            backend.decode(depth)
            sync(device)
            t3 = time.perf_counter()
            for name, value in (('encode', t1 - t0), ('dit', t2 - t1), ('decode', t3 - t2),
                                ('total', t3 - t0)):
                stages[name].append(value)
    return first, {name: statistics.median(values) for name, values in stages.items()}, out


@torch.no_grad()
def float32_reference(case, video, device):
    """Return the float32 reference-like torch backend's decoded output ("vs fp32")."""
    backend = create_backend('torch', build_models(case, device), device=device,
                             dtype=torch.float32, **TORCH_VARIANTS['torch-unfolded'])
    return backend.decode(backend.transform(backend.encode(video))).float()


def vae_flops(case):
    """Return the (encode, decode) FLOPs of ``case``'s VAE, counted on the meta device."""
    from diffusers import AutoencoderKLWan

    with torch.device('meta'):
        vae = AutoencoderKLWan(**{**case.vae, 'dim_mult': list(case.vae['dim_mult']),
                                  'temperal_downsample': list(case.vae['temperal_downsample'])})
    fast = FastWanVAE(vae)
    latent = (1, vae.config.z_dim, 1 + (case.window - 1) // 4, case.height // 8, case.width // 8)
    return (fast.count_flops('encode', (1, 3, case.window, case.height, case.width)),
            fast.count_flops('decode', latent))


def run_case(case, backends, args, rows, after_row=None):
    """Measure every backend on ``case``; append one row per backend to ``rows``.

    :param after_row: called after each appended row (e.g. to save what is measured so far).
    """
    print(f'== {case.config}: window {case.window}, {case.height}x{case.width}', flush=True)
    generator = torch.Generator().manual_seed(1)
    video = (torch.rand(1, 3, case.window, case.height, case.width, generator=generator)
             * 2 - 1).to(args.device)
    reference = float32_reference(case, video, args.device)
    flops = sum(vae_flops(case))
    print(f'   VAE: {flops / 1e12:.2f} TFLOP per window (encode + decode)', flush=True)
    for entry in backends:
        # Fresh models per backend: torch backends cast and move them in place.
        models = build_models(case, args.device)
        row = {'config': case.config, 'window': case.window, 'vae_flops': flops,
               'size': f'{case.height}x{case.width}', 'backend': entry.partition(':')[0]}
        try:
            with tempfile.TemporaryDirectory(prefix='dvd-bench-') as cache_dir:
                name, options = backend_options(entry, args.device, args.threads,
                                                args.cache_dir or cache_dir)
                backend = create_backend(name, models, **options)
                row['dtype'] = getattr(backend, 'precision', None) or \
                    str(getattr(backend, 'dtype', '')).replace('torch.', '')
                first, times, out = measure(backend, video.to(backend_dtype(backend)),
                                            args.repeats, args.device)
            row.update(first=first, **times)
            row['error'] = ((out.float() - reference).norm() / reference.norm()).item()
            print(f'   {entry:18s} first {first:7.2f} s   window {times["total"] * 1e3:9.1f} '
                  f'ms   ({case.window / times["total"]:.2f} frames/s, VAE '
                  f'{vae_tflops(row):.3g} TFLOP/s, vs fp32 {row["error"]:.1e})', flush=True)
        except BackendUnavailable as exc:
            row['note'] = f'unavailable: {exc}'
            print(f'   {entry:18s} unavailable: {exc}', flush=True)
        except Exception as exc:  # keep measuring the others; the table shows why
            row['note'] = f'failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}'
            print(f'   {entry:18s} {row["note"]}', flush=True)
        rows.append(row)
        if after_row is not None:
            after_row()
        del models
        gc.collect()
        if args.device == 'cuda':
            torch.cuda.empty_cache()


def vae_tflops(row):
    """Return the achieved VAE TFLOP/s of a measured row."""
    return row['vae_flops'] / (row['encode'] + row['decode']) / 1e12


def backend_dtype(backend):
    dtype = getattr(backend, 'dtype', torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def table(rows):
    """Markdown table of ``rows`` with speed-ups relative to the torch backend."""
    lines = ['| config | window | size | backend | dtype | first call (s) | encode (ms) | '
             'DiT (ms) | decode (ms) | window (ms) | frames/s | vs torch | DiT vs torch | '
             'VAE TFLOP/s | vs fp32 |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    base = {}
    for r in rows:  # the first plain torch row (torch:fp8 is also backend torch)
        if r['backend'] == 'torch' and 'total' in r:
            base.setdefault((r['config'], r['window']), r)
    for r in rows:
        if 'total' not in r:
            lines.append(f'| {r["config"]} | {r["window"]} | {r["size"]} | {r["backend"]} | '
                         f'| {r.get("note", "")} | | | | | | | | | |')
            continue
        ref = base.get((r['config'], r['window']))
        ratio = f'{ref["total"] / r["total"]:.2f}x' if ref else ''
        dit_ratio = f'{ref["dit"] / r["dit"]:.2f}x' if ref else ''
        lines.append(
            f'| {r["config"]} | {r["window"]} | {r["size"]} | {r["backend"]} | {r["dtype"]} | '
            f'{r["first"]:.2f} | {r["encode"] * 1e3:.1f} | {r["dit"] * 1e3:.1f} | '
            f'{r["decode"] * 1e3:.1f} | {r["total"] * 1e3:.1f} | '
            f'{r["window"] / r["total"]:.2f} | {ratio} | {dit_ratio} | {vae_tflops(r):.3g} | '
            f'{r["error"]:.1e} |')
    return '\n'.join(lines) + '\n'


def environment(args):
    import platform

    parts = [f'torch {torch.__version__}', f'python {platform.python_version()}']
    try:
        import onnxruntime

        parts.append(f'onnxruntime {onnxruntime.__version__}')
    except ImportError:
        pass
    if args.device == 'cuda':
        parts.append(f'GPU {torch.cuda.get_device_name()}')
    else:
        parts.append(f'CPU {platform.processor() or platform.machine()}, '
                     f'{args.threads} threads (of {os.cpu_count()} cores)')
    return ', '.join(parts)


def plot(rows, path):
    """Write a frames/s bar chart when matplotlib is installed; return the path or None."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = [r for r in rows if 'total' in r]
    groups = list(dict.fromkeys((r['config'], r['window']) for r in measured))
    names = list(dict.fromkeys((r['backend'], r['dtype']) for r in measured))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = [next((r['window'] / r['total'] for r in measured
                        if (r['config'], r['window']) == g and (r['backend'], r['dtype']) == name),
                       0) for g in groups]
        ax.bar([j + i * width for j in range(len(groups))], values, width,
               label=' '.join(name))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
    ax.set_xticklabels([f'{c}\nT={w}' for c, w in groups])
    ax.set_ylabel('frames / s')
    ax.set_title('DVD per-window throughput by backend')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', choices=('cpu', 'cuda'), default=None,
                        help='default: cuda when available, else cpu')
    parser.add_argument('--backends', default=None,
                        help='comma-separated backends to try, each optionally with :precision '
                             '(onnxruntime:fp16), or "all" (default: CPU_BACKENDS / '
                             'CUDA_BACKENDS; on CPU torch-compile is left out, its inductor '
                             'build of the unrolled VAE takes ~5 min per shape on 2 cores)')
    parser.add_argument('--configs', default=None,
                        help='CPU only: comma-separated subset of tiny,mid (default: both)')
    parser.add_argument('--windows', default=None,
                        help='CUDA only: comma-separated windows (default: 9,25,45,81)')
    parser.add_argument('--repeats', type=int, default=3, help='timed calls per backend')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU threads of torch and onnxruntime (default 1: on a shared, '
                             'oversubscribed machine more threads spin and run ~10x slower)')
    parser.add_argument('--cache-dir', default=None,
                        help='engine cache to reuse (default: a fresh temporary folder, so '
                             '"first call" includes export/build)')
    parser.add_argument('--out', type=Path, default=None, help='markdown output file')
    args = parser.parse_args(argv)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA GPU')
    torch.set_num_threads(args.threads)
    if args.backends is None:
        backends = list(CUDA_BACKENDS if args.device == 'cuda' else CPU_BACKENDS)
    elif args.backends == 'all':
        backends = list(dict.fromkeys(['torch', 'torch-unfolded', *BACKENDS, *CPU_BACKENDS,
                                       *CUDA_BACKENDS]))
    else:
        backends = [b.strip() for b in args.backends.split(',') if b.strip()]
    if args.device == 'cuda':
        windows = [int(w) for w in (args.windows or '9,25,45,81').split(',')]
        cases = [c for c in CUDA_CASES if c.window in windows]
    else:
        wanted = (args.configs or 'tiny,mid').split(',')
        cases = [c for c in CPU_CASES if c.config in wanted]
    rows = []
    start = time.perf_counter()

    def report(final):
        state = '' if final else ' (incomplete: rewritten after every backend)'
        text = (f'# DVD backends, per window ({args.device})\n\n{environment(args)}; '
                f'median of {args.repeats} calls after a first call; '
                f'total run {time.perf_counter() - start:.0f} s{state}.\n'
                f"torch-compile's first call depends on inductor's on-disk cache "
                f'(TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER): warm after an '
                f'earlier run, cold it is the full compile.\n'
                f'Command: `{command_line("bench_backends.py", argv)}`\n\n{table(rows)}')
        return write_report(text, args.out, f'backends_{args.device}', quiet=not final)

    for case in cases:
        # The file is rewritten after every backend, so a run cut short by a time limit
        # (a lent GPU machine) still leaves what it measured.
        run_case(case, backends, args, rows, after_row=lambda: report(False))
    out = report(True)
    png = plot(rows, out.with_suffix('.png'))
    print(f'wrote {png}' if png else 'matplotlib not installed: no plot')
    return 0


if __name__ == '__main__':
    sys.exit(main())
