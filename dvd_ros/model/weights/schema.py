"""Checks of the values in a converted folder's ``dvd_ros.json`` and ``config.json`` files.

A converted folder is input like any other: every value that reaches a constructor or the
pipeline is type- and range-checked here, so a damaged or hostile file is one clear error,
never a traceback, a huge allocation or a silently wrong model.
"""

import math
import posixpath

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import FORMAT_VERSION

MAX_JSON_BYTES = 1024 * 1024  # dvd_ros.json / config.json (the 1.3B ones are < 4 kB)
RUN_DTYPES = ('float32', 'bfloat16', 'float16')
PARTS = ('transformer', 'vae')
MAX_WINDOW = 161  # the largest `window` the node accepts (dvd_ros.ros.params)
MAX_SIDE = 16384  # processing height / width


def _fail(path, key, value, expected):
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + '...'
    return WeightsError(
        f'{path}: {key} = {shown} is invalid ({expected}); the folder is damaged or was not '
        'written by `dvd-ros weights convert`: re-run convert')


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int(low, high):
    def check(value):
        return _is_int(value) and low <= value <= high
    return check, f'an integer in [{low}, {high}]'


def _opt_int(low, high):
    def check(value):
        return value is None or (_is_int(value) and low <= value <= high)
    return check, f'null or an integer in [{low}, {high}]'


def _float(low, high, open_low=False):
    def check(value):
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and (low < value if open_low else low <= value)
                and value <= high)
    return check, f'a finite number in {"(" if open_low else "["}{low}, {high}]'


def _bool():
    return (lambda value: isinstance(value, bool)), 'true or false'


def _opt_str(choices):
    return (lambda value: value is None or value in choices), f'null or one of {choices}'


def _int_list(low, high, min_len=1, max_len=8):
    def check(value):
        return (isinstance(value, list) and min_len <= len(value) <= max_len
                and all(_is_int(v) and low <= v <= high for v in value))
    return check, f'a list of {min_len}-{max_len} integers in [{low}, {high}]'


def _bool_list(max_len=8):
    def check(value):
        return (isinstance(value, list) and len(value) <= max_len
                and all(isinstance(v, bool) for v in value))
    return check, f'a list of at most {max_len} booleans'


def _number_list(max_len=8):
    def check(value):
        return isinstance(value, list) and len(value) <= max_len and all(
            _float(-1e6, 1e6)[0](v) for v in value)
    return check, f'a list of at most {max_len} finite numbers'


def _stats(length, positive):
    def check(value):
        low_ok = (lambda v: v > 0) if positive else (lambda v: True)
        return isinstance(value, list) and len(value) == length and all(
            _float(-1e6, 1e6)[0](v) and low_ok(v) for v in value)
    what = 'finite and > 0' if positive else 'finite'
    return check, f'a list of {length} numbers, {what}'


# WanTransformer3DModel kwargs. Bounds hold every Wan2.1 size (1.3B: 12 heads x 128, 30
# layers; 14B: 40 heads x 128, 40 layers) with room, and keep a hostile file from asking
# for terabytes.
DIT_KEYS = {
    'patch_size': _int_list(1, 16, 3, 3),
    'num_attention_heads': _int(1, 256),
    'attention_head_dim': _int(2, 1024),
    'in_channels': _int(1, 1024),
    'out_channels': _int(1, 1024),
    'text_dim': _int(1, 65536),
    'freq_dim': _int(2, 65536),
    'ffn_dim': _int(1, 262144),
    'num_layers': _int(1, 200),
    'cross_attn_norm': _bool(),
    'qk_norm': _opt_str(('rms_norm_across_heads', 'rms_norm', 'layer_norm')),
    'eps': _float(0.0, 0.1, open_low=True),
    'image_dim': _opt_int(1, 65536),
    'added_kv_proj_dim': _opt_int(1, 65536),
    'rope_max_seq_len': _int(1, 1 << 20),
    'pos_embed_seq_len': _opt_int(1, 1 << 20),
}
# AutoencoderKLWan kwargs (Wan2.1 VAE: base 96, z 16, dim_mult [1, 2, 4, 4], 2 res blocks).
VAE_KEYS = {
    'base_dim': _int(1, 1024),
    'decoder_base_dim': _opt_int(1, 1024),
    'z_dim': _int(1, 256),
    'dim_mult': _int_list(1, 16),
    'num_res_blocks': _int(1, 16),
    'attn_scales': _number_list(),
    'temperal_downsample': _bool_list(),
    'dropout': _float(0.0, 1.0),
    'in_channels': _int(1, 64),
    'out_channels': _int(1, 64),
    'is_residual': _bool(),
    'patch_size': _opt_int(1, 16),
    'scale_factor_spatial': _int(1, 64),
    'scale_factor_temporal': _int(1, 64),
}


