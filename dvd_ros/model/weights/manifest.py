"""The manifest of a converted folder: the exact files, their sizes and SHA-256 hashes.

``dvd_ros.json`` carries the manifest under ``files`` and is written last (atomically), so
it is both the mark of a complete folder and the list of what may be loaded. ``seal``
writes it (``save_converted`` calls it; it also seals a folder written by other means,
e.g. the embedded tiny model); ``check_listing`` and ``verified_bytes`` enforce it.
"""

import hashlib
import json
import os
from pathlib import Path
import stat

from dvd_ros.errors import WeightsError
from dvd_ros.model.weights.names import FORMAT_VERSION, META_FILE
from dvd_ros.model.weights.schema import MAX_JSON_BYTES, PARTS, check_meta
from dvd_ros.model.weights.tensor_io import open_regular

# The files save_converted writes: one config and one weights file per part.
WEIGHTS_NAME = 'diffusion_pytorch_model.safetensors'
PAYLOAD = tuple(f'{part}/{name}' for part in PARTS for name in ('config.json', WEIGHTS_NAME))
_CHUNK = 16 * 1024 * 1024


def _refuse(folder, problem):
    return WeightsError(
        f'converted folder {folder}: {problem}; it no longer is what `dvd-ros weights '
        'convert` wrote: re-run convert into an empty folder')


def file_digest(path):
    """Return ``(size, sha256 hex)`` of a regular file, read in chunks."""
    hasher = hashlib.sha256()
    size = 0
    with open_regular(path, 'file') as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def write_json(path, data, mode=0o644):
    """Write JSON atomically (temporary file + rename), world-readable but for the umask."""
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, 'w') as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + '\n')
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def seal(folder, info, files=PAYLOAD, written=None):
    """Hash ``files`` (read back from disk) and write ``dvd_ros.json`` = ``info`` + manifest.

    :param folder: the converted folder.
    :param info: the other ``dvd_ros.json`` entries (latents, dtype, size, source...).
    :param files: paths relative to ``folder`` (posix), by default the standard payload.
    :param written: ``{relative path: sha256}`` the writer computed while writing; a file
        that reads back differently is an error (a failing disk, a concurrent writer).
    :return: the ``dvd_ros.json`` dict written.
    :raises WeightsError: a file that reads back differently from what was written, or a
        resulting ``dvd_ros.json`` that would not pass ``check_meta``.
    """
    folder = Path(folder)
    manifest = {}
    for name in files:
        size, digest = file_digest(folder / name)
        if written and name in written and written[name] != digest:
            raise WeightsError(
                f'{folder / name} reads back differently from what was written; check the '
                'disk and convert again')
        manifest[name] = {'size': size, 'sha256': digest}
    meta = dict(info)
    meta.update({'format_version': FORMAT_VERSION, 'files': manifest})
    check_meta(json.loads(json.dumps(meta)), folder / META_FILE)
    write_json(folder / META_FILE, meta)
    return meta


def read_capped_json(path, what='JSON file'):
    """Parse a small JSON file (regular file, at most ``MAX_JSON_BYTES``).

    :raises WeightsError: missing, not a regular file, too large, not JSON.
    """
    with open_regular(path, what) as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    return parse_capped_json(data, path)


def parse_capped_json(data, path):
    """Parse JSON bytes already read from ``path`` under the size cap."""
    if len(data) > MAX_JSON_BYTES:
        raise WeightsError(f'{path} is larger than {MAX_JSON_BYTES} bytes; not a dvd-ros '
                           'JSON file: re-run `dvd-ros weights convert`')
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f'{path} is not valid JSON ({exc}); re-run `dvd-ros weights '
                           'convert`') from None


def check_listing(folder, files):
    """Check that ``folder`` holds exactly ``dvd_ros.json`` and the manifest's files.

    Every entry must be a regular file (no links, pipes or devices) of the listed size;
    anything else in the folder is refused, so nothing unverified sits next to the weights.

    :raises WeightsError: naming the extra, missing, irregular or resized files.
    """
    folder = Path(folder)
    expected_dirs = {name.split('/')[0] for name in files}
    extra, irregular = [], []
    for entry in os.scandir(folder):
        if entry.name == META_FILE:
            continue
        if entry.name in expected_dirs and entry.is_dir(follow_symlinks=False):
            for sub in os.scandir(entry.path):
                name = f'{entry.name}/{sub.name}'
                if name not in files:
                    extra.append(name)
                elif not stat.S_ISREG(sub.stat(follow_symlinks=False).st_mode):
                    irregular.append(name)
        else:
            extra.append(entry.name + ('/' if entry.is_dir(follow_symlinks=False) else ''))
    if extra:
        raise _refuse(folder, f'files the manifest does not list: {", ".join(sorted(extra))}')
    if irregular:
        raise _refuse(folder, f'not regular files: {", ".join(sorted(irregular))}')
    missing = [n for n in files if not (folder / n).exists()]
    if missing:
        raise _refuse(folder, f'missing files: {", ".join(sorted(missing))}')
    for name, entry in files.items():
        size = (folder / name).stat().st_size
        if size != entry['size']:
            raise _refuse(folder, f'{name} has {size} bytes, the manifest says {entry["size"]}')


def check_digest(folder, name, entry, digest):
    """Raise unless ``digest`` (of the bytes just read) is the manifest's for ``name``."""
    if digest != entry['sha256']:
        raise _refuse(folder, f'{name} does not match its SHA-256 in {META_FILE}')


def verified_bytes(folder, name, entry):
    """Read a small listed file (a config) and check its hash; return the bytes."""
    with open_regular(Path(folder) / name, 'file') as handle:
        data = handle.read(MAX_JSON_BYTES + 1)
    check_digest(folder, name, entry, hashlib.sha256(data).hexdigest())
    return data


def reseal(folder):
    """Seal a folder whose files were written by other means (e.g. the embedded tiny model).

    Keeps the entries of its ``dvd_ros.json`` and writes the manifest of the standard files
    as ``save_converted`` does; for a folder one trusts, since it vouches for what is there.

    :return: the ``dvd_ros.json`` dict written.
    """
    info = read_capped_json(Path(folder) / META_FILE, META_FILE)
    if not isinstance(info, dict):
        raise WeightsError(f'{Path(folder) / META_FILE} is not a JSON object')
    info.pop('files', None)
    return seal(folder, info)
