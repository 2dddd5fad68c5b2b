"""Load, convert and write DVD weights (official release files <-> diffusers modules).

Three on-disk layouts are understood:

- the official release (``model.safetensors`` v1.0, ``dvd_1.1.safetensors`` v1.1):
  ``pipe.dit.*`` (peft LoRA-wrapped Wan DiT, original Wan names) and optionally
  ``pipe.vae.model.*`` (the stock Wan2.1 VAE, original names); anything before the
  ``pipe.dit.`` marker (e.g. ``module.``) is tolerated;
- a Wan2.1 VAE file (``Wan2.1_VAE.pth`` or a ``.safetensors`` in the original or the
  diffusers layout), used when the release file carries no VAE copy;
- the converted folder written by ``save_converted``: ``dvd_ros.json`` + ``transformer/``
  + ``vae/`` in diffusers ``save_pretrained`` layout (safetensors). It is the fast path.

Name mapping follows DVD_SPEC 5.1 (DiT) and 5.3 (VAE); LoRA is merged in float64
(DVD_SPEC 5.2). Modules are built on the meta device and the tensors assigned, so the
weights are held once in memory.
"""

from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import pickle
import re

import torch

import dvd_ros
from dvd_ros.errors import WeightsError
from dvd_ros.model import presets

DEFAULT_WEIGHTS = Path(dvd_ros.__file__).parent / 'assets' / 'tiny'
META_FILE = 'dvd_ros.json'
DIT_MARKER = 'pipe.dit.'
VAE_MARKER = 'pipe.vae.model.'
# Keys of the safetensors header metadata written by write_release_checkpoint.
META_PREFIX = 'dvd_ros.'
FORMAT_VERSION = 1
_SHOW = 5  # how many offending names an error message lists

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
_LORA_SUFFIX = re.compile(r'^(?P<path>.+)\.(?P<part>lora_A|lora_B)\.(?P<adapter>[^.]+)\.weight$')
_BASE_SUFFIX = re.compile(r'^(?P<path>.+)\.base_layer\.(?P<param>weight|bias)$')


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


# --------------------------------------------------------------------------- name mapping

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


def _diffusers_vae_res_blocks(names):
    """Return ``num_res_blocks`` of a diffusers-named VAE (its decoder has one more)."""
    found = [int(m[1]) for k in names
             if (m := re.match(r'^decoder\.up_blocks\.0\.resnets\.(\d+)\.', k))]
    if not found:
        raise WeightsError('the VAE weights have no decoder.up_blocks.0.resnets.*')
    return max(found)


# --------------------------------------------------------------------------- reading files

def _first(names, count=_SHOW):
    names = sorted(names)
    more = f' (+{len(names) - count} more)' if len(names) > count else ''
    return ', '.join(names[:count]) + more


