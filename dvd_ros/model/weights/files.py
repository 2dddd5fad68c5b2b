"""Reading weights files: safetensors lazily, pickles weights-only, and the layout they hold."""

from pathlib import Path
import pickle
import re

import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import DIT_MARKER, META_FILE, VAE_MARKER, first_names


class TensorFile:
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
        """Return the tensor names."""
        return self.shapes.keys()

    def get(self, key):
        """Return one tensor (read now, from the file or the loaded pickle)."""
        if self._tensors is not None:
            return self._tensors[key]
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error type for bad data
            raise WeightsError(
                f'cannot read tensor {key!r} from {self.path} ({exc}); the file is '
                'probably truncated or corrupt: download it again') from None

    def size_bytes(self):
        """Return the file size in bytes."""
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
    keys = list(TensorFile(path).keys())
    return layout_of_keys(keys, path)


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
