"""On-disk cache of exported ONNX graphs and TensorRT engines, keyed so a stale one is rebuilt.

A cached artefact is only valid for the exact GPU (name and compute capability),
runtime version (TensorRT / onnxruntime / exporter), window shape, precision and
weights it was built for. Every entry is a folder holding the artefact and a
``manifest.json`` with the full key. A lookup that finds no exact match but an
entry for the same stage/shape/precision logs which fields differ ("TensorRT
10.3.0 -> 10.7.0") and the caller rebuilds; nothing fails because a version tag
changed. An entry made stale by a runtime upgrade is removed once the new one is in place.

Layout: ``<root>/<backend>-<stage>-<shape>-<precision>-<digest12>/{manifest.json, artefact}``.
"""

from dataclasses import asdict, dataclass, fields
import datetime
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import time

import torch

LOG = logging.getLogger('dvd_ros.engine_cache')
CACHE_FORMAT = 1
MANIFEST = 'manifest.json'
ENV_VAR = 'DVD_ROS_ENGINE_CACHE'


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
        """Inverse of ``to_dict``; unknown fields are ignored (newer cache formats)."""
        names = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data['shape'] = tuple(data.get('shape', ()))
        return cls(**data)

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
        """Return the manifests of every entry (each dict gets ``path`` and ``bytes``), sorted."""
        found = []
        if not self.root.is_dir():
            return found
        for manifest_path in sorted(self.root.glob(f'*/{MANIFEST}')):
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError):
                continue
            folder = manifest_path.parent
            manifest['path'] = os.fspath(folder)
            manifest['bytes'] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
            found.append(manifest)
        return found

    def _problem(self, key):
        """Return why ``key``'s entry cannot be used, or ``None`` when it is valid."""
        folder = self.entry_dir(key)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except FileNotFoundError:
            return 'missing'
        except (OSError, ValueError) as exc:
            return f'unreadable manifest ({exc})'
        stored = EngineKey.from_dict(manifest.get('key', {}))
        if stored != key:
            changes = ', '.join(f'{n}: {a!r} -> {b!r}' for n, a, b in key.differences(stored))
            return f'manifest key differs ({changes})'
        for name, size in manifest.get('files', {}).items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                return f'file {name} is missing or truncated'
        return None

    def lookup(self, key):
        """Return the artefact path for ``key`` or ``None`` (logging why it must be built)."""
        problem = self._problem(key)
        if problem is None:
            manifest = json.loads((self.entry_dir(key) / MANIFEST).read_text())
            return self.entry_dir(key) / manifest['artifact']
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

    def invalidate(self, key, reason):
        """Delete ``key``'s entry because the runtime rejected it (logs ``reason``)."""
        folder = self.entry_dir(key)
        if folder.exists():
            self.log.warning('discarding cached %s (%s): %s', key.slot, folder, reason)
            shutil.rmtree(folder, ignore_errors=True)

    def get_or_build(self, key, build, keep_stale=False):
        """Return the artefact path for ``key``, building it on a miss.

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
        final = self.entry_dir(key)
        tmp = self.root / f'.{key.dirname}.tmp-{os.getpid()}'
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.perf_counter()
        try:
            artifact = Path(build(tmp))
            seconds = time.perf_counter() - start
            files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
            manifest = {
                'format': CACHE_FORMAT, 'slot': key.slot, 'digest': key.digest,
                'key': key.to_dict(), 'artifact': artifact.name, 'files': files,
                'build_seconds': round(seconds, 3),
                'created': datetime.datetime.now(datetime.UTC).isoformat(
                    timespec='seconds'),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.log.info('built %s in %.1f s -> %s', key.slot, seconds, final)
        if not keep_stale:
            for manifest in self._same_slot(key):
                changed = {n for n, _, _ in key.differences(EngineKey.from_dict(manifest['key']))}
                # Only a runtime/format upgrade makes an entry useless for good; one for other
                # weights or another GPU (shared cache folder) may still be wanted.
                if changed <= {'runtime', 'format'}:
                    shutil.rmtree(manifest['path'], ignore_errors=True)
                    self.log.info('removed stale %s', manifest['path'])
        return final / artifact.name
