"""Relative error of the torch backend's FP8 DiT against bfloat16 on the real 1.3B architecture.

Random weights (diffusers' initialisation) for the Wan2.1-1.3B DiT and the Wan2.1 VAE, at
a small spatial size so it runs on a CPU: the FP8 linears are calibrated on a rendered
room (the backend's default) and scored on another rendered clip, as
``|DiT_fp8 - DiT_bf16| / |DiT_bf16|`` (norms over the whole latent window) and the same
for the decoded video. Random weights are not the trained model: the number bounds what
float8 rounding of the linears does to this architecture's activations, nothing more.

    python benchmarks/fp8_dit_error.py                     # CPU, 128x128, ~2 min, 4 GB
    python benchmarks/fp8_dit_error.py --device cuda --height 480 --width 640
"""

import argparse
import os
from pathlib import Path
import sys
import time

import torch

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from report import command_line, write_report  # noqa: E402

from dvd_ros.model import presets  # noqa: E402
from dvd_ros.model.backends.torch_eager import TorchBackend  # noqa: E402
from dvd_ros.model.checkpoint import DVDModels  # noqa: E402
from dvd_ros.model.export import WindowShape  # noqa: E402
from dvd_ros.model.precision import calibration_frames  # noqa: E402


def build(device):
    """Random-weight 1.3B DiT + Wan2.1 VAE made directly in bfloat16 (no float32 copy)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = WanTransformer3DModel(**presets.DIT_1P3B).eval()
            vae = AutoencoderKLWan(**presets.VAE_WAN21).eval()
    finally:
        torch.set_default_dtype(previous)
    return DVDModels(transformer, vae, presets.LATENTS_MEAN, presets.LATENTS_STD)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--width', type=int, default=128)
    parser.add_argument('--window', type=int, default=9)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    models = build(args.device)
    shape = WindowShape(args.window, args.height, args.width)
    video = calibration_frames(shape, seed=11)  # not the calibration clip (seed 7)
    options = {'device': args.device, 'dtype': torch.bfloat16, 'cuda_graphs': False}
    bf16 = TorchBackend(models, **options)
    latents = bf16.encode(video)
    reference = bf16.transform(latents)
    reference_video = bf16.decode(reference)
    del bf16
    # The FP8 backend quantises the shared transformer's linears in place: built second.
    fp8 = TorchBackend(models, precision='fp8', calibration_size=(args.height, args.width),
                       **options)
    out = fp8.transform(latents)
    dit_error, video_error = rel(out, reference), rel(fp8.decode(out), reference_video)
    text = (f'# FP8 DiT (torch._scaled_mm) vs bfloat16, Wan2.1-1.3B random weights '
            f'({args.device})\n\n'
            f'torch {torch.__version__}; window {args.window} at {args.height}x{args.width} '
            f'(latents {tuple(latents.shape)}); {len(fp8.folded.blocks)} blocks; total '
            f'{time.perf_counter() - start:.0f} s.\n'
            f'Command: `{command_line("fp8_dit_error.py", argv)}`\n\n'
            f'| quantity | relative error (norm) fp8 vs bf16 |\n|---|---|\n'
            f'| DiT output latents | {dit_error:.2e} |\n'
            f'| decoded video | {video_error:.2e} |\n')
    write_report(text, args.out, f'fp8_dit_error_{args.device.split(":")[0]}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
