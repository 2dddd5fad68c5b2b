"""The Wan VAE alone: diffusers vs our FastWanVAE (each temporal mode), time, TFLOP/s, error.

Every arm encodes the same random video and decodes the same latents, in one run, on
one set of random weights. TFLOP/s is the FLOPs counted from the layer shapes
(``FastWanVAE.count_flops``: convolutions, 1x1 layers and attention products; zero
frames not counted) over the measured time, the same count for every arm. "vs fp32" is
the relative error (norm) against the float32 diffusers VAE on the same input.

    python benchmarks/bench_fast_vae.py                    # CPU: the mid VAE of bench_backends
    python benchmarks/bench_fast_vae.py --device cuda      # Wan2.1 VAE, 480x640, bf16

Writes ``benchmarks/results/fast_vae_<device>.md``.
"""

import argparse
import copy
import os
from pathlib import Path
import statistics
import sys
import time

import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros.model import presets  # noqa: E402
from dvd_ros.model.fast_vae import FastWanVAE  # noqa: E402

CONFIGS = {'mid': {**presets.VAE_WAN21, 'base_dim': 16}, 'wan21': presets.VAE_WAN21}


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, x, repeats, device):
    """Return (median seconds of ``repeats`` calls after one warm-up, the output)."""
    out = fn(x)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(x)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default=None, help='default: cuda when available')
    parser.add_argument('--config', choices=tuple(CONFIGS), default=None,
                        help='default: mid on CPU, wan21 on CUDA')
    parser.add_argument('--dtype', default=None, help='default: bfloat16 on CUDA, else float32')
    parser.add_argument('--windows', default=None, help='comma-separated (default 9)')
    parser.add_argument('--height', type=int, default=None)
    parser.add_argument('--width', type=int, default=None)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cuda = device.type == 'cuda'
    config = args.config or ('wan21' if cuda else 'mid')
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if cuda
                                                           else torch.float32)
    height = args.height or (480 if cuda else 96)
    width = args.width or (640 if cuda else 160)
    windows = [int(w) for w in (args.windows or '9').split(',')]
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    with torch.device(device):
        vae32 = AutoencoderKLWan(**CONFIGS[config]).eval()
    vae = vae32 if dtype == torch.float32 else copy.deepcopy(vae32).to(dtype)
    arms = {'diffusers': None, 'fast taps': FastWanVAE(vae, temporal='taps'),
            'fast conv3d': FastWanVAE(vae, temporal='conv3d')}
    if cuda:
        from dvd_ros.model.cuda_graphs import StageGraphs

        arms['fast taps + CUDA graphs'] = arms['fast taps']
    rows, begin = [], time.perf_counter()

    def report(final):
        lines = ['| window | arm | encode (ms) | decode (ms) | VAE (ms) | speed-up vs diffusers | '
                 'TFLOP/s | latents vs fp32 | video vs fp32 |',
                 '|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            base = next(b for b in rows if b['window'] == r['window'] and b['arm'] == 'diffusers')
            total = r['encode'] + r['decode']
            lines.append(f'| {r["window"]} | {r["arm"]} | {r["encode"] * 1e3:.1f} | '
                         f'{r["decode"] * 1e3:.1f} | {total * 1e3:.1f} | '
                         f'{(base["encode"] + base["decode"]) / total:.2f}x | {r["tflops"]:.3g} | '
                         f'{r["enc_err"]:.1e} | {r["dec_err"]:.1e} |')
        where = torch.cuda.get_device_name(device) if cuda else \
            f'CPU, {args.threads} thread(s) of {os.cpu_count()} cores'
        text = (f'# Wan VAE: diffusers vs FastWanVAE ({device.type}), config {config}, '
                f'{height}x{width}, {str(dtype).replace("torch.", "")}\n\n'
                f'torch {torch.__version__}, {where}; median of {args.repeats} calls after one; '
                f'total {time.perf_counter() - begin:.0f} s.\n'
                f'Command: `{command_line("bench_fast_vae.py", argv)}`\n\n'
                + '\n'.join(lines) + '\n')
        return write_report(text, args.out, f'fast_vae_{device.type}', quiet=not final)

    for window in windows:
        generator = torch.Generator().manual_seed(window)
        video32 = (torch.rand(1, 3, window, height, width, generator=generator) * 2 - 1).to(
            device)
        with torch.inference_mode():
            mu32 = vae32.encode(video32).latent_dist.mean
            out32 = vae32.decode(mu32).sample
        video, mu = video32.to(dtype), mu32.to(dtype)
        probe = arms['fast taps']
        flops_enc = probe.count_flops('encode', tuple(video.shape))
        flops_dec = probe.count_flops('decode', tuple(mu.shape))
        print(f'== window {window}, {height}x{width}: encode {flops_enc / 1e12:.3f} + decode '
              f'{flops_dec / 1e12:.3f} TFLOP', flush=True)
        for name, fast in arms.items():
            with torch.inference_mode():
                if fast is None:
                    def encode(x):
                        return vae.encode(x).latent_dist.mean

                    def decode(z):
                        return vae.decode(z).sample
                else:
                    encode, decode = fast.encode, fast.decode
                if name.endswith('CUDA graphs'):
                    graphs = StageGraphs(device)
                    plain_encode, plain_decode = encode, decode

                    def encode(x, graphs=graphs, fn=plain_encode):
                        return graphs.run('encode', fn, x)

                    def decode(z, graphs=graphs, fn=plain_decode):
                        return graphs.run('decode', fn, z)
                t_enc, got_mu = timed(encode, video, args.repeats, device)
                t_dec, got_out = timed(decode, mu, args.repeats, device)
            row = {'window': window, 'arm': name, 'encode': t_enc, 'decode': t_dec,
                   'tflops': (flops_enc + flops_dec) / (t_enc + t_dec) / 1e12,
                   'enc_err': rel(got_mu, mu32), 'dec_err': rel(got_out, out32)}
            rows.append(row)
            print(f'   {name:24s} encode {t_enc * 1e3:8.1f} ms  decode {t_dec * 1e3:8.1f} ms  '
                  f'{row["tflops"]:.3g} TFLOP/s  vs fp32 {row["enc_err"]:.1e} / '
                  f'{row["dec_err"]:.1e}', flush=True)
            if cuda:
                del got_mu, got_out
                torch.cuda.empty_cache()
            report(False)  # a run cut short by a time limit keeps what it measured
    report(True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
