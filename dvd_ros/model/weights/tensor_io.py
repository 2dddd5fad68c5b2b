"""Safetensors files read and written one tensor at a time, without memory maps.

The safetensors layout is an 8-byte little-endian header length, a JSON header
(``name -> {dtype, shape, data_offsets}`` plus ``__metadata__``) and the raw data. Reading
with ``readinto`` into a fresh tensor keeps the file's pages out of the process (a memory
map would count the whole 4.5 GB release file in the resident set while it is read), and
lets the SHA-256 of a file be computed on the bytes that are actually loaded, so what is
verified is what is used. Writing goes tensor by tensor from the tensors' own memory (no
serialised copy of the whole state).
"""

import hashlib
import json
import math
import os
from pathlib import Path
import stat

import torch

from dvd_ros.errors import WeightsError

# safetensors dtype names <-> torch dtypes.
DTYPES = {
    'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
    'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
    'U8': torch.uint8, 'BOOL': torch.bool,
    'F8_E4M3': torch.float8_e4m3fn, 'F8_E5M2': torch.float8_e5m2,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors limit; the 1.3B release header is ~0.2 MB
_CHUNK = 64 * 1024 * 1024


def dtype_name(dtype):
    """Return the torch name of a dtype (``bfloat16``) for a torch dtype or a safetensors name."""
    if isinstance(dtype, str):
        dtype = DTYPES.get(dtype, dtype)
    return str(dtype).removeprefix('torch.')


def open_regular(path, what='weights file'):
    """Open ``path`` for binary reading, refusing anything but a regular file.

    A FIFO is opened non-blocking, so a named pipe gives an error instead of a hang.

    :raises WeightsError: missing path, a folder, FIFO, device or socket.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
    except FileNotFoundError:
        raise WeightsError(f'{what} not found: {path}; pass the right path') from None
    except IsADirectoryError:
        raise WeightsError(f'{path} is a folder, expected a {what}') from None
    except OSError as exc:
        raise WeightsError(f'cannot open {what} {path} ({exc.strerror})') from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = 'a folder' if stat.S_ISDIR(mode) else 'not a regular file (a pipe or device)'
        raise WeightsError(f'{path} is {kind}; expected a {what}: pass a regular file')
    if hasattr(os, 'O_NONBLOCK'):
        os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb')


def _read_exactly(handle, view, hasher=None):
    done = 0
    while done < len(view):
        count = handle.readinto(view[done:done + _CHUNK])
        if not count:
            break
        if hasher is not None:
            hasher.update(view[done:done + count])
        done += count
    return done


class SafetensorsReader:
    """The header of a safetensors file and its tensors, read on demand by ``pread``."""

    def __init__(self, path):
        self.path = Path(path)
        self._handle = open_regular(self.path)
        try:
            self.size = os.fstat(self._handle.fileno()).st_size
            self.entries, self.metadata, self.data_start = self._parse_header()
        except BaseException:
            self._handle.close()
            raise

    def _corrupt(self, what):
        return WeightsError(
            f'{self.path} is not a readable safetensors file ({what}); the file is probably '
            'truncated or corrupt: download or convert it again')

    def _parse_header(self):
        head = self._handle.read(8)
        if len(head) != 8:
            raise self._corrupt('shorter than 8 bytes')
        length = int.from_bytes(head, 'little')
        if length > min(MAX_HEADER, self.size - 8):
            raise self._corrupt(f'header of {length} bytes')
        try:
            header = json.loads(self._handle.read(length))
        except (UnicodeDecodeError, ValueError) as exc:
            raise self._corrupt(f'header is not JSON: {exc}') from None
        if not isinstance(header, dict):
            raise self._corrupt('header is not a JSON object')
        metadata = header.pop('__metadata__', None) or {}
        if not isinstance(metadata, dict) or not all(
                isinstance(v, str) for v in metadata.values()):
            raise self._corrupt('metadata is not a string map')
        data_start = 8 + length
        entries = {}
        for name, entry in header.items():
            try:
                dtype = DTYPES[entry['dtype']]
                shape = tuple(int(s) for s in entry['shape'])
                begin, end = (int(x) for x in entry['data_offsets'])
            except (KeyError, TypeError, ValueError):
                raise self._corrupt(f'bad header entry for {name!r}') from None
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != nbytes or (
                    data_start + end > self.size):
                raise self._corrupt(f'tensor {name!r} lies outside the file or has the wrong '
                                    'size')
            entries[name] = (dtype, shape, begin)
        return entries, metadata, data_start

    @property
    def shapes(self):
        """Return ``{name: shape}``."""
        return {k: v[1] for k, v in self.entries.items()}

    @property
    def dtypes(self):
        """Return ``{name: torch dtype}``."""
        return {k: v[0] for k, v in self.entries.items()}

    def get(self, name):
        """Read one tensor into fresh memory (nothing of the file stays mapped)."""
        dtype, shape, begin = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else (
            memoryview(b''))
        self._handle.seek(self.data_start + begin)
        if _read_exactly(self._handle, view) != len(view):
            raise self._corrupt(f'tensor {name!r} is cut short')
        return out

    def read_all(self, hasher=None):
        """Read every tensor in file order; feed every byte of the file to ``hasher``.

        :return: ``{name: tensor}``.
        """
        self._handle.seek(0)
        head = self._handle.read(self.data_start)
        if hasher is not None:
            hasher.update(head)
        out, position = {}, 0
        for name, (dtype, shape, begin) in sorted(self.entries.items(), key=lambda e: e[1][2]):
            if begin != position:
                raise self._corrupt('tensors are not stored back to back')
            tensor = torch.empty(shape, dtype=dtype)
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()) if (
                tensor.numel()) else memoryview(b'')
            if _read_exactly(self._handle, view, hasher) != len(view):
                raise self._corrupt(f'tensor {name!r} is cut short')
            position += len(view)
            out[name] = tensor
        if self.data_start + position != self.size:
            raise self._corrupt('bytes after the last tensor')
        return out

    def close(self):
        """Close the file."""
        self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_safetensors(path, tensors, metadata=None, mode=0o644):
    """Write ``{name: tensor}`` as a safetensors file, one tensor at a time.

    :param mode: permission bits before the umask (the ``open`` default for data files).
    :return: ``(size in bytes, sha256 hex)`` of what was written.
    """
    header, offset = {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {'dtype': _NAMES[tensor.dtype], 'shape': list(tensor.shape),
                        'data_offsets': [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(',', ':')).encode()
    blob += b' ' * (-len(blob) % 8)  # data starts 8-byte aligned, as safetensors writes it
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'wb') as handle:
        for piece in (len(blob).to_bytes(8, 'little'), blob):
            handle.write(piece)
            hasher.update(piece)
        for tensor in tensors.values():
            if tensor.numel():
                # A copy only for a tensor that is not contiguous CPU memory, one at a time.
                flat = tensor.detach().cpu().contiguous().reshape(-1)
                data = memoryview(flat.view(torch.uint8).numpy())
                handle.write(data)
                hasher.update(data)
                del data, flat
    return 8 + len(blob) + offset, hasher.hexdigest()
