"""Folding DVD's constants (t = 500, zero context) into the DiT changes nothing measurable."""

import pytest
from tiny_models import reference_dit, tiny_models
import torch

from dvd_ros.model.folding import (
    FoldedDiT,
    VaeDecoderStage,
    VaeEncoderStage,
    fold_constants,
    latent_shape,
    onnx_compatible,
)

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def models():
    return tiny_models(seed=3)


@pytest.mark.parametrize('frames', [1, 3])
def test_folded_dit_equals_diffusers_call(models, frames):
    latents = torch.randn(1, 16, frames, 6, 10, generator=torch.Generator().manual_seed(frames))
    want = reference_dit(models.transformer, latents)
    with torch.no_grad():
        got = FoldedDiT(models.transformer).eval()(latents)
    assert got.shape == want.shape
    assert want.abs().max() > 0.1
    assert (got - want).abs().max().item() < 1e-5


def test_cross_attention_query_has_no_effect(models):
    """Spec §5.5: with identical keys the softmax is uniform, so attn2.to_q cannot matter."""
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    before = reference_dit(models.transformer, latents)
    original = models.transformer.blocks[0].attn2.to_q.weight.detach().clone()
    try:
        with torch.no_grad():
            models.transformer.blocks[0].attn2.to_q.weight.mul_(-3.0)
        after = reference_dit(models.transformer, latents)
    finally:
        with torch.no_grad():
            models.transformer.blocks[0].attn2.to_q.weight.copy_(original)
    assert (after - before).abs().max().item() < 1e-5
    # ... while the value projection does matter (the test could fail).
    with torch.no_grad():
        folded = FoldedDiT(models.transformer)
        folded.blocks[0].cross.mul_(2.0)
        assert (folded(latents) - before).abs().max().item() > 1e-3


def test_fold_constants_match_the_condition_embedder(models):
    transformer = models.transformer
    context = torch.zeros(1, 5, transformer.config.text_dim)
    with torch.no_grad():
        temb, t_mod, _, _ = transformer.condition_embedder(torch.tensor([500.0]), context)
        modulations, crosses, head = fold_constants(transformer)
    dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert len(modulations) == len(crosses) == transformer.config.num_layers
    want = transformer.blocks[1].scale_shift_table + t_mod.unflatten(1, (6, -1))
    assert torch.equal(modulations[1], want)
    assert crosses[0].shape == (1, 1, dim)
    assert torch.equal(head, transformer.scale_shift_table + temb.unsqueeze(1))


def test_vae_stages_equal_diffusers_with_normalisation(models):
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean = torch.tensor(models.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(models.latents_std).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        latents = VaeEncoderStage(models)(video)
        want = (models.vae.encode(video).latent_dist.mean - mean) / std
        assert latents.shape == latent_shape(5, 32, 48)
        assert (latents - want).abs().max().item() < 1e-5
        decoded = VaeDecoderStage(models)(latents)
        want = models.vae.decode(latents * std + mean).sample
    assert decoded.shape == video.shape
    assert (decoded - want).abs().max().item() < 1e-5
    assert decoded.abs().max().item() <= 1.0


def test_onnx_compatible_is_exact_and_restores_the_model(models):
    stage = VaeDecoderStage(models).eval()
    latents = torch.randn(1, 16, 2, 4, 6, generator=torch.Generator().manual_seed(2))
    modes = [m.mode for m in stage.modules() if isinstance(m, torch.nn.Upsample)]
    assert 'nearest-exact' in modes
    with torch.no_grad():
        want = stage(latents)
        with onnx_compatible(stage):
            assert all(m.mode == 'nearest' for m in stage.modules()
                       if isinstance(m, torch.nn.Upsample))
            got = stage(latents)
    assert torch.equal(got, want)
    assert [m.mode for m in stage.modules() if isinstance(m, torch.nn.Upsample)] == modes


def test_folded_dit_reproduces_the_golden_fixture(fixtures):
    from safetensors.torch import load_file

    from dvd_ros.model.checkpoint import load_models

    io = load_file(fixtures / 'dvd_tiny_dit_io.safetensors')
    transformer = load_models(fixtures / 'dvd_tiny_dit.safetensors').transformer.eval()
    folded = FoldedDiT(transformer).eval()
    with torch.no_grad():
        for latents, output in (('latents', 'output'), ('latents_t1', 'output_t1')):
            want = io[output]
            got = folded(io[latents])
            assert (got - want).abs().max().item() < 1e-4
            # And against the unfolded diffusers call on the same weights: folding alone.
            assert (got - reference_dit(transformer, io[latents])).abs().max().item() < 1e-5
