"""Names of the DVD weights: key prefixes, file names, Wan <-> diffusers name maps.

Name mapping follows DVD_SPEC 5.1 (DiT) and 5.3 (VAE).
"""

from pathlib import Path
import re

import dvd_ros
from dvd_ros.errors import WeightsError

DEFAULT_WEIGHTS = Path(dvd_ros.__file__).parent / 'assets' / 'tiny'
META_FILE = 'dvd_ros.json'
DIT_MARKER = 'pipe.dit.'
VAE_MARKER = 'pipe.vae.model.'
# Keys of the safetensors header metadata written by write_release_checkpoint.
META_PREFIX = 'dvd_ros.'
# 2: dvd_ros.json carries the manifest (`files`: size and SHA-256 of every file it vouches for).
FORMAT_VERSION = 2
SHOW = 5  # how many offending names an error message lists

# DiT: (DVD / Wan name prefix, diffusers name prefix). '{i}' is a block index. Entries
# ending in '.' are module prefixes (any parameter or LoRA suffix may follow); the others
# are whole parameter names. DVD_SPEC 5.1; note Wan norm3 (before cross-attn) -> norm2.
DIT_NAME_TABLE = (
    ('blocks.{i}.self_attn.q.', 'blocks.{i}.attn1.to_q.'),
    ('blocks.{i}.self_attn.k.', 'blocks.{i}.attn1.to_k.'),
    ('blocks.{i}.self_attn.v.', 'blocks.{i}.attn1.to_v.'),
    ('blocks.{i}.self_attn.o.', 'blocks.{i}.attn1.to_out.0.'),
    ('blocks.{i}.self_attn.norm_q.', 'blocks.{i}.attn1.norm_q.'),
    ('blocks.{i}.self_attn.norm_k.', 'blocks.{i}.attn1.norm_k.'),
    ('blocks.{i}.cross_attn.q.', 'blocks.{i}.attn2.to_q.'),
    ('blocks.{i}.cross_attn.k.', 'blocks.{i}.attn2.to_k.'),
    ('blocks.{i}.cross_attn.v.', 'blocks.{i}.attn2.to_v.'),
    ('blocks.{i}.cross_attn.o.', 'blocks.{i}.attn2.to_out.0.'),
    ('blocks.{i}.cross_attn.norm_q.', 'blocks.{i}.attn2.norm_q.'),
    ('blocks.{i}.cross_attn.norm_k.', 'blocks.{i}.attn2.norm_k.'),
    ('blocks.{i}.norm3.', 'blocks.{i}.norm2.'),
    ('blocks.{i}.ffn.0.', 'blocks.{i}.ffn.net.0.proj.'),
    ('blocks.{i}.ffn.2.', 'blocks.{i}.ffn.net.2.'),
    ('blocks.{i}.modulation', 'blocks.{i}.scale_shift_table'),
    ('patch_embedding.', 'patch_embedding.'),
    ('text_embedding.0.', 'condition_embedder.text_embedder.linear_1.'),
    ('text_embedding.2.', 'condition_embedder.text_embedder.linear_2.'),
    ('time_embedding.0.', 'condition_embedder.time_embedder.linear_1.'),
    ('time_embedding.2.', 'condition_embedder.time_embedder.linear_2.'),
    ('time_projection.1.', 'condition_embedder.time_proj.'),
    ('head.head.', 'proj_out.'),
    ('head.modulation', 'scale_shift_table'),
)

# VAE residual block sub-modules, original -> diffusers (DVD_SPEC 5.3, rule R).
_VAE_RESIDUAL = (
    ('residual.0.', 'norm1.'),
    ('residual.2.', 'conv1.'),
    ('residual.3.', 'norm2.'),
    ('residual.6.', 'conv2.'),
    ('shortcut.', 'conv_shortcut.'),
)
# VAE prefixes that map one to one (original, diffusers, apply rule R to the rest).
_VAE_FIXED = (
    ('encoder.conv1.', 'encoder.conv_in.', False),
    ('encoder.middle.0.', 'encoder.mid_block.resnets.0.', True),
    ('encoder.middle.1.', 'encoder.mid_block.attentions.0.', False),
    ('encoder.middle.2.', 'encoder.mid_block.resnets.1.', True),
    ('encoder.head.0.', 'encoder.norm_out.', False),
    ('encoder.head.2.', 'encoder.conv_out.', False),
    ('conv1.', 'quant_conv.', False),
    ('conv2.', 'post_quant_conv.', False),
    ('decoder.conv1.', 'decoder.conv_in.', False),
    ('decoder.middle.0.', 'decoder.mid_block.resnets.0.', True),
    ('decoder.middle.1.', 'decoder.mid_block.attentions.0.', False),
    ('decoder.middle.2.', 'decoder.mid_block.resnets.1.', True),
    ('decoder.head.0.', 'decoder.norm_out.', False),
    ('decoder.head.2.', 'decoder.conv_out.', False),
)
LORA_SUFFIX = re.compile(r'^(?P<path>.+)\.(?P<part>lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight$')
BASE_SUFFIX = re.compile(r'^(?P<path>.+)\.base_layer\.(?P<param>weight|bias)$')


