"""Building the diffusers modules on the meta device and assigning checked tensors."""

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import SHOW, first_names


def _build_on_meta(cls, config):
    """Construct a diffusers model without allocating its parameters."""
    with torch.device('meta'):
        model = cls.from_config(config) if hasattr(cls, 'from_config') else cls(**config)
    return model


def _assign(model, state, what, source):
    """Strict name + shape check, then ``load_state_dict(assign=True)``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f'missing {len(missing)} keys: {first_names(missing)}')
    if unexpected:
        problems.append(f'unexpected {len(unexpected)} keys: {first_names(unexpected)}')
    if problems:
        raise WeightsError(f'{what} weights in {source} do not fit the model: '
                           + '; '.join(problems))
    wrong = [f'{k} {tuple(state[k].shape)} (model {expected[k]})'
             for k in sorted(expected) if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise WeightsError(
            f'{what} weights in {source} have {len(wrong)} shape mismatches: '
            + ', '.join(wrong[:SHOW]))
    model.load_state_dict(state, strict=True, assign=True)
    return model


def build_transformer(config, state, source='<state>'):
    """Build a ``WanTransformer3DModel`` from kwargs and a diffusers-named state dict."""
    from diffusers import WanTransformer3DModel

    model = _build_on_meta(WanTransformer3DModel, config)
    _assign(model, state, 'DiT', source)
    # RoPE tables are non-persistent buffers (not in any file): rebuild them for real.
    rope = model.rope
    with torch.device('cpu'):
        model.rope = type(rope)(rope.attention_head_dim, rope.patch_size, rope.max_seq_len)
    return model.eval().requires_grad_(False)


def build_vae(config, state, source='<state>'):
    """Build an ``AutoencoderKLWan`` from kwargs and a diffusers-named state dict."""
    from diffusers import AutoencoderKLWan

    model = _build_on_meta(AutoencoderKLWan, config)
    _assign(model, state, 'VAE', source)
    return model.eval().requires_grad_(False)


def check_no_meta(model, what):
    """Raise when a parameter or buffer of ``model`` is still on the meta device."""
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    if left:
        raise WeightsError(f'{what}: tensors left unloaded: {first_names(left)}')
