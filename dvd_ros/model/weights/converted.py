"""The converted folder: ``dvd_ros.json`` + ``transformer/`` + ``vae/`` (diffusers layout)."""

import json
from pathlib import Path

from dvd_ros.errors import WeightsError
from dvd_ros.model import presets
from dvd_ros.model.weights.build import build_transformer, build_vae
from dvd_ros.model.weights.models import DVDModels
from dvd_ros.model.weights.names import DEFAULT_WEIGHTS, FORMAT_VERSION, META_FILE


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


def read_json(path):
    """Read a JSON file of a converted folder; a missing or broken one is a ``WeightsError``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise WeightsError(f'{path} is missing; convert the weights again') from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f'{path} is not valid JSON ({exc}); convert again') from None


def load_converted(folder, dtype):
    """Load a converted folder as ``DVDModels`` with weights in ``dtype``."""
    folder = Path(folder)
    meta = read_json(folder / META_FILE)
    parts = {}
    for part in ('transformer', 'vae'):
        config = {k: v for k, v in read_json(folder / part / 'config.json').items()
                  if not k.startswith('_')}
        parts[part] = (config, _read_folder_state(folder / part, dtype))
    transformer = build_transformer(*parts['transformer'], folder / 'transformer')
    vae = build_vae(*parts['vae'], folder / 'vae')
    mean = tuple(meta.get('latents_mean', presets.LATENTS_MEAN))
    std = tuple(meta.get('latents_std', presets.LATENTS_STD))
    return DVDModels(transformer, vae, mean, std, meta)



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