class _TensorFile:
    """Lazy access to the tensors of one weights file (safetensors or weights-only pickle)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise WeightsError(
                f'weights file not found: {self.path}; download the DVD weights (see '
                '`dvd-ros weights`) or pass the right path')
        if self.path.is_dir():
            raise WeightsError(f'{self.path} is a folder, expected a weights file')
        self.metadata = {}
        self._tensors = None
        self._handle = None
        if self.path.suffix in ('.pth', '.pt', '.ckpt', '.bin'):
            self._tensors = _load_pickle(self.path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._tensors.items()}
            return
        from safetensors import SafetensorError, safe_open
        try:
            self._handle = safe_open(str(self.path), framework='pt')
            self.metadata = dict(self._handle.metadata() or {})
            self.shapes, self.dtypes = {}, {}
            for key in self._handle.keys():
                piece = self._handle.get_slice(key)
                self.shapes[key] = tuple(piece.get_shape())
                self.dtypes[key] = piece.get_dtype()
        except SafetensorError as exc:
            raise WeightsError(
                f'{self.path} is not a readable safetensors file ({exc}); the file is '
                'probably truncated or corrupt: download it again') from None

    def keys(self):
        return self.shapes.keys()

    def get(self, key):
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error type for bad data
            raise WeightsError(
                f'cannot read tensor {key!r} from {self.path} ({exc}); the file is '
                'probably truncated or corrupt: download it again') from None

    def size_bytes(self):
        return self.path.stat().st_size


def _last_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _load_pickle(path):
    """Load a ``.pth`` state dict with ``weights_only=True`` (never unsafe unpickling)."""
    try:
        try:
            data = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError as exc:
            if 'mmap' not in str(exc):
                raise
            data = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        globals_needed = re.findall(r'Unsupported global: GLOBAL ([\w.]+)', str(exc))
        if not globals_needed:
            raise WeightsError(
                f'cannot read {path} as a PyTorch weights file ({_last_line(exc)}); the file '
                'is probably truncated or corrupt: download it again') from None
        raise WeightsError(
            f'{path} needs unsafe unpickling (it references {", ".join(globals_needed)}, not '
            'only tensors); refusing to load it. Use the official Wan2.1_VAE.pth or a '
            '.safetensors file') from None
    except Exception as exc:
        raise WeightsError(
            f'cannot read {path} as a PyTorch weights file ({_last_line(exc)}); '
            'the file is probably truncated or corrupt: download it again') from None
    for wrapper in ('state_dict', 'model'):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise WeightsError(f'{path} does not hold a plain name -> tensor state dict')
    return data


def _strip_before(keys, marker):
    """Return ``{stripped name: original key}`` for keys containing ``marker``."""
    found = {}
    for key in keys:
        pos = key.find(marker)
        if pos >= 0:
            found[key[pos + len(marker):]] = key
    return found


def detect_layout(path):
    """Name the layout of ``path``: 'converted', 'release', 'vae-original' or 'vae-diffusers'.

    :raises WeightsError: missing path or a layout none of the loaders knows.
    """
    path = Path(path)
    if path.is_dir():
        if (path / META_FILE).is_file():
            return 'converted'
        raise WeightsError(
            f'{path} is a folder without {META_FILE}; expected a folder written by '
            '`dvd-ros weights convert` or an official .safetensors file')
    keys = list(_TensorFile(path).keys())
    return _layout_of_keys(keys, path)


def _layout_of_keys(keys, path):
    if any(DIT_MARKER in k for k in keys):
        return 'release'
    if 'encoder.conv1.weight' in keys or any(k.endswith(VAE_MARKER + 'encoder.conv1.weight')
                                             for k in keys):
        return 'vae-original'
    if 'encoder.conv_in.weight' in keys:
        return 'vae-diffusers'
    raise WeightsError(
        f'unknown checkpoint layout in {path}: no {DIT_MARKER!r} keys (official DVD file) and '
        f'no Wan VAE keys; first keys: {_first(keys)}')


# --------------------------------------------------------------------------- LoRA merge

def merge_lora(tensors, lora_alpha=None, dtype=torch.float32, merge=True, device=None):
    """Merge peft LoRA pairs into their base weights: ``W + (alpha / r) * B @ A`` in float64.

    :param tensors: callable ``name -> tensor`` plus an iterable of names, given as a
        ``(names, get)`` pair; names are Wan DiT names with the ``pipe.dit.`` prefix removed.
    :param lora_alpha: LoRA alpha; None = the rank of each pair (scale 1, the DVD default).
    :param dtype: dtype of the returned tensors.
    :param merge: False keeps the base weights only (ignores the LoRA; for comparisons).
    :param device: where the float64 products are computed (e.g. a GPU: the 1.3B merge
        takes minutes on two CPU cores); results return to the CPU. None = CPU.
    :return: ``(state, info)``: plain Wan names -> tensors, and ``{'rank', 'alpha',
        'lora_pairs'}``.
    :raises WeightsError: an incomplete LoRA triple or mismatched shapes.
    """
    names, get = tensors
    bases, loras, plain = {}, {}, []
    for name in names:
        match = _BASE_SUFFIX.match(name)
        if match:
            bases.setdefault(match['path'], {})[match['param']] = name
            continue
        match = _LORA_SUFFIX.match(name)
        if match:
            loras.setdefault(match['path'], {}).setdefault(match['adapter'], {})[
                match['part']] = name
            continue
        plain.append(name)
    state = {name: get(name).to(dtype) for name in plain}
    ranks = set()
    for path, parts in bases.items():
        if 'weight' not in parts:
            raise WeightsError(f'LoRA-wrapped layer {path!r} has no base_layer.weight')
        adapters = loras.get(path, {})
        if len(adapters) > 1:
            raise WeightsError(
                f'layer {path!r} has several LoRA adapters ({", ".join(adapters)}); '
                'the DVD release has exactly one')
        weight = get(parts['weight'])
        if merge and adapters:
            (pair,) = adapters.values()
            if set(pair) != {'lora_A', 'lora_B'}:
                raise WeightsError(f'layer {path!r} has an incomplete LoRA pair: {sorted(pair)}')
            down, up = get(pair['lora_A']), get(pair['lora_B'])
            rank = down.shape[0]
            if up.shape[1] != rank or (up.shape[0], down.shape[1]) != tuple(weight.shape):
                raise WeightsError(
                    f'LoRA shapes of {path!r} do not fit: base {tuple(weight.shape)}, '
                    f'lora_A {tuple(down.shape)}, lora_B {tuple(up.shape)}')
            ranks.add(rank)
            scale = (rank if lora_alpha is None else float(lora_alpha)) / rank
            on = device or weight.device
            delta = up.to(on, torch.float64) @ down.to(on, torch.float64)
            weight = weight.to(on, torch.float64) + scale * delta
        weight = weight.to(dtype)
        state[path + '.weight'] = weight.cpu() if device is not None else weight
        if 'bias' in parts:
            state[path + '.bias'] = get(parts['bias']).to(dtype)
    orphans = set(loras) - set(bases)
    if orphans:
        raise WeightsError(f'LoRA weights without a base layer: {_first(orphans)}')
    rank = max(ranks) if ranks else None
    info = {
        'rank': rank if len(ranks) <= 1 else sorted(ranks),
        'alpha': (float(lora_alpha) if lora_alpha is not None else rank) if merge else None,
        'lora_pairs': len([p for p in bases if p in loras]),
        'merged': bool(merge and ranks),
    }
    return state, info


# --------------------------------------------------------------------------- configs

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


# --------------------------------------------------------------------------- building modules

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
        problems.append(f'missing {len(missing)} keys: {_first(missing)}')
    if unexpected:
        problems.append(f'unexpected {len(unexpected)} keys: {_first(unexpected)}')
    if problems:
        raise WeightsError(f'{what} weights in {source} do not fit the model: '
                           + '; '.join(problems))
    wrong = [f'{k} {tuple(state[k].shape)} (model {expected[k]})'
             for k in sorted(expected) if tuple(state[k].shape) != expected[k]]
    if wrong:
        raise WeightsError(
            f'{what} weights in {source} have {len(wrong)} shape mismatches: '
            + ', '.join(wrong[:_SHOW]))
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


def _check_no_meta(model, what):
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    if left:
        raise WeightsError(f'{what}: tensors left unloaded: {_first(left)}')


# --------------------------------------------------------------------------- loading

def _vae_state_from_file(tensor_file, dtype):
    """Return ``(config, diffusers state)`` for a VAE file or a release file's VAE copy."""
    keys = list(tensor_file.keys())
    layout = _layout_of_keys(keys, tensor_file.path)
    if layout == 'vae-diffusers':
        # Recover the original names only to infer the config with one code path.
        num_res_blocks = _diffusers_vae_res_blocks(keys)
        shapes = {vae_name_to_original(k, num_res_blocks): s
                  for k, s in tensor_file.shapes.items()}
        if None in shapes:
            raise WeightsError(f'unknown VAE names in {tensor_file.path}')
        config = infer_vae_config(shapes)
        return config, {k: tensor_file.get(k).to(dtype) for k in keys}
    names = _strip_before(keys, VAE_MARKER) if any(VAE_MARKER in k for k in keys) else {
        k: k for k in keys}
    shapes = {n: tensor_file.shapes[k] for n, k in names.items()}
    config = infer_vae_config(shapes)
    state, unknown = {}, []
    for name, key in names.items():
        target = vae_name_to_diffusers(name, config['num_res_blocks'])
        if target is None:
            unknown.append(name)
        else:
            state[target] = tensor_file.get(key).to(dtype)
    if unknown:
        raise WeightsError(
            f'unexpected VAE keys in {tensor_file.path}: {_first(unknown)}')
    return config, state