def _compile_table(table, reverse):
    rules = []
    for wan, diff in table:
        src, dst = (diff, wan) if reverse else (wan, diff)
        pattern = re.escape(src).replace(re.escape('{i}'), r'(?P<i>\d+)')
        pattern = '^' + pattern + ('' if src.endswith('.') else '$')
        rules.append((re.compile(pattern), dst))
    return rules


_DIT_FORWARD = _compile_table(DIT_NAME_TABLE, reverse=False)
_DIT_REVERSE = _compile_table(DIT_NAME_TABLE, reverse=True)


def _rename(name, rules):
    for pattern, dst in rules:
        match = pattern.match(name)
        if match:
            index = match.groupdict().get('i')
            return dst.format(i=index) + name[match.end():]
    return None


def dit_name_to_diffusers(name):
    """Map a Wan/DVD DiT name (prefix stripped; LoRA suffixes allowed) to diffusers, or None."""
    return _rename(name, _DIT_FORWARD)


def dit_name_to_wan(name):
    """Map a diffusers ``WanTransformer3DModel`` name to the Wan/DVD name, or None."""
    return _rename(name, _DIT_REVERSE)


def _residual(rest, reverse):
    for orig, diff in _VAE_RESIDUAL:
        src, dst = (diff, orig) if reverse else (orig, diff)
        if rest.startswith(src):
            return dst + rest[len(src):]
    return rest


def vae_name_to_diffusers(name, num_res_blocks):
    """Map an original Wan2.1 VAE name to its ``AutoencoderKLWan`` name, or None.

    :param name: e.g. ``decoder.upsamples.4.shortcut.weight``.
    :param num_res_blocks: encoder residual blocks per level (the decoder has one more).
    """
    for orig, diff, residual in _VAE_FIXED:
        if name.startswith(orig):
            rest = name[len(orig):]
            return diff + (_residual(rest, False) if residual else rest)
    match = re.match(r'^encoder\.downsamples\.(\d+)\.(.+)$', name)
    if match:
        return f'encoder.down_blocks.{match[1]}.' + _residual(match[2], False)
    match = re.match(r'^decoder\.upsamples\.(\d+)\.(.+)$', name)
    if match:
        # Each decoder level holds num_res_blocks + 1 residual blocks, then one upsampler.
        level, pos = divmod(int(match[1]), num_res_blocks + 2)
        if pos <= num_res_blocks:
            return f'decoder.up_blocks.{level}.resnets.{pos}.' + _residual(match[2], False)
        return f'decoder.up_blocks.{level}.upsamplers.0.' + match[2]
    return None


def vae_name_to_original(name, num_res_blocks):
    """Map an ``AutoencoderKLWan`` name back to the original Wan2.1 VAE name, or None."""
    for orig, diff, residual in _VAE_FIXED:
        if name.startswith(diff):
            rest = name[len(diff):]
            return orig + (_residual(rest, True) if residual else rest)
    match = re.match(r'^encoder\.down_blocks\.(\d+)\.(.+)$', name)
    if match:
        return f'encoder.downsamples.{match[1]}.' + _residual(match[2], True)
    stride = num_res_blocks + 2
    match = re.match(r'^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$', name)
    if match:
        index = int(match[1]) * stride + int(match[2])
        return f'decoder.upsamples.{index}.' + _residual(match[3], True)
    match = re.match(r'^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)$', name)
    if match:
        return f'decoder.upsamples.{int(match[1]) * stride + num_res_blocks + 1}.' + match[2]
    return None


def diffusers_vae_res_blocks(names):
    """Return ``num_res_blocks`` of a diffusers-named VAE (its decoder has one more)."""
    found = [int(m[1]) for k in names
             if (m := re.match(r'^decoder\.up_blocks\.0\.resnets\.(\d+)\.', k))]
    if not found:
        raise WeightsError('the VAE weights have no decoder.up_blocks.0.resnets.*')
    return max(found)



def first_names(names, count=SHOW):
    """Return the first ``count`` sorted names joined for an error message."""
    names = sorted(names)
    more = f' (+{len(names) - count} more)' if len(names) > count else ''
    return ', '.join(names[:count]) + more



def strip_before(keys, marker):
    """Return ``{stripped name: original key}`` for keys containing ``marker``."""
    found = {}
    for key in keys:
        pos = key.find(marker)
        if pos >= 0:
            found[key[pos + len(marker):]] = key
    return found
