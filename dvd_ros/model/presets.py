"""Model configurations: the real DVD 1.3B model and the tiny fixture model.

The configs are diffusers constructor kwargs (``WanTransformer3DModel`` and
``AutoencoderKLWan``), so a preset builds the modules directly, offline.
"""

from dataclasses import dataclass, field
import json
from pathlib import Path

# Per-channel statistics of the Wan2.1 VAE latent space (DVD_SPEC 1.2); diffusers'
# AutoencoderKLWan does not apply them, the pipeline does.
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

# DVD runs one DiT pass at t = 1000 * denoise_step with denoise_step = 0.5.
TIMESTEP = 500.0
# Length of the (all-zero) text context the DiT was trained with.
CONTEXT_LENGTH = 512

# Wan2.1-T2V-1.3B as diffusers WanTransformer3DModel kwargs (DVD_SPEC 4.3).
DIT_1P3B = {
    'patch_size': (1, 2, 2),
    'num_attention_heads': 12,
    'attention_head_dim': 128,
    'in_channels': 16,
    'out_channels': 16,
    'text_dim': 4096,
    'freq_dim': 256,
    'ffn_dim': 8960,
    'num_layers': 30,
    'cross_attn_norm': True,
    'qk_norm': 'rms_norm_across_heads',
    'eps': 1e-6,
    'image_dim': None,
    'added_kv_proj_dim': None,
    'rope_max_seq_len': 1024,
}

# Wan2.1 VAE as diffusers AutoencoderKLWan kwargs (DVD_SPEC 4.4).
VAE_WAN21 = {
    'base_dim': 96,
    'z_dim': 16,
    'dim_mult': [1, 2, 4, 4],
    'num_res_blocks': 2,
    'attn_scales': [],
    'temperal_downsample': [False, True, True],
    'dropout': 0.0,
}


@dataclass(frozen=True)
class Preset:
    """A complete DVD model description: DiT + VAE kwargs, latent statistics, LoRA, size."""

    transformer: dict
    vae: dict
    latents_mean: tuple = LATENTS_MEAN
    latents_std: tuple = LATENTS_STD
    lora_rank: int | None = None
    lora_alpha: float | None = None
    height: int = 480
    width: int = 640
    extra: dict = field(default_factory=dict)


PRESETS = {
    'dvd-1.3b': Preset(transformer=DIT_1P3B, vae=VAE_WAN21, lora_rank=512, lora_alpha=512.0),
}


def preset_from_fixture_config(config):
    """Build the tiny-model ``Preset`` from the fixture JSON (``dvd_tiny_dit_config.json``).

    :param config: the parsed JSON dict, or a path to the JSON file.
    :return: a ``Preset`` whose processing size is the fixture's 48x80.
    """
    if not isinstance(config, dict):
        config = json.loads(Path(config).read_text())
    transformer = dict(config['diffusers_equivalent_config'])
    transformer['patch_size'] = tuple(transformer['patch_size'])
    vae_section = config['vae']
    vae = dict(vae_section['diffusers_AutoencoderKLWan_kwargs'])
    for key in ('dim_mult', 'attn_scales', 'temperal_downsample'):
        vae[key] = list(vae[key])  # diffusers concatenates these with lists
    lora = config.get('lora', {})
    return Preset(
        transformer=transformer,
        vae=vae,
        latents_mean=tuple(vae_section.get('latents_mean', LATENTS_MEAN)),
        latents_std=tuple(vae_section.get('latents_std', LATENTS_STD)),
        lora_rank=lora.get('rank'),
        lora_alpha=lora.get('alpha'),
        # The fixture tensors were made at 48x80 (see dvd_tiny_e2e_io.safetensors).
        height=48,
        width=80,
    )