def _load_release(path, vae_path, lora_alpha, dtype, num_heads, merge, device):
    tensor_file = _TensorFile(path)
    keys = list(tensor_file.keys())
    layout = _layout_of_keys(keys, path)
    if layout != 'release':
        raise WeightsError(
            f'{path} holds only a VAE ({layout}); pass the DVD checkpoint as the path and '
            'this file as vae_path / --vae')
    # Settle where the VAE comes from before the (slow, for 1.3B) LoRA merge.
    if vae_path is not None:
        vae_file, vae_source = _TensorFile(vae_path), str(vae_path)
    elif any(VAE_MARKER in k for k in keys):
        vae_file, vae_source = tensor_file, f'{path} (embedded pipe.vae.model.*)'
    else:
        raise WeightsError(
            f'{path} carries no VAE copy (no {VAE_MARKER!r} keys); pass the Wan2.1 VAE with '
            'vae_path= / --vae Wan2.1_VAE.pth (from Wan-AI/Wan2.1-T2V-1.3B)')
    dit_names = _strip_before(keys, DIT_MARKER)
    state, info = merge_lora((list(dit_names), lambda n: tensor_file.get(dit_names[n])),
                             lora_alpha=lora_alpha, dtype=dtype, merge=merge,
                             device=device if device.type == 'cuda' else None)
    meta_heads = tensor_file.metadata.get(META_PREFIX + 'num_attention_heads')
    if num_heads is None and meta_heads is not None:
        num_heads = int(meta_heads)
    config = infer_dit_config({k: tuple(v.shape) for k, v in state.items()}, num_heads)
    renamed, unknown = {}, []
    for name, tensor in state.items():
        target = dit_name_to_diffusers(name)
        if target is None:
            unknown.append(name)
        else:
            renamed[target] = tensor
    if unknown:
        raise WeightsError(f'unexpected DiT keys in {path}: {_first(unknown)}')
    del state
    transformer = build_transformer(config, renamed, path)
    del renamed

    vae = build_vae(*_vae_state_from_file(vae_file, dtype), vae_file.path)

    file_meta = {k[len(META_PREFIX):]: v for k, v in tensor_file.metadata.items()
                 if k.startswith(META_PREFIX)}
    meta = {
        'format_version': FORMAT_VERSION,
        'source': str(path),
        'source_layout': 'release',
        'vae_source': vae_source,
        'lora_rank': info['rank'],
        'lora_alpha': info['alpha'],
        'lora_pairs': info['lora_pairs'],
        'lora_merged': info['merged'],
        'height': int(file_meta.get('height', 480)),
        'width': int(file_meta.get('width', 640)),
    }
    return DVDModels(transformer, vae, presets.LATENTS_MEAN, presets.LATENTS_STD, meta)


