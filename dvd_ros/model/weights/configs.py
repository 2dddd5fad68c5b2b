"""Model kwargs inferred from tensor shapes (the release file stores no config)."""

import math
import re

from dvd_ros.errors import WeightsError


def infer_dit_config(shapes, num_heads=None):
    """Infer ``WanTransformer3DModel`` kwargs from Wan-named tensor shapes.

    The head count is not visible in any shape: ``num_heads`` wins, else the Wan
    convention of 128-channel heads (1.3B: 12 heads, 14B: 40), else two heads for the
    tiny test models (dim < 256).

    :param shapes: Wan DiT name (LoRA merged, prefix stripped) -> shape.
    :param num_heads: attention heads, when known.
    :return: kwargs dict.
    :raises WeightsError: when a tensor the config depends on is missing.
    """
    try:
        dim, in_channels, *patch = shapes['patch_embedding.weight']
        patch_volume = math.prod(patch)
        blocks = {int(n.split('.')[1]) for n in shapes if n.startswith('blocks.')}
        config = {
            'patch_size': tuple(patch),
            'in_channels': in_channels,
            'out_channels': shapes['head.head.weight'][0] // patch_volume,
            'text_dim': shapes['text_embedding.0.weight'][1],
            'freq_dim': shapes['time_embedding.0.weight'][1],
            'ffn_dim': shapes['blocks.0.ffn.0.weight'][0],
            'num_layers': max(blocks) + 1,
        }
    except (KeyError, ValueError) as exc:
        raise WeightsError(
            f'the DiT weights lack {exc} needed to infer the model size; is this a DVD / '
            'Wan2.1 T2V checkpoint?') from None
    if num_heads is None:
        num_heads = dim // 128 if dim % 128 == 0 and dim >= 256 else 2
    if dim % int(num_heads):
        raise WeightsError(f'num_heads={num_heads} does not divide the model width {dim}')
    config.update({
        'num_attention_heads': int(num_heads),
        'attention_head_dim': dim // int(num_heads),
        'cross_attn_norm': 'blocks.0.norm3.weight' in shapes,
        'qk_norm': ('rms_norm_across_heads' if 'blocks.0.self_attn.norm_q.weight' in shapes
                    else None),
        'eps': 1e-6,
        'image_dim': None,
        'added_kv_proj_dim': None,
        'rope_max_seq_len': 1024,
    })
    return config


def infer_vae_config(shapes):
    """Infer ``AutoencoderKLWan`` kwargs from original-named Wan2.1 VAE shapes.

    :param shapes: original VAE name -> shape.
    :return: kwargs dict (``num_res_blocks`` is also needed by the name mapping).
    :raises WeightsError: when the structure is not the Wan2.1 VAE's.
    """
    try:
        base_dim, in_channels = shapes['encoder.conv1.weight'][:2]
        z_dim = shapes['conv2.weight'][0]
        down = {}
        for name in shapes:
            match = re.match(r'^encoder\.downsamples\.(\d+)\.', name)
            if match:
                down.setdefault(int(match[1]), set()).add(name[match.end():])
        resamples = sorted(i for i, sub in down.items() if any('resample' in s for s in sub))
        num_res_blocks = resamples[0] if resamples else len(down)
        levels = len(resamples) + 1
        dim_mult = [
            shapes[f'encoder.downsamples.{lvl * (num_res_blocks + 1)}.residual.2.weight'][0]
            // base_dim for lvl in range(levels)]
        temporal = [any(s.startswith('time_conv.') for s in down[i]) for i in resamples]
        out_channels = shapes['decoder.head.2.weight'][0]
    except (KeyError, IndexError) as exc:
        raise WeightsError(
            f'the VAE weights lack {exc}; expected the Wan2.1 VAE structure') from None
    config = {
        'base_dim': base_dim,
        'z_dim': z_dim,
        'dim_mult': dim_mult,
        'num_res_blocks': num_res_blocks,
        'attn_scales': [],
        'temperal_downsample': temporal,
        'dropout': 0.0,
    }
    if in_channels != 3:
        config['in_channels'] = in_channels
    if out_channels != 3:
        config['out_channels'] = out_channels
    return config
