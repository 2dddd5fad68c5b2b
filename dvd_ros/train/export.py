"""Save trained models in the converted layout and the official release layout."""

import copy
from pathlib import Path

import torch


@torch.no_grad()
def fold_latent_statistics(vae, mean, std, target_mean, target_std):
    """Re-parametrise the VAE so its raw latents have ``target_mean/std`` instead of ``mean/std``.

    The 1x1x1 ``quant_conv`` (first 16 outputs = posterior mean) and ``post_quant_conv`` are
    rescaled so that the *normalised* latents ``(mu - mean) / std`` are unchanged while the
    statistics become the stock Wan2.1 ones. The release layout stores no latent statistics,
    so after folding both layouts load and normalise identically. Modifies ``vae`` in place.
    """
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    tm = torch.tensor(target_mean, dtype=torch.float64)
    ts = torch.tensor(target_std, dtype=torch.float64)
    a = ts / s  # mu' = a * mu + c
    c = tm - a * m
    z = m.numel()
    q = vae.quant_conv
    w = q.weight.double()
    b = q.bias.double()
    w[:z] *= a.view(-1, 1, 1, 1, 1)
    b[:z] = a * b[:z] + c
    q.weight.copy_(w.to(q.weight.dtype))
    q.bias.copy_(b.to(q.bias.dtype))
    p = vae.post_quant_conv  # input mu = (mu' - c) / a
    w = p.weight.double()
    b = p.bias.double() - (w[:, :, 0, 0, 0] @ (c / a))
    p.weight.copy_((w / a.view(1, -1, 1, 1, 1)).to(p.weight.dtype))
    p.bias.copy_(b.to(p.bias.dtype))
    vae.register_to_config(latents_mean=list(target_mean), latents_std=list(target_std))
    return vae


def save_trained(out, transformer, vae, latents_mean, latents_std, meta, lora=None):
    """Write ``out/converted/`` (LoRA merged) and ``out/release.safetensors`` (official layout).

    :param transformer: the trained WanTransformer3DModel, plain or peft LoRA-wrapped
    :param lora: the ``add_lora`` info dict when ``transformer`` carries adapters
    :return: dict with the ``converted`` and ``release`` paths
    """
    from dvd_ros.model.checkpoint import DVDModels, save_converted, write_release_checkpoint
    from dvd_ros.train.lora import merge_lora

    out = Path(out)
    plain = copy.deepcopy(transformer)
    if lora:
        plain = merge_lora(plain)
    info = {k: v for k, v in meta.items() if k != 'lora'}
    if lora:
        info.update(lora_rank=lora['rank'], lora_alpha=lora['alpha'], lora_merged=True)
    models = DVDModels(plain, vae, tuple(latents_mean), tuple(latents_std), {})
    converted = save_converted(models, out / 'converted', meta=info)
    release = write_release_checkpoint(
        out / 'release.safetensors', transformer, vae=vae,
        metadata={'height': meta['height'], 'width': meta['width']})
    return {'converted': converted, 'release': release}
