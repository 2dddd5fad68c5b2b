"""The converted folder: ``dvd_ros.json`` + ``transformer/`` + ``vae/`` (diffusers layout).

Written tensor by tensor (``tensor_io``) with files readable by other users (0644 / 0755 less
the umask), and sealed by a manifest (``manifest.seal``); loading reads only the listed
files, verifies each hash on the bytes it loads and validates every config value
(``schema``) before a module is built.
"""

import hashlib
import json
from pathlib import Path

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.build import build_transformer, build_vae
from dvd_ros.model.weights.manifest import (
    WEIGHTS_NAME,
    check_digest,
    check_listing,
    parse_capped_json,
    read_capped_json,
    seal,
    verified_bytes,
)
from dvd_ros.model.weights.memory import release_memory
from dvd_ros.model.weights.models import DVDModels
from dvd_ros.model.weights.names import DEFAULT_WEIGHTS, META_FILE
from dvd_ros.model.weights.schema import PARTS, check_dit_config, check_meta, check_vae_config
from dvd_ros.model.weights.tensor_io import SafetensorsReader, write_safetensors

_CHECK_CONFIG = {'transformer': check_dit_config, 'vae': check_vae_config}


def read_json(path):
    """Read a small JSON file of a converted folder; any problem is a ``WeightsError``."""
    try:
        return read_capped_json(path)
    except WeightsError as exc:
        if not Path(path).exists():
            raise WeightsError(f'{path} is missing; convert the weights again') from None
        raise exc


def read_meta(folder):
    """Read and validate ``dvd_ros.json`` of a converted folder (size-capped, checked)."""
    path = Path(folder) / META_FILE
    return check_meta(read_json(path), path)


def _read_part(folder, part, files, dtype):
    """Return ``(kwargs, state)`` of one part, every file checked against the manifest."""
    config_name = f'{part}/config.json'
    config = parse_capped_json(verified_bytes(folder, config_name, files[config_name]),
                               folder / config_name)
    kwargs = _CHECK_CONFIG[part](config, folder / config_name)
    state = {}
    for name in sorted(n for n in files if n.startswith(part + '/') and n != config_name):
        hasher = hashlib.sha256()
        with SafetensorsReader(folder / name) as reader:
            tensors = reader.read_all(hasher)
        check_digest(folder, name, files[name], hasher.hexdigest())
        clash = set(tensors) & set(state)
        if clash:
            raise WeightsError(f'{folder / name} repeats tensors of another file of {part}: '
                               f'{", ".join(sorted(clash)[:5])}; re-run `dvd-ros weights convert`')
        for key in list(tensors):
            state[key] = tensors.pop(key).to(dtype)
    return kwargs, state


def load_converted(folder, dtype):
    """Load a converted folder as ``DVDModels`` with weights in ``dtype``.

    :raises WeightsError: a file the manifest does not list, a missing or changed file, an
        invalid ``dvd_ros.json`` / ``config.json`` value, weights that do not fit.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    files = meta['files']
    check_listing(folder, files)
    dit_kwargs, dit_state = _read_part(folder, 'transformer', files, dtype)
    transformer = build_transformer(dit_kwargs, dit_state, folder / 'transformer')
    del dit_state
    vae_kwargs, vae_state = _read_part(folder, 'vae', files, dtype)
    z_dim = vae_kwargs['z_dim']
    if len(meta['latents_mean']) != z_dim:
        raise WeightsError(
            f'{folder / META_FILE}: latents_mean/latents_std have {len(meta["latents_mean"])} '
            f'entries, the VAE has z_dim {z_dim}; re-run `dvd-ros weights convert`')
    vae = build_vae(vae_kwargs, vae_state, folder / 'vae')
    del vae_state
    release_memory()
    return DVDModels(transformer, vae, tuple(meta['latents_mean']),
                     tuple(meta['latents_std']), meta)


def recommended_window(path=None):
    """Return the window (frames) a converted folder's meta recommends, or None.

    :param path: converted folder, release file, or None for the embedded tiny model.
    :return: int, or None for release files and folders that recommend nothing.
    """
    meta = Path(DEFAULT_WEIGHTS if path is None else path) / META_FILE
    try:
        value = read_capped_json(meta).get('recommended_window')
    except (OSError, WeightsError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value >= 1 else None


def _write_part(module, folder, part):
    """Write ``config.json`` and the weights of one module; return ``{name: sha256}``."""
    folder.mkdir(exist_ok=True)
    module.save_config(folder)
    _, digest = write_safetensors(folder / WEIGHTS_NAME, module.state_dict(),
                                  metadata={'format': 'pt'})
    return {f'{part}/{WEIGHTS_NAME}': digest}


def save_converted(models, dst_dir, meta=None):
    """Write the fast-path folder: ``dvd_ros.json``, ``transformer/`` and ``vae/`` (safetensors).

    Tensors are written one at a time from the modules' own memory; ``dvd_ros.json`` with
    the manifest (``manifest.seal``) comes last, after every file was read back and hashed.

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
    written = {}
    for part, module in zip(PARTS, (models.transformer, models.vae)):
        written.update(_write_part(module, dst / part, part))
    info = {k: v for k, v in models.meta.items() if k != 'files'}
    info.update(meta or {})
    info.update({
        'latents_mean': [float(x) for x in models.latents_mean],
        'latents_std': [float(x) for x in models.latents_std],
        'dtype': str(models.dtype).removeprefix('torch.'),
    })
    info.setdefault('height', 480)
    info.setdefault('width', 640)
    seal(dst, json.loads(json.dumps(info, default=str)), written=written)
    return dst

