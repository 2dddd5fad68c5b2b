"""Latent-space helpers shared by training: normalised VAE encode/decode and the DiT call."""

import torch

TIMESTEP = 500.0  # t = 1000 * denoise_step, denoise_step = 0.5 (spec 1.3)
CONTEXT_TOKENS = 512  # zero text context length (spec 1.3)


def stats_like(stat, like):
    """Return 16 per-channel statistics as a (1, C, 1, 1, 1) tensor of ``like``'s dtype."""
    return torch.as_tensor(stat, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)


def encode(vae, video, mean, std):
    """Encode (B, 3, T, H, W) in [-1, 1] to normalised latents (B, 16, T', H/8, W/8).

    Only the posterior mean is used (deterministic); ``z = (mu - mean) / std``.
    """
    mu = vae.encode(video).latent_dist.mode()
    return (mu - stats_like(mean, mu)) / stats_like(std, mu)


def decode(vae, latents, mean, std):
    """Decode normalised latents (B, 16, T', h, w) to (B, 3, 4T'-3, 8h, 8w) in [-1, 1]."""
    mu = latents * stats_like(std, latents) + stats_like(mean, latents)
    return vae.decode(mu).sample.clamp(-1.0, 1.0)


def zero_context(transformer, batch, like):
    """Return the all-zero text context (B, 512, text_dim) of the DVD forward pass."""
    text_dim = transformer.config.text_dim
    return torch.zeros(batch, CONTEXT_TOKENS, text_dim, dtype=like.dtype, device=like.device)


def regress(transformer, latents, context=None):
    """Run the single DVD DiT pass: RGB latents (B, 16, T', h, w) -> depth latents, t = 500."""
    batch = latents.shape[0]
    t = torch.full((batch,), TIMESTEP, dtype=latents.dtype, device=latents.device)
    if context is None:
        context = zero_context(transformer, batch, latents)
    return transformer(latents, t, context, return_dict=False)[0]
