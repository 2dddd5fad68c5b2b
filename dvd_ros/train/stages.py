"""The two training stages end to end: data, models, training, and saving the results."""

from dataclasses import asdict
import json
from pathlib import Path

import torch

from dvd_ros.errors import InputError
from dvd_ros.train.data import load_or_render_bank
from dvd_ros.train.trainer import (
    TINY_DIT_CONFIG,
    TINY_VAE_CONFIG,
    LatentBank,
    Trainer,
    latent_statistics,
)


def load_vae_stage(vae_dir):
    """Load the VAE written by the 'vae' stage -> (vae, latents_mean, latents_std).

    The VAE's own latent statistics are folded into its quant convs so that the returned
    statistics are the stock Wan2.1 ones (the release layout cannot store statistics).
    """
    from diffusers import AutoencoderKLWan

    from dvd_ros.model import presets
    from dvd_ros.train.export import fold_latent_statistics

    vae_dir = Path(vae_dir)
    meta_path = vae_dir / 'vae_stage.json'
    if not meta_path.is_file():
        raise InputError(f'{vae_dir} is not a VAE stage output (no vae_stage.json); run '
                         '`dvd-ros train DIR --stage vae` first')
    meta = json.loads(meta_path.read_text())
    vae = AutoencoderKLWan.from_pretrained(vae_dir / 'vae')
    fold_latent_statistics(vae, meta['latents_mean'], meta['latents_std'], presets.LATENTS_MEAN,
                           presets.LATENTS_STD)
    return vae.eval(), list(presets.LATENTS_MEAN), list(presets.LATENTS_STD)


