"""The loaded DVD model: transformer, VAE, latent statistics and the folder meta."""

from dataclasses import dataclass, field

import torch


@dataclass
class DVDModels:
    """The loaded DVD model: diffusers transformer + VAE and the latent statistics."""

    transformer: torch.nn.Module
    vae: torch.nn.Module
    latents_mean: tuple
    latents_std: tuple
    meta: dict = field(default_factory=dict)

    @property
    def dtype(self):
        """Return the parameter dtype of the transformer."""
        return next(self.transformer.parameters()).dtype
