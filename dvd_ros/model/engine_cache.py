"""On-disk cache of exported ONNX graphs and TensorRT engines, keyed so a stale one is rebuilt.

A cached artefact is only valid for the exact GPU (name and compute capability),
runtime version (TensorRT / onnxruntime / exporter), window shape, precision and
weights it was built for. Every entry is a folder holding the artefact and a
``manifest.json`` with the full key. A lookup that finds no exact match but an
entry for the same stage/shape/precision logs which fields differ ("TensorRT
10.3.0 -> 10.7.0") and the caller rebuilds; nothing fails because a version tag
changed. An entry made stale by a runtime upgrade is removed once the new one is in place.

An entry is trusted only when its manifest is well formed (every field type- and
range-checked, file names plain names inside the entry) and every file matches the SHA-256
the manifest stores for it; anything else is rebuilt with a log line. Builders of one key
take a lock file per key and the loser of a rename race uses the winner's entry.

Layout: ``<root>/<backend>-<stage>-<shape>-<precision>-<digest12>/{manifest.json, artefact}``.
"""

from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
import datetime
import errno
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
import re
import shutil
import stat
import tempfile
import threading
import time

import torch

from dvd_ros.processes import open_locked, pid_alive

LOG = logging.getLogger('dvd_ros.engine_cache')
CACHE_FORMAT = 1
MANIFEST = 'manifest.json'
ENV_VAR = 'DVD_ROS_ENGINE_CACHE'
# Bounds of what a manifest may hold (it is read before anything in it is trusted).
MAX_MANIFEST_BYTES = 16 << 20
_MAX_DIM = 1 << 16
_MAX_TEXT = 4096
_MAX_FILES = 100_000
_SHA256 = re.compile(r'[0-9a-f]{64}')
_HASH_CHUNK = 8 << 20


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def default_cache_dir():
    """Return ``$DVD_ROS_ENGINE_CACHE`` or ``$XDG_CACHE_HOME/dvd_ros/engines`` (``~/.cache``)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'dvd_ros' / 'engines'


@dataclass(frozen=True)
class EngineKey:
    """Everything an artefact depends on; two equal keys may share one artefact."""

    backend: str                 # 'onnx' (portable graph), 'tensorrt' (engine), ...
    stage: str                   # 'encoder' | 'dit' | 'decoder'
    shape: tuple                 # (window, height, width)
    precision: str               # 'fp32' | 'fp16' | 'bf16' | 'fp8'
    weights: str                 # weights fingerprint (see ``weights_fingerprint``)
    device: str = 'any'          # GPU name, or 'any' for a portable artefact
    compute_capability: str = ''  # e.g. '9.0'; '' for a portable artefact
    runtime: str = ''            # e.g. 'tensorrt 10.7.0' or 'torch 2.13.0 opset 17'
    format: int = CACHE_FORMAT
    calibration: str = ''        # fp8: digest of the calibration frames ('' = synthetic)

    def to_dict(self):
        """Return the key as a JSON-ready dict (``shape`` as a list)."""
        data = asdict(self)
        data['shape'] = list(self.shape)
        if not data['calibration']:
            # Left out when unused, so the digests (folder names) of the keys made before
            # the field existed stay the same and their cache entries stay valid.
            del data['calibration']
        return data

    @classmethod
    def from_dict(cls, data):
        """Inverse of ``to_dict``; unknown fields are ignored (newer cache formats).

        Every field is type- and range-checked, because the dict comes from a file anyone
        with write access to the cache may have edited.

        :raise ValueError: naming the first malformed field.
        """
        if not isinstance(data, dict):
            raise ValueError(f'key is a {type(data).__name__}, not an object')
        values = {}
        for f in fields(cls):
            if f.name not in data:
                if f.default is MISSING:
                    raise ValueError(f'key field {f.name!r} is missing')
                continue
            value = data[f.name]
            if f.name == 'shape':
                if (not isinstance(value, list | tuple) or len(value) != 3
                        or not all(_is_int(v) and 1 <= v <= _MAX_DIM for v in value)):
                    raise ValueError(f'key field shape must be 3 integers in 1..{_MAX_DIM}, '
                                     f'got {value!r:.80}')
                value = tuple(value)
            elif f.name == 'format':
                if not _is_int(value) or value < 1:
                    raise ValueError(f'key field format must be an integer >= 1, got '
                                     f'{value!r:.80}')
            elif not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise ValueError(f'key field {f.name!r} must be a text of at most {_MAX_TEXT} '
                                 f'characters, got {value!r:.80}')
            values[f.name] = value
        return cls(**values)

    @property
    def digest(self):
        """SHA-256 of the canonical JSON of every field (hex)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def slot(self):
        """What the artefact is for, without the environment: backend, stage, shape, precision."""
        window, height, width = self.shape
        return f'{self.backend}-{self.stage}-t{window}_{height}x{width}-{self.precision}'

    @property
    def dirname(self):
        """Folder name of this key's entry."""
        return f'{self.slot}-{self.digest[:12]}'

    def differences(self, other):
        """Return ``[(field, other_value, self_value), ...]`` for the fields that differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        names = list(mine) + [name for name in theirs if name not in mine]
        return [(name, theirs.get(name), mine.get(name)) for name in names
                if mine.get(name) != theirs.get(name)]


def weights_fingerprint(module_or_state_dict, extra=()):
    """Hash every tensor (name, dtype, shape and bytes) of a module or state dict.

    BLAKE2b runs at about 1 GB/s, so the 1.3B DiT in bf16 costs ~3 s once per process;
    pass a precomputed value (e.g. the checkpoint file hash) to skip it.

    :param module_or_state_dict: ``nn.Module`` or mapping name -> tensor.
    :param extra: further values to mix in (e.g. latent normalisation constants).
    :return: 32 hex characters.
    """
    state = module_or_state_dict
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f'{name}|{tensor.dtype}|{tuple(tensor.shape)};'.encode())
        raw = tensor.to('cpu').contiguous().reshape(-1).view(torch.uint8)
        digest.update(memoryview(raw.numpy()))
    digest.update(repr(tuple(float(v) for v in extra)).encode())
    return digest.hexdigest()


def cuda_identity(device):
    """Return ``(gpu_name, 'major.minor')`` of a CUDA ``device``."""
    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f'{major}.{minor}'


def plain_name(name):
    """Return whether ``name`` is a plain file name (no folder part, not ``.``/``..``)."""
    return (isinstance(name, str) and 0 < len(name) <= 255 and name not in ('.', '..')
            and '/' not in name and '\\' not in name and '\0' not in name
            and (os.altsep is None or os.altsep not in name))


# Per process: realpath -> (stat signature, sha256) of files already hashed, so a cache hit
# does not re-read a multi-GB engine every time one process looks it up.  The signature holds
# the inode change time, which every write, truncation, rename over, chmod or `touch -d`
# updates and no unprivileged call can set back, so a changed file is always hashed again.
_HASHED = {}
_HASHED_LOCK = threading.Lock()


def _signature(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path, st=None):
    """Return the SHA-256 (hex) of the file ``path``, streamed in chunks.

    Memoised per process by (device, inode, size, mtime, ctime); see ``_HASHED``.

    :param path: a regular file.
    :param st: its ``os.stat`` result when the caller has it.
    :return: 64 hex characters.
    """
    key = os.path.realpath(path)
    st = os.stat(key) if st is None else st
    with _HASHED_LOCK:
        known = _HASHED.get(key)
    if known is not None and known[0] == _signature(st):
        return known[1]
    digest = hashlib.sha256()
    with open(key, 'rb') as fh:
        opened = os.fstat(fh.fileno())
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    after = os.stat(key)
    # A file written while it was read gets a fresh hash next time, not this one memoised.
    if _signature(after) == _signature(opened) == _signature(st):
        with _HASHED_LOCK:
            _HASHED[key] = (_signature(after), value)
    return value


class EntryProblem(Exception):
    """Why a cache entry cannot be used (the message goes into the rebuild log line)."""


def read_manifest(folder):
    """Read and check ``folder``'s manifest without hashing the files.

    :param folder: an entry folder.
    :return: the manifest dict with ``key`` as an ``EngineKey`` under ``'engine_key'``.
    :raise EntryProblem: 'missing', or what is malformed.
    """
    path = Path(folder) / MANIFEST
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise EntryProblem('missing') from None
    except OSError as exc:
        raise EntryProblem(f'unreadable manifest ({exc.strerror or exc})') from exc
    if not stat.S_ISREG(st.st_mode):
        raise EntryProblem('manifest is not a regular file')
    if st.st_size > MAX_MANIFEST_BYTES:
        raise EntryProblem(f'manifest is {st.st_size} bytes (limit {MAX_MANIFEST_BYTES})')
    try:
        with open(path, 'rb') as fh:
            manifest = json.loads(fh.read(MAX_MANIFEST_BYTES + 1))
    except (OSError, ValueError) as exc:
        raise EntryProblem(f'unreadable manifest ({exc})') from exc
    if not isinstance(manifest, dict):
        raise EntryProblem(f'manifest is a {type(manifest).__name__}, not an object')
    try:
        manifest['engine_key'] = EngineKey.from_dict(manifest.get('key'))
    except ValueError as exc:
        raise EntryProblem(f'malformed manifest: {exc}') from exc
    files = manifest.get('files')
    if not isinstance(files, dict) or not 0 < len(files) <= _MAX_FILES:
        raise EntryProblem('malformed manifest: files must be an object of 1..'
                           f'{_MAX_FILES} entries')
    for name, info in files.items():
        if not plain_name(name) or name == MANIFEST:
            raise EntryProblem(f'manifest lists {name!r:.80}, not a plain file name inside the '
                               'entry')
        if _is_int(info):
            raise EntryProblem('manifest has no content hashes (written by an older dvd_ros)')
        if (not isinstance(info, dict) or not _is_int(info.get('size')) or info['size'] < 0
                or not isinstance(info.get('sha256'), str)
                or not _SHA256.fullmatch(info['sha256'])):
            raise EntryProblem(f'malformed manifest: file {name!r} needs a size >= 0 and a '
                               'sha256 of 64 hex digits')
    artifact = manifest.get('artifact')
    if not plain_name(artifact) or artifact not in files:
        raise EntryProblem(f'artifact {artifact!r:.80} is not a plain file name listed in the '
                           'entry')
    return manifest


def _verify_files(folder, files):
    """Raise ``EntryProblem`` unless ``folder`` holds exactly ``files`` with their hashes."""
    try:
        present = {entry.name for entry in os.scandir(folder)}
    except OSError as exc:
        raise EntryProblem(f'unreadable folder ({exc.strerror or exc})') from exc
    extra = sorted(present - set(files) - {MANIFEST})
    if extra:
        raise EntryProblem(f'file {extra[0]!r} is not listed in the manifest')
    for name, info in files.items():
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise EntryProblem(f'file {name} is missing') from None
        if not stat.S_ISREG(st.st_mode):
            # A symlink could point anywhere; an entry holds its own files only.
            raise EntryProblem(f'file {name} is not a regular file')
        if st.st_size != info['size']:
            raise EntryProblem(f'file {name} is truncated or changed ({st.st_size} bytes, '
                               f'manifest {info["size"]})')
        if file_sha256(path, st) != info['sha256']:
            raise EntryProblem(f'file {name} does not match its sha256 (corrupt or changed)')


class EngineCache:
    """A folder of cached artefacts with manifests; see the module docstring."""

    def __init__(self, root=None, log=LOG):
        """Use ``root`` (default ``default_cache_dir()``); ``log`` gets rebuild reasons."""
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.log = log

    def entry_dir(self, key):
        """Return the folder of ``key``'s entry (may not exist)."""
        return self.root / key.dirname

    def entries(self):
        """Return the well-formed manifests of every entry (with ``path`` and ``bytes``), sorted.

        Files are not hashed here (listing must stay fast); ``lookup`` verifies them.
        """
        found = []
        if not self.root.is_dir():
            return found
        for manifest_path in sorted(self.root.glob(f'*/{MANIFEST}')):
            folder = manifest_path.parent
            try:
                manifest = read_manifest(folder)
            except EntryProblem:
                continue
            del manifest['engine_key']
            manifest['path'] = os.fspath(folder)
            manifest['bytes'] = sum(p.lstat().st_size for p in folder.iterdir()
                                    if p.is_file() and not p.is_symlink())
            found.append(manifest)
        return found

    def _check(self, key):
        """Return the verified artefact path of ``key``'s entry; ``EntryProblem`` otherwise."""
        folder = self.entry_dir(key)
        manifest = read_manifest(folder)
        stored = manifest['engine_key']
        if stored != key:
            changes = ', '.join(f'{n}: {a!r} -> {b!r}' for n, a, b in key.differences(stored))
            raise EntryProblem(f'manifest key differs ({changes})')
        _verify_files(folder, manifest['files'])
        return folder / manifest['artifact']

    def _problem(self, key):
        """Return why ``key``'s entry cannot be used, or ``None`` when it is valid."""
        try:
            self._check(key)
        except EntryProblem as exc:
            return str(exc)
        return None

    def lookup(self, key):
        """Return the verified artefact path for ``key`` or ``None`` (logging why it is built)."""
        try:
            return self._check(key)
        except EntryProblem as exc:
            problem = str(exc)
        if problem != 'missing':
            self.log.warning('rebuilding %s: cached entry %s is unusable: %s',
                             key.slot, self.entry_dir(key), problem)
            return None
        stale = self._same_slot(key)
        if stale:
            for manifest in stale:
                changes = ', '.join(f'{n} {a!r} -> {b!r}' for n, a, b in
                                    key.differences(EngineKey.from_dict(manifest['key'])))
                self.log.warning('rebuilding %s: the cached one was built for a different '
                                 'setup (%s)', key.slot, changes)
        else:
            self.log.info('building %s (not cached yet in %s)', key.slot, self.root)
        return None

    def _same_slot(self, key):
        return [m for m in self.entries()
                if m.get('slot') == key.slot and m.get('digest') != key.digest]

    @contextmanager
    def key_lock(self, key):
        """Hold ``<root>/.<entry>.lock`` exclusively (threads and processes) for ``key``.

        The lock file is removed on release; a waiter that then finds its locked file
        unlinked (or replaced) takes the lock anew, so two holders can never overlap.
        """
        if importlib.util.find_spec('fcntl') is None:
            yield  # not POSIX: the rename race below still keeps entries whole
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f'.{key.dirname}.lock'
        fd, _ = open_locked(path, on_wait=lambda: self.log.info(
            'waiting for another build of %s (lock %s)', key.slot, path))
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f'{os.getpid()}\n'.encode())
            yield
        finally:
            try:
                path.unlink()
            finally:
                os.close(fd)

    def _discard(self, folder):
        """Move ``folder`` aside (atomically gone from its name), then delete it."""
        trash = self.root / f'.{folder.name}.old-{os.getpid()}-{threading.get_ident()}'
        try:
            os.replace(folder, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def invalidate(self, key, reason):
        """Delete ``key``'s entry because the runtime rejected it (logs ``reason``)."""
        folder = self.entry_dir(key)
        if folder.exists():
            self.log.warning('discarding cached %s (%s): %s', key.slot, folder, reason)
            with self.key_lock(key):
                self._discard(folder)

    def _install(self, tmp, key, artifact_name):
        """Rename the built ``tmp`` into place; the loser of a race uses the winner's entry."""
        final = self.entry_dir(key)
        for _ in range(3):
            try:
                os.rename(tmp, final)
                return final / artifact_name
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            # Someone else's entry is in place (under the lock only an unusable one; without
            # it, a builder that did not take the lock may have won).
            try:
                path = self._check(key)
            except EntryProblem:
                self._discard(final)
                continue
            self.log.info('another build of %s finished first; using its entry %s',
                          key.slot, final)
            return path
        raise OSError(errno.EEXIST, f'cannot install the cache entry {final}: it keeps being '
                      'replaced; is another program writing to the cache folder?')

    def get_or_build(self, key, build, keep_stale=False):
        """Return the artefact path for ``key``, building it on a miss.

        Concurrent callers (threads or processes) for one key build it once: the others wait
        for the key's lock and then use the entry it produced.

        :param key: the ``EngineKey``.
        :param build: ``build(folder) -> path`` writes the artefact (and any side files,
            e.g. ONNX external data) into the empty ``folder`` and returns its path.
        :param keep_stale: keep entries of the same slot built by an older runtime
            (by default they are deleted after the new one is in place).
        :return: ``Path`` of the artefact.
        """
        found = self.lookup(key)
        if found is not None:
            return found
        self.root.mkdir(parents=True, exist_ok=True)
        with self.key_lock(key):
            try:
                found = self._check(key)
            except EntryProblem:
                pass
            else:
                self.log.info('%s was built by another process meanwhile; using it', key.slot)
                return found
            self._remove_dead_builds(key)
            tmp = Path(tempfile.mkdtemp(prefix=f'.{key.dirname}.tmp-{os.getpid()}-',
                                        dir=self.root))
            start = time.perf_counter()
            try:
                path = self._build_into(tmp, key, build, start)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.log.info('built %s in %.1f s -> %s', key.slot, time.perf_counter() - start,
                      path.parent)
        if not keep_stale:
            for manifest in self._same_slot(key):
                changed = {n for n, _, _ in key.differences(EngineKey.from_dict(manifest['key']))}
                # Only a runtime/format upgrade makes an entry useless for good; one for other
                # weights or another GPU (shared cache folder) may still be wanted.
                if changed <= {'runtime', 'format'}:
                    shutil.rmtree(manifest['path'], ignore_errors=True)
                    self.log.info('removed stale %s', manifest['path'])
        return path

    def _remove_dead_builds(self, key):
        """Delete build folders of ``key`` left by killed builders (their PID is gone)."""
        for leftover in self.root.glob(f'.{key.dirname}.tmp-*'):
            match = re.match(r'(\d+)', leftover.name.rsplit('.tmp-', 1)[1])
            if match is None or pid_alive(int(match.group(1))):
                continue
            self.log.info('removing %s, left by a build that was killed', leftover)
            shutil.rmtree(leftover, ignore_errors=True)

    def _build_into(self, tmp, key, build, start):
        artifact = Path(build(tmp))
        seconds = time.perf_counter() - start
        if (os.path.realpath(artifact.parent) != os.path.realpath(tmp)
                or not plain_name(artifact.name) or artifact.name == MANIFEST):
            raise ValueError(f'the {key.slot} build returned {artifact}, which is not a file '
                             f'directly inside its build folder {tmp}')
        files = {}
        for entry in os.scandir(tmp):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or not plain_name(entry.name):
                raise ValueError(f'the {key.slot} build left {entry.path}, which is not a plain '
                                 'regular file; a cache entry holds regular files only')
            files[entry.name] = {'size': st.st_size,
                                 'sha256': file_sha256(entry.path, st)}
        if artifact.name not in files:
            raise ValueError(f'the {key.slot} build returned {artifact}, which it did not write')
        manifest = {
            'format': CACHE_FORMAT, 'slot': key.slot, 'digest': key.digest,
            'key': key.to_dict(), 'artifact': artifact.name, 'files': files,
            'build_seconds': round(seconds, 3),
            'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
        return self._install(tmp, key, artifact.name)