def grow_transformer(transformer, num_layers):
    """Deepen a trained Wan DiT in place to ``num_layers`` blocks without changing its output.

    Each new block is a copy of the block before it with the output projections of its
    self-attention, cross-attention and feed-forward set to zero: every branch of a Wan block
    is added to the residual stream, so the new block is the identity until training moves
    those projections. New blocks are spread evenly between the old ones. Returns the indices
    of the new blocks.
    """
    import copy

    old = list(transformer.blocks)
    if num_layers < len(old):
        raise InputError(f'cannot shrink the DiT from {len(old)} to {num_layers} blocks: give '
                         f'--dit-layers >= {len(old)} (the depth of the base)')
    n_new = num_layers - len(old)
    after = [max(0, (i + 1) * len(old) // (n_new + 1) - 1) for i in range(n_new)]
    blocks, added = [], []
    for k, block in enumerate(old):
        blocks.append(block)
        for _ in range(after.count(k)):
            new = copy.deepcopy(block)
            for linear in (new.attn1.to_out[0], new.attn2.to_out[0], new.ffn.net[2]):
                torch.nn.init.zeros_(linear.weight)
                torch.nn.init.zeros_(linear.bias)
            added.append(len(blocks))
            blocks.append(new)
    transformer.blocks = torch.nn.ModuleList(blocks)
    transformer.register_to_config(num_layers=num_layers)
    return added


def refine_patch(transformer):
    """Give a trained Wan DiT a 1x1 spatial patch in place (4x the tokens of a 2x2 patch).

    The blocks are kept; the patch embedding becomes the sum of its spatial kernel taps (so a
    latent that is constant over each old patch embeds to the old token at every new
    position) and the output projection the mean over the old patch's positions. The RoPE
    table follows the new grid. This is a warm start, not an exact copy: attention now sees the
    finer grid, so the model is fine-tuned afterwards. Returns the old patch size.
    """
    old = tuple(transformer.config.patch_size)
    if old[1:] == (1, 1):
        raise InputError(f'the DiT already has a 1x1 spatial patch ({old}): drop --dit-patch')
    p_t, p_h, p_w = old
    conv = transformer.patch_embedding
    embed = torch.nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=(p_t, 1, 1),
                            stride=(p_t, 1, 1))
    linear = transformer.proj_out
    out_channels = linear.out_features // (p_t * p_h * p_w)
    proj = torch.nn.Linear(linear.in_features, out_channels * p_t)
    with torch.no_grad():
        embed.weight.copy_(conv.weight.sum(dim=(3, 4), keepdim=True))
        embed.bias.copy_(conv.bias)
        # proj_out rows are ordered (p_t, p_h, p_w, channel), as the model's unpatchify reads them.
        w = linear.weight.reshape(p_t, p_h, p_w, out_channels, -1)
        proj.weight.copy_(w.mean(dim=(1, 2)).reshape(p_t * out_channels, -1))
        proj.bias.copy_(linear.bias.reshape(p_t, p_h, p_w, out_channels).mean(dim=(1, 2))
                        .reshape(-1))
    transformer.patch_embedding = embed.to(conv.weight.dtype)
    transformer.proj_out = proj.to(linear.weight.dtype)
    rope = transformer.rope
    transformer.rope = type(rope)(rope.attention_head_dim, (p_t, 1, 1), rope.max_seq_len)
    transformer.register_to_config(patch_size=(p_t, 1, 1))
    return list(old)


def run_stage(cfg, out, seeds, bank_path, height, width, clips_per_seed, clip_frames,
              vae_dir=None, base=None, lora_rank=None, resume=False, progress=True,
              latents_path=None, rich_seeds=range(0), outdoor_seeds=range(0), dit_layers=None,
              dit_patch=None):
    """Train one stage and save its outputs under ``out``; returns a summary dict.

    ``dit_layers`` sets the DiT's depth: from scratch, the tiny DiT gets that many blocks; with
    ``base``, its DiT is deepened by ``grow_transformer`` (same output at step 0).
    ``dit_patch=1`` gives the base's DiT a 1x1 spatial patch (``refine_patch``).
    Stage 'dit' encodes the bank once with the frozen VAE; ``latents_path`` caches those
    latents so that several runs (e.g. the two ablation arms) share them.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    out = Path(out)
    bank = load_or_render_bank(bank_path, seeds=seeds, clips_per_seed=clips_per_seed,
                               frames=clip_frames, height=height, width=width,
                               progress=progress, rich_seeds=rich_seeds,
                               outdoor_seeds=outdoor_seeds)
    if cfg.stage == 'vae':
        vae = AutoencoderKLWan(**TINY_VAE_CONFIG)
        trainer = Trainer(cfg, bank, out, vae)
        if resume:
            trainer.load_state()
        trainer.run(progress=progress)
        vae.eval()
        mean, std = latent_statistics(vae, bank)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        vae.save_pretrained(out / 'vae', safe_serialization=True)
        meta = {'latents_mean': mean, 'latents_std': std, 'height': height, 'width': width,
                'train': asdict(cfg), 'seeds': [seeds.start, seeds.stop],
                'train_seconds': round(trainer.seconds, 1)}
        (out / 'vae_stage.json').write_text(json.dumps(meta, indent=1))
        return {'stage': 'vae', 'steps': trainer.step, 'train_seconds': meta['train_seconds']}

    base_meta, grown = {}, None
    if cfg.stage in ('joint', 'decoder') and (base is None or vae_dir is not None or lora_rank):
        raise InputError(f'stage {cfg.stage} fine-tunes a trained model: give --base WEIGHTS '
                         '(its VAE and DiT), without --vae or --lora-rank')
    if dit_layers is not None and (cfg.stage != 'dit' or lora_rank):
        raise InputError('a DiT depth (--dit-layers) is for stage dit without LoRA (the new '
                         'blocks must train)')
    if dit_patch is not None and (cfg.stage != 'dit' or lora_rank or base is None
                                  or dit_patch != 1):
        raise InputError(f'--dit-patch {dit_patch}: only 1 is supported, for stage dit with '
                         '--base and without LoRA (the whole DiT must train on the new grid)')
    if base is not None:
        from dvd_ros.model.checkpoint import load_models

        models = load_models(base)
        vae, transformer = models.vae, models.transformer
        mean, std = models.latents_mean, models.latents_std
        base_meta = {k: models.meta[k] for k in ('train', 'train_seconds', 'vae_stage', 'seeds',
                                                 'rich_seeds', 'outdoor_seeds', 'dit_grown',
                                                 'height', 'width', 'base')
                     if k in (models.meta or {})}
        if vae_dir is not None:
            vae, mean, std = load_vae_stage(vae_dir)
        if dit_layers is not None:
            grown = {'from_layers': len(transformer.blocks)}
            grown['new_blocks'] = grow_transformer(transformer, dit_layers)
        if dit_patch is not None:
            grown = {**(grown or {}), 'from_patch': refine_patch(transformer)}
        # Loaded for inference (frozen); without LoRA the whole base DiT is fine-tuned.
        transformer.requires_grad_(not lora_rank and cfg.stage != 'decoder')
    else:
        vae, mean, std = load_vae_stage(vae_dir)
        torch.manual_seed(cfg.seed)
        config = dict(TINY_DIT_CONFIG)
        if dit_layers is not None:
            config['num_layers'] = dit_layers
        transformer = WanTransformer3DModel(**config)
    lora = None
    if lora_rank:
        from dvd_ros.train.lora import add_lora

        lora = add_lora(transformer, rank=lora_rank, alpha=lora_rank)
    latents = None
    if latents_path is not None and Path(latents_path).is_file():
        latents = LatentBank.load(latents_path)
        latents.check(vae, bank, mean, std, cfg.video_frames, latents_path)
    if latents is None:
        latents = LatentBank.encode(vae, bank, mean, std, cfg.video_frames, progress=progress)
        if latents_path is not None:
            Path(latents_path).parent.mkdir(parents=True, exist_ok=True)
            latents.save(latents_path)
    trainer = Trainer(cfg, bank, out, vae, transformer, mean, std, latents=latents)
    if resume:
        trainer.load_state()
    trainer.run(progress=progress)
    meta = {'height': height, 'width': width, 'train': asdict(cfg),
            'seeds': [seeds.start, seeds.stop], 'train_seconds': round(trainer.seconds, 1),
            'lora': lora}
    if rich_seeds:
        meta['rich_seeds'] = [rich_seeds.start, rich_seeds.stop]
    if outdoor_seeds:
        meta['outdoor_seeds'] = [outdoor_seeds.start, outdoor_seeds.stop]
    if base_meta:
        meta['base'] = {'weights': str(base), **base_meta}
    if grown:
        meta['dit_grown'] = grown
    from dvd_ros.train.export import save_trained

    paths = save_trained(out, transformer, vae, mean, std, meta, lora=lora)
    return {'stage': cfg.stage, 'steps': trainer.step, 'train_seconds': meta['train_seconds'],
            **{k: str(v) for k, v in paths.items()}}
