"""`dvd-ros train`: train the tiny VAE / DiT on synthetic scenes (spec 3 losses, LoRA)."""

from dataclasses import replace
import json
from pathlib import Path
import time

from dvd_ros.cli.main import CliError


def add_parser(subparsers):
    """Add the `train` subcommand parser."""
    p = subparsers.add_parser(
        'train', help='fine-tune a DVD model (LMR losses, LoRA)',
        description='Train on procedurally rendered scenes. Stage "vae" trains a Wan VAE '
                    'autoencoder on RGB and disparity clips; stage "dit" trains the DiT '
                    'regressor (full, or LoRA on a base) with MSE + LMR and writes a '
                    'checkpoint in the converted layout (and the official release layout).')
    p.add_argument('out', help='output directory (state.pt, log.jsonl, checkpoints)')
    p.add_argument('--stage', choices=('vae', 'dit', 'joint', 'decoder'), default='dit',
                   help='joint: fine-tune the DiT and the VAE decoder of --base end to end '
                        '(latent DVD loss + decoded-disparity L1 and edge loss); decoder: '
                        'fine-tune only the VAE decoder of --base for sharp depth (encoder and '
                        'DiT frozen, so the DiT stays valid)')
    p.add_argument('--steps', type=int, default=1000, help='optimizer steps (default 1000)')
    p.add_argument('--lr', type=float, default=None,
                   help='learning rate (default 1e-3 vae, 1e-3 dit from scratch, 1e-4 LoRA)')
    p.add_argument('--height', type=int, default=64, help='training frame height (x16)')
    p.add_argument('--width', type=int, default=96, help='training frame width (x16)')
    p.add_argument('--seeds', default='0:240', help='scene seeds as START:STOP (default 0:240)')
    p.add_argument('--rich-seeds', default=None,
                   help='extra scene seeds START:STOP rendered with clutter and photo textures '
                        '(scikit-image sample photographs); default none')
    p.add_argument('--outdoor-seeds', default=None,
                   help='extra scene seeds START:STOP rendered as outdoor scenes (ground, sky, '
                        'buildings, trees) with clutter and photo textures; default none')
    p.add_argument('--clips-per-seed', type=int, default=4)
    p.add_argument('--clip-frames', type=int, default=9)
    p.add_argument('--video-frames', default=None,
                   help='frames per video sample, 4n+1, or a comma list drawn per batch '
                        '(e.g. 5,9; default 5 for vae, 9 for dit)')
    p.add_argument('--seed', type=int, default=0, help='training RNG seed')
    p.add_argument('--loss', choices=('full', 'l2'), default='full',
                   help='full = MSE + 0.5 (L_t + L_h + L_w); l2 = MSE only (ablation)')
    p.add_argument('--vae', default=None, help='stage dit: folder of the trained VAE stage')
    p.add_argument('--base', default=None,
                   help='stage dit/joint: base weights (converted folder/release file) to '
                        'fine-tune (with --lora-rank: LoRA only; else the whole DiT); without '
                        'it the tiny DiT is trained fully from scratch')
    p.add_argument('--dit-layers', type=int, default=None,
                   help='stage dit: DiT depth; from scratch the tiny DiT gets N blocks, with '
                        '--base its DiT is deepened to N blocks by identity-initialised copies '
                        '(output projections zero), spread between the old ones')
    p.add_argument('--dit-patch', type=int, default=None, choices=(1,),
                   help='stage dit with --base: give its DiT a 1x1 spatial patch (4x the '
                        'tokens of the Wan 2x2: 8x12 per latent frame at 64x96), warm-started '
                        'from the base (embedding = sum of its taps, output = mean)')
    p.add_argument('--lora-rank', type=int, default=None,
                   help='wrap the DiT with LoRA of this rank (alpha = rank); base frozen')
    p.add_argument('--resume', action='store_true', help='continue from OUT/state.pt')
    p.add_argument('--save-every', type=int, default=200)
    p.add_argument('--bank', default=None, help='cache file of rendered clips (.npz)')
    p.add_argument('--latents', default=None,
                   help='stage dit: cache file of the VAE latents of the bank (.pt); shared '
                        'by runs with the same VAE and bank')
    p.add_argument('--pixel-weight', type=float, default=1.0,
                   help='stage joint: weight of the decoded-disparity loss (default 1)')
    p.add_argument('--edge-weight', type=float, default=1.0,
                   help='stages joint/decoder: weight of the L1 of the x/y differences of the '
                        'decoded disparity (default 1)')
    p.add_argument('--pred-fraction', type=float, default=0.5,
                   help='stage decoder: share of samples decoded from the DiT predictions '
                        '(the rest from the encoded targets; default 0.5)')
    p.add_argument('--image-weight', type=float, default=1 / 6,
                   help='probability of an image (T = 1) batch (default 1/6, as the paper)')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads (default 1)')
    p.add_argument('--no-progress', action='store_true')
    p.set_defaults(func=run)