def _read_folder_state(folder, dtype):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob('*.safetensors'))
    if not files:
        raise WeightsError(f'no .safetensors weights in {folder}; convert the weights again')
    state = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except SafetensorError as exc:
            raise WeightsError(
                f'{file} is not a readable safetensors file ({exc}); convert again') from None
    return {k: v.to(dtype) for k, v in state.items()}


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsError(f'{path} is missing; convert the weights again') from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f'{path} is not valid JSON ({exc}); convert again') from None


def _load_converted(folder, dtype):
    folder = Path(folder)
    meta = _read_json(folder / META_FILE)
    parts = {}
    for part in ('transformer', 'vae'):
        config = {k: v for k, v in _read_json(folder / part / 'config.json').items()
                  if not k.startswith('_')}
        parts[part] = (config, _read_folder_state(folder / part, dtype))
    transformer = build_transformer(*parts['transformer'], folder / 'transformer')
    vae = build_vae(*parts['vae'], folder / 'vae')
    mean = tuple(meta.get('latents_mean', presets.LATENTS_MEAN))
    std = tuple(meta.get('latents_std', presets.LATENTS_STD))
    return DVDModels(transformer, vae, mean, std, meta)


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
        models = _load_converted(path, dtype)
    else:
        models = _load_release(path, vae_path, lora_alpha, dtype, num_heads, merge_lora,
                               torch.device(device))
    for module, what in ((models.transformer, 'DiT'), (models.vae, 'VAE')):
        _check_no_meta(module, what)
        # Weights are already in `dtype`; passing dtype to .to() would also cast the RoPE
        # tables, which diffusers keeps in float32.
        module.to(device)
    return models


