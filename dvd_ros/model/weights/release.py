"""Loading an official release file: LoRA merge, renaming, and its (or a separate) VAE."""

from pathlib import Path

from dvd_ros.errors import WeightsError
from dvd_ros.model import presets
from dvd_ros.model.weights.build import build_transformer, build_vae
from dvd_ros.model.weights.configs import infer_dit_config, infer_vae_config
from dvd_ros.model.weights.files import TensorFile, layout_of_keys
from dvd_ros.model.weights.lora import merge_lora
from dvd_ros.model.weights.memory import release_memory
from dvd_ros.model.weights.models import DVDModels
from dvd_ros.model.weights.names import (
    DIT_MARKER,
    FORMAT_VERSION,
    META_PREFIX,
    VAE_MARKER,
    diffusers_vae_res_blocks,
    dit_name_to_diffusers,
    first_names,
    strip_before,
    vae_name_to_diffusers,
    vae_name_to_original,
)


def _vae_state_from_file(tensor_file, dtype):
    """Return ``(config, diffusers state)`` for a VAE file or a release file's VAE copy."""
    keys = list(tensor_file.keys())
    layout = layout_of_keys(keys, tensor_file.path)
    if layout == 'vae-diffusers':
        # Recover the original names only to infer the config with one code path.
        num_res_blocks = diffusers_vae_res_blocks(keys)
        shapes = {vae_name_to_original(k, num_res_blocks): s
                  for k, s in tensor_file.shapes.items()}
        if None in shapes:
            raise WeightsError(f'unknown VAE names in {tensor_file.path}')
        config = infer_vae_config(shapes)
        return config, {k: tensor_file.get(k).to(dtype) for k in keys}
    names = strip_before(keys, VAE_MARKER) if any(VAE_MARKER in k for k in keys) else {
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
            f'unexpected VAE keys in {tensor_file.path}: {first_names(unknown)}')
    return config, state


def load_release(path, vae_path, lora_alpha, dtype, num_heads, merge, device):
    """Load an official release file as ``DVDModels`` (see ``load_models``)."""
    path = Path(path)
    tensor_file = TensorFile(path)
    vae_file = None
    try:
        keys = list(tensor_file.keys())
        layout = layout_of_keys(keys, path)
        if layout != 'release':
            raise WeightsError(
                f'{path} holds only a VAE ({layout}); pass the DVD checkpoint as the path and '
                'this file as vae_path / --vae')
        # Settle where the VAE comes from before the (slow, for 1.3B) LoRA merge.
        if vae_path is not None:
            vae_file = TensorFile(vae_path)
            vae_source = str(Path(vae_path).resolve())
        elif any(VAE_MARKER in k for k in keys):
            vae_file, vae_source = tensor_file, f'{path.resolve()} (embedded pipe.vae.model.*)'
        else:
            raise WeightsError(
                f'{path} carries no VAE copy (no {VAE_MARKER!r} keys); pass the Wan2.1 VAE with '
                'vae_path= / --vae Wan2.1_VAE.pth (from Wan-AI/Wan2.1-T2V-1.3B)')
        dit_names = strip_before(keys, DIT_MARKER)
        state, info = merge_lora((list(dit_names), lambda n: tensor_file.get(dit_names[n])),
                                 lora_alpha=lora_alpha, dtype=dtype, merge=merge,
                                 device=device if device.type == 'cuda' else None)
        release_memory()  # the merge's float64 temporaries
        file_meta = {k[len(META_PREFIX):]: v for k, v in tensor_file.metadata.items()
                     if k.startswith(META_PREFIX)}
        if num_heads is None and 'num_attention_heads' in file_meta:
            num_heads = _meta_int(file_meta, 'num_attention_heads', 1, path)
        config = infer_dit_config({k: tuple(v.shape) for k, v in state.items()}, num_heads)
        renamed, unknown = {}, []
        for name in list(state):
            target = dit_name_to_diffusers(name)
            if target is None:
                unknown.append(name)
            else:
                renamed[target] = state.pop(name)
        if unknown:
            raise WeightsError(f'unexpected DiT keys in {path}: {first_names(unknown)}')
        del state
        transformer = build_transformer(config, renamed, path)
        del renamed
        vae = build_vae(*_vae_state_from_file(vae_file, dtype), vae_file.path)
    finally:
        tensor_file.close()
        if vae_file is not None:
            vae_file.close()
    release_memory()
    meta = {
        'format_version': FORMAT_VERSION,
        'source': str(path.resolve()),
        'source_size': path.stat().st_size,
        'source_layout': 'release',
        'vae_source': vae_source,
        'lora_rank': info['rank'],
        'lora_alpha': info['alpha'],
        'lora_pairs': info['lora_pairs'],
        'lora_merged': info['merged'],
        'height': _meta_int(file_meta, 'height', 16, path, 480),
        'width': _meta_int(file_meta, 'width', 16, path, 640),
    }
    return DVDModels(transformer, vae, presets.LATENTS_MEAN, presets.LATENTS_STD, meta)


def _meta_int(file_meta, name, low, path, default=None):
    """Read an integer from the release file's ``dvd_ros.*`` header metadata."""
    raw = file_meta.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = None
    if value is None or not low <= value <= 100_000:
        raise WeightsError(
            f'{path}: header metadata {META_PREFIX}{name}={raw!r} is not an integer in '
            f'[{low}, 100000]; rewrite the file or pass the value explicitly')
    return value
