"""Held-out evaluation of trained tiny DVD runs against baselines (the LMR ablation table).

Usage (after `dvd-ros train` runs; see docs/training.md):

    python benchmarks/ablation_lmr.py --run full=runs/tiny/dit_full/converted \
        --run l2=runs/tiny/dit_l2/converted --clips 24 --json runs/tiny/ablation.json

Rows: a constant (mean-disparity) prediction, the same network before training (the DiT at
its seeded initialisation, with the trained VAE), and each run. Metrics follow the spec's
protocol (dvd_ros/train/evaluate.py) on scenes whose seeds were never used in training.
"""

import argparse
import json
import time

import numpy as np
import torch

from dvd_ros.model.checkpoint import load_models
from dvd_ros.train.evaluate import (
    LatentPredictor,
    MeanDisparity,
    evaluate,
    evaluate_clip,
    held_out_clips,
)

HELD_OUT_START = 100_000  # training uses seeds 0..239; evaluation never overlaps them


def untrained_like(models):
    """Return the DiT of ``models`` re-initialised exactly as its training run started."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(int(models.meta.get('train', {}).get('seed', 0)))
    config = {k: v for k, v in models.transformer.config.items() if not k.startswith('_')}
    return WanTransformer3DModel(**config).eval()


@torch.no_grad()
def roundtrip(models, clips):
    """Metrics of the VAE round trip of the true target (the VAE's upper bound) per run."""
    from dvd_ros.train import latent
    from dvd_ros.train.targets import normalized_disparity, target_video

    rows = []
    for _rgb, depth in clips:
        x = torch.from_numpy(target_video(normalized_disparity(depth)))[None]
        z = latent.encode(models.vae, x, models.latents_mean, models.latents_std)
        out = latent.decode(models.vae, z, models.latents_mean, models.latents_std)
        rows.append(evaluate_clip(((out[0] + 1) / 2).clamp(0, 1).mean(0).numpy(), depth))
    keys = ('abs_rel', 'delta1', 'boundary_f1', 'flicker')
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys} | {'clips': len(rows)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run', action='append', required=True, metavar='NAME=FOLDER')
    parser.add_argument('--clips', type=int, default=24)
    parser.add_argument('--frames', type=int, default=9)
    parser.add_argument('--start', type=int, default=HELD_OUT_START)
    parser.add_argument('--json', default=None)
    parser.add_argument('--roundtrip', action='store_true',
                        help="also score each run's VAE round trip of the true target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = dict(r.split('=', 1) for r in args.run)
    first = load_models(next(iter(runs.values())))
    h, w = int(first.meta['height']), int(first.meta['width'])
    clips = held_out_clips(range(args.start, args.start + args.clips), frames=args.frames,
                           height=h, width=w)
    rows = {'mean disparity': evaluate(MeanDisparity(), clips)}
    rows['untrained network'] = evaluate(
        LatentPredictor(first.vae, untrained_like(first), first.latents_mean,
                        first.latents_std), clips)
    for name, folder in runs.items():
        models = load_models(folder)
        t0 = time.perf_counter()
        rows[name] = evaluate(LatentPredictor(models.vae, models.transformer,
                                              models.latents_mean, models.latents_std), clips,
                              per_clip=True)
        rows[name]['seconds_per_clip'] = (time.perf_counter() - t0) / len(clips)
        rows[name]['train_steps'] = models.meta.get('train', {}).get('steps')
        rows[name]['train_seconds'] = models.meta.get('train_seconds')
        if args.roundtrip:
            rows[f'{name} VAE round trip'] = roundtrip(models, clips)
    print(f'held-out seeds {args.start}..{args.start + args.clips - 1}, {args.frames} frames '
          f'of {h}x{w} per clip')
    print(f"{'':20s} {'AbsRel':>8s} {'delta1':>8s} {'bndF1':>8s} {'flicker':>8s}")
    for name, r in rows.items():
        print(f"{name:20s} {r['abs_rel']:8.4f} {r['delta1']:8.4f} {r['boundary_f1']:8.4f} "
              f"{r['flicker']:8.4f}")
    names = list(runs)
    if len(names) >= 2:
        a, b = rows[names[0]]['per_clip'], rows[names[1]]['per_clip']
        print(f'paired per-clip difference {names[0]} - {names[1]} (mean +- standard error, '
              f'{len(a)} clips):')
        for k in ('abs_rel', 'delta1', 'boundary_f1', 'flicker'):
            d = np.array([x[k] - y[k] for x, y in zip(a, b)])
            d = d[np.isfinite(d)]
            print(f'  {k:12s} {d.mean():+.4f} +- {d.std(ddof=1) / np.sqrt(len(d)):.4f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'clips': args.clips, 'frames': args.frames, 'start': args.start,
                       'rows': rows}, f, indent=1)


if __name__ == '__main__':
    main()
