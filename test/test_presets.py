"""Presets: the real 1.3B configuration and the tiny fixture configuration."""

import json

import torch

from dvd_ros.model import presets


def test_1p3b_preset_builds_the_published_sizes(fixtures):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    keys = json.loads((fixtures / 'dvd_1p3b_checkpoint_keys.json').read_text())
    preset = presets.PRESETS['dvd-1.3b']
    assert preset.lora_rank == keys['lora']['rank'] and preset.lora_alpha == keys['lora']['alpha']
    with torch.device('meta'):
        transformer = WanTransformer3DModel(**preset.transformer)
        vae = AutoencoderKLWan(**preset.vae)
    dit_params = sum(p.numel() for p in transformer.state_dict().values())
    vae_params = sum(p.numel() for p in vae.state_dict().values())
    base = sum(int(torch.tensor(s).prod()) for s in keys['base_wan_dit_without_lora'].values())
    vae_expected = sum(int(torch.tensor(s).prod()) for s in keys['pipe_vae'].values())
    assert dit_params == base
    assert vae_params == vae_expected
    assert transformer.config.num_attention_heads * transformer.config.attention_head_dim == (
        keys['wan_model_config']['dim'])


def test_latent_statistics_are_diffusers_defaults():
    from diffusers import AutoencoderKLWan

    assert len(presets.LATENTS_MEAN) == len(presets.LATENTS_STD) == 16
    with torch.device('meta'):
        vae = AutoencoderKLWan()
    assert list(presets.LATENTS_MEAN) == vae.config.latents_mean
    assert list(presets.LATENTS_STD) == vae.config.latents_std


def test_fixture_preset_matches_fixture_json(fixture_config):
    preset = presets.preset_from_fixture_config(fixture_config)
    expected = fixture_config['diffusers_equivalent_config']
    got = {k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.transformer.items()}
    assert got == expected
    assert preset.vae == fixture_config['vae']['diffusers_AutoencoderKLWan_kwargs']
    assert list(preset.latents_mean) == fixture_config['vae']['latents_mean']
    assert preset.lora_rank == fixture_config['lora']['rank']


def test_fixture_preset_from_path(fixtures, fixture_config):
    from_path = presets.preset_from_fixture_config(fixtures / 'dvd_tiny_dit_config.json')
    assert from_path == presets.preset_from_fixture_config(fixture_config)


def test_dvd_constants():
    assert presets.TIMESTEP == 500.0
    assert presets.CONTEXT_LENGTH == 512
