"""Writing DVD weights in the official release layout (tests, training exports)."""

from pathlib import Path

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import (
    DIT_MARKER,
    LORA_SUFFIX,
    META_PREFIX,
    VAE_MARKER,
    diffusers_vae_res_blocks,
    dit_name_to_wan,
    vae_name_to_original,
)


def _peft_scales(module):
    """Return ``{diffusers module path: LoRA scaling}`` of peft layers inside ``module``."""
    scales = {}
    for name, sub in module.named_modules():
        scaling = getattr(sub, 'scaling', None)
        if isinstance(scaling, dict) and scaling and hasattr(sub, 'base_layer'):
            if len(scaling) != 1:
                raise WeightsError(
                    f'layer {name!r} has several LoRA adapters ({", ".join(scaling)}); the '
                    'release layout holds one: merge or delete the others first')
            scales[name] = next(iter(scaling.values()))
    return scales


def write_release_checkpoint(path, transformer, vae=None, lora=None, lora_alpha=None,
                             dtype=None, metadata=None):
    """Write DVD weights in the OFFICIAL release layout (``pipe.dit.*`` + ``pipe.vae.model.*``).

    The file loads with ``load_models`` exactly like ``model.safetensors``. Because the
    release format stores no alpha, the LoRA scale ``alpha / r`` is folded into ``lora_B``
    so that loading with the default alpha = r gives the same merged weights.

    :param path: output ``.safetensors`` file.
    :param transformer: a diffusers ``WanTransformer3DModel`` (plain or with a peft LoRA
        adapter added, e.g. via ``add_adapter``), or its state dict, in diffusers names or
        in Wan names; peft ``base_layer`` / ``lora_A.<adapter>`` / ``lora_B.<adapter>``
        entries are written as the wrapped layers of the release.
    :param vae: ``AutoencoderKLWan`` or a VAE state dict (diffusers or original names);
        None writes no VAE copy.
    :param lora: extra LoRA pairs ``{module path (diffusers or Wan): (lora_A [r, in],
        lora_B [out, r])}`` for plain (unwrapped) base weights.
    :param lora_alpha: alpha of the LoRA given in state-dict form (None = rank, scale 1);
        a peft module's own scaling is used when ``transformer`` is a module.
    :param dtype: dtype of the written tensors (None = as given; the release is bfloat16).
    :param metadata: extra string metadata; ``num_attention_heads`` and ``height``/``width``
        are read back by ``load_models``.
    :return: the path written.
    """
    from safetensors.torch import save_file

    scales = {}
    meta = {'format': 'pt'}
    if isinstance(transformer, torch.nn.Module):
        scales = _peft_scales(transformer)
        heads = getattr(getattr(transformer, 'config', None), 'num_attention_heads', None)
        if heads is not None:
            meta[META_PREFIX + 'num_attention_heads'] = str(heads)
        state = transformer.state_dict()
    else:
        state = dict(transformer)
    for key, value in (metadata or {}).items():
        meta[key if key.startswith(META_PREFIX) or key == 'format' else META_PREFIX + key] = (
            str(value))

    diffusers_names = any(k.startswith('condition_embedder.') for k in state)

    def to_wan(name):
        if not diffusers_names:
            return name
        wan = dit_name_to_wan(name)
        if wan is None:
            raise WeightsError(f'cannot map DiT name {name!r} to the release layout')
        return wan

    def cast(tensor):
        tensor = tensor.detach().to('cpu')
        return (tensor.to(dtype) if dtype is not None else tensor).contiguous()

    out = {}
    for name, tensor in state.items():
        match = LORA_SUFFIX.match(name)
        if match:
            wan_path = to_wan(match['path'] + '.')[:-1]
            if match['part'] == 'lora_B':
                rank = tensor.shape[1]
                scale = scales.get(match['path'])
                if scale is None:
                    scale = (rank if lora_alpha is None else float(lora_alpha)) / rank
                tensor = (tensor.double() * scale).to(tensor.dtype)
            out[f'{DIT_MARKER}{wan_path}.{match["part"]}.default.weight'] = cast(tensor)
        else:
            out[DIT_MARKER + to_wan(name)] = cast(tensor)
    for module_path, pair in (lora or {}).items():
        down, up = pair[0], pair[1]
        wan_path = to_wan(module_path.rstrip('.') + '.')[:-1] if diffusers_names else (
            module_path.rstrip('.'))
        rank = down.shape[0]
        scale = (rank if lora_alpha is None else float(lora_alpha)) / rank
        for param in ('weight', 'bias'):
            plain = f'{DIT_MARKER}{wan_path}.{param}'
            if plain in out:
                out[f'{DIT_MARKER}{wan_path}.base_layer.{param}'] = out.pop(plain)
        if f'{DIT_MARKER}{wan_path}.base_layer.weight' not in out:
            raise WeightsError(f'LoRA for {module_path!r}: no such base layer')
        out[f'{DIT_MARKER}{wan_path}.lora_A.default.weight'] = cast(down)
        out[f'{DIT_MARKER}{wan_path}.lora_B.default.weight'] = cast(
            (up.double() * scale).to(up.dtype))

    if vae is not None:
        vae_state = vae.state_dict() if isinstance(vae, torch.nn.Module) else dict(vae)
        if 'encoder.conv_in.weight' in vae_state:
            num_res_blocks = diffusers_vae_res_blocks(vae_state)
            renamed = {}
            for name, tensor in vae_state.items():
                original = vae_name_to_original(name, num_res_blocks)
                if original is None:
                    raise WeightsError(f'cannot map VAE name {name!r} to the Wan layout')
                renamed[original] = tensor
            vae_state = renamed
        for name, tensor in vae_state.items():
            out[VAE_MARKER + name] = cast(tensor)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=meta)
    return path
