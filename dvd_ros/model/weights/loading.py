"""``load_models``: one entry point for release files and converted folders."""

from pathlib import Path

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.build import check_no_meta
from dvd_ros.model.weights.converted import load_converted
from dvd_ros.model.weights.files import detect_layout
from dvd_ros.model.weights.release import load_release


def load_models(path, vae_path=None, lora_alpha=None, dtype=torch.float32, device='cpu',
                num_heads=None, merge_lora=True):
    """Load DVD for inference from an official release file or a converted folder.

    :param path: ``model.safetensors`` / ``dvd_1.1.safetensors`` (any ``pipe.dit.`` file,
        ``module.`` prefix tolerated), or a folder from ``save_converted``.
    :param vae_path: ``Wan2.1_VAE.pth`` or a VAE ``.safetensors``; required when the release
        file has no ``pipe.vae.model.*`` copy, otherwise it overrides that copy.
    :param lora_alpha: LoRA alpha; None = rank (the DVD training default).
    :param dtype: torch dtype of all weights (float32, bfloat16, float16).
    :param device: where the modules go ('cpu', 'cuda', ...).
    :param num_heads: DiT attention heads when not the Wan convention (128-channel heads).
    :param merge_lora: False loads the base weights only (a diagnostic, not for use).
    :return: ``DVDModels``.
    :raises WeightsError: missing/corrupt/unsafe file, unknown layout, key or shape mismatch.
    """
    if path is None:
        raise WeightsError('no weights path given')
    path = Path(path)
    if not path.exists():
        raise WeightsError(
            f'weights not found: {path}; see `dvd-ros weights` for where to get them')
    if path.is_dir():
        detect_layout(path)  # raises unless it is a converted folder
        if vae_path is not None or lora_alpha is not None:
            raise WeightsError(
                f'{path} is a converted folder (LoRA already merged, VAE included); '
                'vae_path / lora_alpha apply only to an official release file')
        models = load_converted(path, dtype)
    else:
        models = load_release(path, vae_path, lora_alpha, dtype, num_heads, merge_lora,
                               torch.device(device))
    for module, what in ((models.transformer, 'DiT'), (models.vae, 'VAE')):
        check_no_meta(module, what)
        # Weights are already in `dtype`; passing dtype to .to() would also cast the RoPE
        # tables, which diffusers keeps in float32.
        module.to(device)
    return models
