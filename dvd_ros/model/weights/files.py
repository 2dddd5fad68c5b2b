"""Reading weights files: safetensors lazily, pickles weights-only, and the layout they hold."""

import os
from pathlib import Path
import pickle
import re

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import DIT_MARKER, META_FILE, VAE_MARKER, first_names
from dvd_ros.model.weights.tensor_io import SafetensorsReader, open_regular


class TensorFile:
    """Lazy access to the tensors of one weights file (safetensors or weights-only pickle).

    Safetensors tensors are read one at a time into fresh memory (``tensor_io``), so the file
    is never mapped; call ``close`` (or use ``with``) when done.
    """

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
        self._reader = None
        if self.path.suffix in ('.pth', '.pt', '.ckpt', '.bin'):
            self._tensors = _load_pickle(self.path)
            self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
            self.dtypes = {k: v.dtype for k, v in self._tensors.items()}
            return
        self._reader = SafetensorsReader(self.path)
        self.metadata = dict(self._reader.metadata)
        self.shapes = self._reader.shapes
        self.dtypes = self._reader.dtypes

    def keys(self):
        """Return the tensor names."""
        return self.shapes.keys()

    def get(self, key):
        """Return one tensor in memory of its own (read now, or copied off the pickle's map)."""
        if self._tensors is not None:
            # torch.load(mmap=True) tensors live in the file's mapping: copy them out, so that
            # nothing of the file stays mapped once the loaded model is all that is left.
            return self._tensors[key].clone()
        return self._reader.get(key)

    def size_bytes(self):
        """Return the file size in bytes."""
        return self.path.stat().st_size

    def close(self):
        """Close the file and drop a pickle's tensors."""
        if self._reader is not None:
            self._reader.close()
        self._tensors = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _last_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


# What torch's weights-only unpickler says when a pickle wants more than tensors. The wording
# changed across torch versions (2.13: "Unsupported global: GLOBAL x was not an allowed
# global", "Trying to load unsupported GLOBAL posix.system whose module posix is blocked",
# "Trying to call reduce for unrecognized function", "Can only build Tensor ...").
_UNSAFE_GLOBAL = re.compile(r'GLOBAL (\S+)')
_UNSAFE_WORDS = ('Unsupported global', 'unsupported GLOBAL', 'is blocked', 'call reduce',
                 'Can only create new object', 'Can only build', 'allowlist')


def unsafe_pickle_reason(message):
    """Return what an unpickling error says the pickle references, or None when not unsafe.

    :param message: the text of torch's ``UnpicklingError`` under ``weights_only=True``.
    :return: e.g. ``'posix.system'``; ``'objects other than tensors'`` when unnamed.
    """
    if not any(word in message for word in _UNSAFE_WORDS):
        return None
    names = sorted({n.rstrip('.,') for n in _UNSAFE_GLOBAL.findall(message)})
    return ', '.join(names) or 'objects other than tensors'


def _load_pickle(path):
    """Load a ``.pth`` state dict with ``weights_only=True`` (never unsafe unpickling)."""
    open_regular(path).close()  # a FIFO or device: an error, not a hang in torch.load
    try:
        try:
            data = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
        except RuntimeError as exc:
            if 'mmap' not in str(exc):
                raise
            data = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = unsafe_pickle_reason(str(exc))
        if reason is None:
            raise WeightsError(
                f'cannot read {path} as a PyTorch weights file ({_last_line(exc)}); the file '
                'is probably truncated or corrupt: download it again') from None
        raise WeightsError(
            f'{path} needs unsafe unpickling (it references {reason}, not only tensors); '
            'refusing to load it. Use the official Wan2.1_VAE.pth or a .safetensors file') \
            from None
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


def detect_layout(path):
    """Name the layout of ``path``: 'converted', 'release', 'vae-original' or 'vae-diffusers'.

    :raises WeightsError: missing path or a layout none of the loaders knows.
    """
    path = Path(path)
    if path.is_dir():
        if os.path.lexists(path / META_FILE):  # reading it says what is wrong with it
            return 'converted'
        raise WeightsError(
            f'{path} is a folder without {META_FILE}; expected a folder written by '
            '`dvd-ros weights convert` or an official .safetensors file')
    with TensorFile(path) as tensor_file:
        return layout_of_keys(list(tensor_file.keys()), path)


def layout_of_keys(keys, path):
    """Name the layout a file's tensor names belong to (see ``detect_layout``)."""
    if any(DIT_MARKER in k for k in keys):
        return 'release'
    if 'encoder.conv1.weight' in keys or any(k.endswith(VAE_MARKER + 'encoder.conv1.weight')
                                             for k in keys):
        return 'vae-original'
    if 'encoder.conv_in.weight' in keys:
        return 'vae-diffusers'
    raise WeightsError(
        f'unknown checkpoint layout in {path}: no {DIT_MARKER!r} keys (official DVD file) and '
        f'no Wan VAE keys; first keys: {first_names(keys)}')