# --------------------------------------------------------------------------- writing

def recommended_window(path=None):
    """Return the window (frames) a converted folder's meta recommends, or None.

    :param path: converted folder, release file, or None for the embedded tiny model.
    :return: int, or None for release files and folders that recommend nothing.
    """
    meta = Path(DEFAULT_WEIGHTS if path is None else path) / META_FILE
    try:
        value = json.loads(meta.read_text()).get('recommended_window')
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value >= 1 else None


def save_converted(models, dst_dir, meta=None):
    """Write the fast-path folder: ``dvd_ros.json``, ``transformer/`` and ``vae/`` (safetensors).

    :param models: ``DVDModels`` (weights are saved in their current dtype).
    :param dst_dir: output folder (created; existing files of the same name are replaced).
    :param meta: extra entries for ``dvd_ros.json`` (e.g. ``height``/``width`` = recommended
        processing size, ``source``); they override the ones in ``models.meta``.
    :return: the folder as a ``Path``.
    """
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    # dvd_ros.json marks a complete folder and is written last; drop an old one first, so a
    # re-conversion that stops midway never passes for weights.
    (dst / META_FILE).unlink(missing_ok=True)
    models.transformer.save_pretrained(dst / 'transformer', safe_serialization=True)
    models.vae.save_pretrained(dst / 'vae', safe_serialization=True)
    info = dict(models.meta)
    info.update(meta or {})
    info.update({
        'format_version': FORMAT_VERSION,
        'latents_mean': [float(x) for x in models.latents_mean],
        'latents_std': [float(x) for x in models.latents_std],
        'dtype': str(models.dtype).removeprefix('torch.'),
    })
    info.setdefault('height', 480)
    info.setdefault('width', 640)
    (dst / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + '\n')
    return dst


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
        match = _LORA_SUFFIX.match(name)
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
            num_res_blocks = _diffusers_vae_res_blocks(vae_state)
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


# --------------------------------------------------------------------------- inspection

def describe(path):
    """Summarise a weights file or converted folder without loading the tensors.

    :return: dict with ``layout``, tensor counts, LoRA rank, dtypes, size in bytes.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == 'converted':
        meta = _read_json(path / META_FILE)
        files = list(path.rglob('*.safetensors'))
        counts = {}
        for part in ('transformer', 'vae'):
            counts[part] = sum(len(_TensorFile(f).shapes) for f in (path / part).glob(
                '*.safetensors'))
        return {
            'path': str(path), 'layout': layout, 'dit_tensors': counts['transformer'],
            'vae_tensors': counts['vae'], 'lora_rank': meta.get('lora_rank'),
            'lora_alpha': meta.get('lora_alpha'), 'dtypes': [meta.get('dtype')],
            'size_bytes': sum(f.stat().st_size for f in files),
            'processing_size': [meta.get('height'), meta.get('width')],
            'source': meta.get('source'),
        }
    tensor_file = _TensorFile(path)
    keys = list(tensor_file.keys())
    dit = _strip_before(keys, DIT_MARKER)
    vae = _strip_before(keys, VAE_MARKER)
    prefix = sorted({k[:k.find(DIT_MARKER)] for k in keys if DIT_MARKER in k})
    ranks = sorted({tensor_file.shapes[k][0] for n, k in dit.items()
                    if (m := _LORA_SUFFIX.match(n)) and m['part'] == 'lora_A'})
    params = sum(math.prod(s) for s in tensor_file.shapes.values())
    vae_count = len(vae) if layout == 'release' else len(keys)
    return {
        'path': str(path),
        'layout': layout,
        'prefix': prefix[0] if prefix else '',
        'dit_tensors': len(dit),
        'lora_pairs': sum(1 for n in dit if n.endswith('.weight') and '.lora_A.' in n),
        'lora_rank': ranks[0] if len(ranks) == 1 else (ranks or None),
        'vae_tensors': vae_count,
        'other_tensors': len(keys) - len(dit) - vae_count,
        'dtypes': sorted({str(d) for d in tensor_file.dtypes.values()}),
        'parameters': params,
        'size_bytes': tensor_file.size_bytes(),
        'metadata': tensor_file.metadata,
    }