def _newer_argument(model_class, key, value):
    """Return whether ``key`` is a plain argument of the installed diffusers ``model_class``.

    A diffusers release newer than these rules may write keys of its own into the folders it
    converts; they are accepted when the installed class takes them and the value is a small
    JSON scalar (no list or object that could ask for a large allocation).
    """
    import inspect

    import diffusers
    scalar = value is None or isinstance(value, (bool, str)) and len(str(value)) <= 64 or (
        isinstance(value, (int, float)) and math.isfinite(value) and abs(value) <= 1 << 20)
    if not scalar:
        return False
    cls = getattr(diffusers, model_class, None)
    return cls is not None and key in inspect.signature(cls.__init__).parameters


def _check_keys(config, rules, path, required=(), model_class=None):
    for key in required:
        if key not in config:
            raise _fail(path, key, None, 'required')
    for key, value in config.items():
        if key.startswith('_'):
            continue  # diffusers bookkeeping (_class_name, _diffusers_version, ...)
        if key not in rules and model_class and _newer_argument(model_class, key, value):
            continue
        if key not in rules:
            raise WeightsError(
                f'{path}: unknown key {key!r}; the folder was written by another version or '
                'damaged: re-run `dvd-ros weights convert`')
        check, expected = rules[key]
        if not check(value):
            raise _fail(path, key, value, expected)


def check_dit_config(config, path):
    """Validate a transformer ``config.json``; return the constructor kwargs.

    :raises WeightsError: unknown key, missing key, wrong type or out of range.
    """
    if not isinstance(config, dict):
        raise WeightsError(f'{path} is not a JSON object; re-run `dvd-ros weights convert`')
    _check_keys(config, DIT_KEYS, path, required=(
        'patch_size', 'num_attention_heads', 'attention_head_dim', 'in_channels',
        'out_channels', 'text_dim', 'freq_dim', 'ffn_dim', 'num_layers'),
        model_class='WanTransformer3DModel')
    width = config['num_attention_heads'] * config['attention_head_dim']
    if width > 16384:
        raise _fail(path, 'num_attention_heads * attention_head_dim', width, '<= 16384')
    kwargs = {k: v for k, v in config.items() if not k.startswith('_')}
    kwargs['patch_size'] = tuple(kwargs['patch_size'])
    return kwargs


def check_vae_config(config, path):
    """Validate a VAE ``config.json``; return the constructor kwargs.

    :raises WeightsError: unknown key, missing key, wrong type or out of range.
    """
    if not isinstance(config, dict):
        raise WeightsError(f'{path} is not a JSON object; re-run `dvd-ros weights convert`')
    z_dim = config.get('z_dim')
    check, expected = VAE_KEYS['z_dim']
    if not check(z_dim):
        raise _fail(path, 'z_dim', z_dim, expected)
    rules = dict(VAE_KEYS, latents_mean=_stats(z_dim, positive=False),
                 latents_std=_stats(z_dim, positive=True))
    _check_keys(config, rules, path, required=('base_dim', 'z_dim', 'dim_mult',
                                               'num_res_blocks', 'temperal_downsample'),
                model_class='AutoencoderKLWan')
    if len(config['temperal_downsample']) != len(config['dim_mult']) - 1:
        raise _fail(path, 'temperal_downsample', config['temperal_downsample'],
                    f'one entry per level change: {len(config["dim_mult"]) - 1}')
    return {k: v for k, v in config.items() if not k.startswith('_')}


