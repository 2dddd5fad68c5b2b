"""Tiny random-weight DVD models for the acceleration tests (no fixtures, no weights needed)."""

from dataclasses import dataclass, field

import torch

# Same structure as the golden fixture's tiny model (dvd_tiny_dit_config.json), smaller text_dim:
# head_dim 32 keeps the RoPE split even (DVD_SPEC.md §4.3).
TINY_DIT = {
    'patch_size': (1, 2, 2), 'num_attention_heads': 2, 'attention_head_dim': 32,
    'in_channels': 16, 'out_channels': 16, 'text_dim': 64, 'freq_dim': 256, 'ffn_dim': 128,
    'num_layers': 2, 'cross_attn_norm': True, 'qk_norm': 'rms_norm_across_heads', 'eps': 1e-6,
    'image_dim': None, 'added_kv_proj_dim': None, 'rope_max_seq_len': 1024,
}
TINY_VAE = {
    'base_dim': 8, 'z_dim': 16, 'dim_mult': [1, 2, 4, 4], 'num_res_blocks': 2, 'attn_scales': [],
    'temperal_downsample': [False, True, True], 'dropout': 0.0,
}
# Wan2.1 latent normalisation (DVD_SPEC.md §1.2).
LATENTS_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENTS_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
               3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


@dataclass
class TinyModels:
    """Stand-in for ``dvd_ros.model.checkpoint.DVDModels``."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    latents_mean: list = field(default_factory=lambda: list(LATENTS_MEAN))
    latents_std: list = field(default_factory=lambda: list(LATENTS_STD))
    meta: dict = field(default_factory=dict)


def tiny_models(seed=0, dit=None, vae=None):
    """Build a random tiny transformer + VAE (float32, eval mode, CPU) deterministically."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(**{**TINY_DIT, **(dit or {})}).eval()
    # Random init leaves the modulation tables tiny; scale them so folding errors would show.
    with torch.no_grad():
        for block in transformer.blocks:
            block.scale_shift_table.mul_(5)
    autoencoder = AutoencoderKLWan(**{**TINY_VAE, **(vae or {})}).eval()
    return TinyModels(transformer, autoencoder)


def save_tiny_weights(folder, seed=0):
    """Save :func:`tiny_models` as a converted weights folder; return its path."""
    from dvd_ros.model.checkpoint import DVDModels, save_converted

    models = tiny_models(seed)
    return save_converted(DVDModels(models.transformer, models.vae, tuple(models.latents_mean),
                                    tuple(models.latents_std)), folder)


def reference_dit(transformer, latents, context_rows=512):
    """DVD's DiT call the unfolded way: t = 500, all-zero text context."""
    context = torch.zeros(1, context_rows, transformer.config.text_dim)
    with torch.no_grad():
        return transformer(latents, torch.tensor([500.0]), context, return_dict=False)[0]