def _seeds(text, option='--seeds'):
    try:
        start, stop = (int(x) for x in text.split(':'))
    except ValueError:
        raise CliError(f'{option} must be START:STOP integers, got {text!r}') from None
    if stop <= start:
        raise CliError(f'{option} needs STOP > START, got {text!r}')
    return range(start, stop)


def run(args):
    """Run the `train` subcommand."""
    import torch

    from dvd_ros.train import stages
    from dvd_ros.train.trainer import TrainConfig

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    if args.height % 16 or args.width % 16:
        raise CliError(f'--height/--width must be multiples of 16, got {args.height}x'
                       f'{args.width}')
    if args.video_frames is None:
        args.video_frames = str(5 if args.stage == 'vae' else min(9, args.clip_frames))
    try:
        lengths = [int(x) for x in str(args.video_frames).split(',')]
    except ValueError:
        raise CliError(f'--video-frames must be integers 4n+1, got '
                       f'{args.video_frames!r}') from None
    if any(n % 4 != 1 or n > args.clip_frames for n in lengths):
        raise CliError(f'--video-frames must be 4n+1 and <= --clip-frames {args.clip_frames}, '
                       f'got {args.video_frames!r}')
    args.video_frames = lengths[0] if len(lengths) == 1 else lengths
    if args.stage == 'dit' and not args.vae and not args.base:
        raise CliError('stage dit needs --vae DIR (output of --stage vae) or --base WEIGHTS')
    if args.stage in ('joint', 'decoder') and (not args.base or args.vae or args.lora_rank):
        raise CliError(f'stage {args.stage} needs --base WEIGHTS (a trained model) and neither '
                       '--vae nor --lora-rank')
    if args.dit_layers is not None and (args.stage != 'dit' or args.lora_rank
                                        or args.dit_layers < 1):
        raise CliError(f'--dit-layers needs stage dit without --lora-rank and N >= 1, got '
                       f'{args.dit_layers} with stage {args.stage}')
    if args.dit_patch is not None and (args.stage != 'dit' or not args.base or args.lora_rank):
        raise CliError(f'--dit-patch needs stage dit with --base and without --lora-rank, got '
                       f'stage {args.stage}' + ('' if args.base else ' without --base'))
    if not 0.0 <= args.pred_fraction <= 1.0:
        raise CliError(f'--pred-fraction must be in [0, 1], got {args.pred_fraction}')
    out = Path(args.out)
    seeds = _seeds(args.seeds)
    rich = _seeds(args.rich_seeds, '--rich-seeds') if args.rich_seeds else range(0)
    rich_tag = f'_rich{rich.start}_{rich.stop}' if rich else ''
    outdoor = _seeds(args.outdoor_seeds, '--outdoor-seeds') if args.outdoor_seeds else range(0)
    rich_tag += f'_out{outdoor.start}_{outdoor.stop}' if outdoor else ''
    bank_path = args.bank or out.parent / (f'bank_{seeds.start}_{seeds.stop}{rich_tag}_'
                                           f'{args.clips_per_seed}x{args.clip_frames}_'
                                           f'{args.height}x{args.width}.npz')
    lr = args.lr if args.lr is not None else (1e-4 if args.lora_rank else 1e-3)
    cfg = TrainConfig(stage=args.stage, steps=args.steps, lr=lr, loss=args.loss,
                      seed=args.seed, save_every=args.save_every,
                      video_frames=args.video_frames, cosine=not args.lora_rank,
                      image_weight=args.image_weight, pixel_weight=args.pixel_weight,
                      edge_weight=args.edge_weight, pred_fraction=args.pred_fraction)
    if args.stage == 'vae':
        cfg = replace(cfg, image_batch=8, video_batch=2, image_weight=0.25)
    t0 = time.time()
    result = stages.run_stage(
        cfg, out, seeds=seeds, bank_path=bank_path, height=args.height, width=args.width,
        clips_per_seed=args.clips_per_seed, clip_frames=args.clip_frames, vae_dir=args.vae,
        base=args.base, lora_rank=args.lora_rank, resume=args.resume,
        progress=not args.no_progress, latents_path=args.latents, rich_seeds=rich,
        outdoor_seeds=outdoor, dit_layers=args.dit_layers,
        dit_patch=args.dit_patch)
    print(json.dumps({'out': str(out), 'wall_seconds': round(time.time() - t0, 1), **result}))
    return 0