def _check_files(files, path):
    if not isinstance(files, dict) or not files:
        raise _fail(path, 'files', files, 'the manifest: relative path -> {size, sha256}')
    for name, entry in files.items():
        parts = name.split('/') if isinstance(name, str) else []
        plain = (len(parts) == 2 and parts[0] in PARTS and parts[1] == posixpath.basename(
            parts[1]) and not parts[1].startswith('.') and parts[1] not in ('', '..')
            and (parts[1] == 'config.json' or parts[1].endswith('.safetensors')))
        if not plain:
            raise _fail(path, 'files', name, 'entries are transformer/ or vae/ followed by '
                        'config.json or a .safetensors name')
        if not (isinstance(entry, dict) and set(entry) == {'size', 'sha256'}
                and _is_int(entry['size']) and entry['size'] >= 0
                and isinstance(entry['sha256'], str) and len(entry['sha256']) == 64
                and all(c in '0123456789abcdef' for c in entry['sha256'])):
            raise _fail(path, f'files[{name!r}]', entry, '{"size": bytes, "sha256": hex}')
    for part in PARTS:
        if f'{part}/config.json' not in files or not any(
                n.startswith(part + '/') and n.endswith('.safetensors') for n in files):
            raise _fail(path, 'files', sorted(files),
                        f'{part}/config.json and {part}/*.safetensors listed')


def check_meta(meta, path):
    """Validate a parsed ``dvd_ros.json``; return it.

    :raises WeightsError: unknown format version, no manifest, wrong types or ranges.
    """
    if not isinstance(meta, dict):
        raise WeightsError(f'{path} is not a JSON object; re-run `dvd-ros weights convert`')
    version = meta.get('format_version')
    if version != FORMAT_VERSION:
        if _is_int(version) and version < FORMAT_VERSION:
            raise WeightsError(
                f'{path}: format_version {version} has no file manifest (written by an older '
                'dvd-ros); re-run `dvd-ros weights convert` to verify and load it')
        raise _fail(path, 'format_version', version, f'this dvd-ros reads {FORMAT_VERSION}')
    rules = {
        'dtype': ((lambda v: v in RUN_DTYPES), f'one of {RUN_DTYPES}'),
        'height': _int(16, MAX_SIDE),
        'width': _int(16, MAX_SIDE),
        'recommended_window': (
            lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_WINDOW and v % 4 == 1),
            f'null or 4n+1 in [1, {MAX_WINDOW}]'),
        'latents_mean': _number_list(256),
        'latents_std': _number_list(256),
        'lora_rank': ((lambda v: v is None or (_is_int(v) and v >= 1) or (
            isinstance(v, list) and all(_is_int(x) and x >= 1 for x in v))),
            'null, a rank >= 1 or a list of ranks'),
        'lora_alpha': ((lambda v: v is None or _float(0, 1e9, open_low=True)[0](v)),
                       'null or a number > 0'),
    }
    for key, (check, expected) in rules.items():
        if key in meta and not check(meta[key]):
            raise _fail(path, key, meta[key], expected)
    for key in ('latents_mean', 'latents_std'):
        if key not in meta:
            raise _fail(path, key, None, 'required')
    std = meta['latents_std']
    if len(std) != len(meta['latents_mean']) or not all(v > 0 for v in std):
        raise _fail(path, 'latents_std', std, 'as long as latents_mean, every value > 0')
    _check_files(meta.get('files'), path)
    return meta

