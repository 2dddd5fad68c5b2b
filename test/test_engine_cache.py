"""Engine cache: equal keys share an entry, any changed field rebuilds (with a log line)."""

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import multiprocessing
import os
from pathlib import Path
import shutil
import threading
import time

import pytest
import torch

from dvd_ros.model.engine_cache import (
    MANIFEST,
    EngineCache,
    EngineKey,
    default_cache_dir,
    weights_fingerprint,
)

KEY = EngineKey(backend='tensorrt', stage='dit', shape=(9, 480, 640), precision='fp16',
                weights='abc123', device='NVIDIA H100 80GB HBM3', compute_capability='9.0',
                runtime='tensorrt 10.7.0')
CHANGES = {
    'backend': 'onnx', 'stage': 'decoder', 'shape': (25, 480, 640), 'precision': 'bf16',
    'weights': 'def456', 'device': 'NVIDIA GeForce RTX 4090', 'compute_capability': '8.9',
    'runtime': 'tensorrt 10.8.0', 'format': 99, 'calibration': '0123456789abcdef',
}


class Builder:
    """Counts builds; writes a small artefact."""

    def __init__(self):
        self.calls = 0

    def __call__(self, folder):
        self.calls += 1
        path = folder / 'model.engine'
        path.write_bytes(b'engine-%d' % self.calls)
        return path


def test_same_fields_give_the_same_key():
    twin = EngineKey(**dataclasses.asdict(KEY))
    assert twin == KEY and twin.digest == KEY.digest and twin.dirname == KEY.dirname
    assert EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY


def test_keys_without_calibration_keep_their_digest():
    # The digest (and so the folder name) the key had before the calibration field was
    # added: caches built then stay valid.
    assert 'calibration' not in KEY.to_dict()
    assert KEY.digest == '4c289a3ab6764488791b9bbf906d4c0e81fa4023a2de94c14444813d3c26c899'


def test_changes_cover_every_field():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(EngineKey)}


@pytest.mark.parametrize('field', sorted(CHANGES))
def test_each_changed_field_changes_the_digest(field):
    other = dataclasses.replace(KEY, **{field: CHANGES[field]})
    assert other.digest != KEY.digest
    assert [name for name, _, _ in other.differences(KEY)] == [field]


def test_hit_builds_once(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    first = cache.get_or_build(KEY, build)
    second = EngineCache(tmp_path).get_or_build(KEY, build)
    assert first == second and build.calls == 1
    manifest = json.loads((first.parent / MANIFEST).read_text())
    assert manifest['key'] == KEY.to_dict()
    assert manifest['files'] == {'model.engine': {
        'size': len(b'engine-1'), 'sha256': hashlib.sha256(b'engine-1').hexdigest()}}


@pytest.mark.parametrize('field', sorted(CHANGES))
def test_each_changed_field_rebuilds_with_a_log(tmp_path, caplog, field):
    cache, build = EngineCache(tmp_path), Builder()
    cache.get_or_build(KEY, build)
    other = dataclasses.replace(KEY, **{field: CHANGES[field]})
    with caplog.at_level(logging.INFO, logger='dvd_ros.engine_cache'):
        path = cache.get_or_build(other, build)
    assert build.calls == 2
    assert path.read_bytes() == b'engine-2'
    if other.slot == KEY.slot:
        # Same engine slot, different environment/weights: the log names the field.
        assert any('rebuilding' in r.message and field in r.message for r in caplog.records)


def test_runtime_upgrade_replaces_the_stale_entry(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    old = cache.get_or_build(KEY, build)
    upgraded = dataclasses.replace(KEY, runtime='tensorrt 10.8.0')
    new = cache.get_or_build(upgraded, build)
    assert not old.exists() and new.exists()
    assert [e['key']['runtime'] for e in cache.entries()] == ['tensorrt 10.8.0']
    # Other weights are another model, not a stale one: both stay.
    cache.get_or_build(dataclasses.replace(upgraded, weights='other'), build)
    assert len(cache.entries()) == 2


def test_truncated_or_corrupt_entries_rebuild(tmp_path, caplog):
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(KEY, build)
    path.write_bytes(b'x')  # truncated
    with caplog.at_level(logging.WARNING, logger='dvd_ros.engine_cache'):
        path = cache.get_or_build(KEY, build)
    assert build.calls == 2 and 'truncated' in caplog.text
    (path.parent / MANIFEST).write_text('{not json')
    assert cache.lookup(KEY) is None
    cache.get_or_build(KEY, build)
    assert build.calls == 3


def test_failed_build_leaves_no_entry(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(folder):
        (folder / 'half').write_bytes(b'partial')
        raise RuntimeError('out of memory')

    with pytest.raises(RuntimeError, match='out of memory'):
        cache.get_or_build(KEY, broken)
    assert cache.entries() == [] and list(tmp_path.iterdir()) == []


def test_invalidate_forces_a_rebuild(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    cache.get_or_build(KEY, build)
    cache.invalidate(KEY, 'TensorRT could not deserialize the engine')
    assert cache.lookup(KEY) is None
    cache.get_or_build(KEY, build)
    assert build.calls == 2


def test_weights_fingerprint_sees_every_change():
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 3)
    base = weights_fingerprint(module)
    assert weights_fingerprint(module) == base
    assert weights_fingerprint(module.state_dict()) == base
    with torch.no_grad():
        module.bias[1] += 1e-6
    assert weights_fingerprint(module) != base
    module.bias.data = module.bias.data.to(torch.bfloat16)
    assert weights_fingerprint({'bias': module.bias}) != weights_fingerprint(
        {'bias': module.bias.float()})
    assert weights_fingerprint(module, extra=[1.0]) != weights_fingerprint(module, extra=[2.0])


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('DVD_ROS_ENGINE_CACHE', str(tmp_path / 'engines'))
    assert default_cache_dir() == tmp_path / 'engines'
    monkeypatch.delenv('DVD_ROS_ENGINE_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert default_cache_dir() == tmp_path / 'dvd_ros' / 'engines'


def test_a_test_run_never_touches_the_users_cache():
    # conftest gives every test run (and the processes it starts) a cache of its own.
    assert Path.home() / '.cache' not in default_cache_dir().parents
    assert default_cache_dir().name.startswith('dvd_ros_test_engines_')


def _manifest(path):
    return json.loads((path.parent / MANIFEST).read_text())


def _write_manifest(path, manifest):
    (path.parent / MANIFEST).write_text(json.dumps(manifest))


def test_same_size_corrupt_file_is_rebuilt(tmp_path, caplog):
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(KEY, build)
    # Same length, different bytes: a size check alone would trust it.
    path.write_bytes(b'engine-X')
    with caplog.at_level(logging.WARNING, logger='dvd_ros.engine_cache'):
        path = EngineCache(tmp_path).get_or_build(KEY, build)
    assert build.calls == 2 and path.read_bytes() == b'engine-2'
    assert 'sha256' in caplog.text and 'rebuilding' in caplog.text


def test_a_changed_file_is_seen_within_one_process(tmp_path):
    # The per-process memo of hashes must not hide a file rewritten after the first hit.
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(KEY, build)
    assert cache.lookup(KEY) == path
    stat = path.stat()
    path.write_bytes(b'engine-Y')
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    assert cache.lookup(KEY) is None


def _break_files(m):
    m['files'] = []


def _break_size(m):
    m['files']['model.engine']['size'] = 'eight'


def _break_hash(m):
    m['files']['model.engine']['sha256'] = 'zz'


def _old_format(m):
    m['files'] = {'model.engine': 8}


def _break_shape(m):
    m['key']['shape'] = 9


def _break_format(m):
    m['key']['format'] = True


def _break_key(m):
    m['key'] = ['tensorrt']


def _drop_field(m):
    del m['key']['weights']


def _break_artifact(m):
    m['artifact'] = None


@pytest.mark.parametrize('damage', [
    _break_files, _break_size, _break_hash, _old_format, _break_shape, _break_format,
    _break_key, _drop_field, _break_artifact,
])
def test_malformed_manifest_is_rebuilt(tmp_path, caplog, damage):
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(KEY, build)
    manifest = _manifest(path)
    damage(manifest)
    _write_manifest(path, manifest)
    assert cache.entries() == []  # listing skips it instead of failing
    with caplog.at_level(logging.WARNING, logger='dvd_ros.engine_cache'):
        path = cache.get_or_build(KEY, build)
    assert build.calls == 2 and 'rebuilding' in caplog.text
    assert path.read_bytes() == b'engine-2' and len(cache.entries()) == 1


@pytest.mark.parametrize('text', ['[1, 2]', '"text"', 'null', '{not json'])
def test_manifest_that_is_not_an_object_is_rebuilt(tmp_path, text):
    cache, build = EngineCache(tmp_path), Builder()
    path = cache.get_or_build(KEY, build)
    (path.parent / MANIFEST).write_text(text)
    assert cache.lookup(KEY) is None and cache.entries() == []
    cache.get_or_build(KEY, build)
    assert build.calls == 2


@pytest.mark.parametrize('name', ['../outside.engine', '/etc/hostname', '..', 'sub/model.engine'])
def test_artifact_path_outside_the_entry_is_refused(tmp_path, caplog, name):
    cache, build = EngineCache(tmp_path / 'cache'), Builder()
    path = cache.get_or_build(KEY, build)
    target = tmp_path / 'cache' / 'outside.engine'
    target.write_bytes(b'engine-1')
    manifest = _manifest(path)
    manifest['artifact'] = name
    manifest['files'][name] = manifest['files']['model.engine']
    _write_manifest(path, manifest)
    with caplog.at_level(logging.WARNING, logger='dvd_ros.engine_cache'):
        assert cache.lookup(KEY) is None
    assert 'plain file name' in caplog.text
    found = cache.get_or_build(KEY, build)
    assert found.parent == cache.entry_dir(KEY) and found.name == 'model.engine'


def test_symlinked_or_unlisted_files_are_refused(tmp_path, caplog):
    cache, build = EngineCache(tmp_path / 'cache'), Builder()
    path = cache.get_or_build(KEY, build)
    elsewhere = tmp_path / 'elsewhere.engine'
    elsewhere.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(elsewhere)
    assert cache.lookup(KEY) is None
    path.unlink()
    path.write_bytes(b'engine-1')
    assert cache.lookup(KEY) == path
    (path.parent / 'extra.bin').write_bytes(b'planted')
    with caplog.at_level(logging.WARNING, logger='dvd_ros.engine_cache'):
        assert cache.lookup(KEY) is None
    assert 'extra.bin' in caplog.text and 'not listed' in caplog.text


def test_a_build_returning_a_path_outside_its_folder_is_refused(tmp_path):
    cache = EngineCache(tmp_path / 'cache')
    outside = tmp_path / 'model.engine'
    outside.write_bytes(b'x')
    with pytest.raises(ValueError, match='not a file directly inside'):
        cache.get_or_build(KEY, lambda folder: outside)
    assert cache.entries() == []


class SlowBuilder(Builder):
    """A builder that waits until every racer has started (so they really overlap)."""

    def __init__(self, barrier=None, delay=0.2):
        super().__init__()
        self.barrier = barrier
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, folder):
        with self.lock:
            self.calls += 1
            number = self.calls
        if self.barrier is not None:
            self.barrier.wait(timeout=10)
        time.sleep(self.delay)
        path = folder / 'model.engine'
        path.write_bytes(b'engine-%d' % number)
        return path


def _race(count, target):
    results, errors = [None] * count, []

    def run(i):
        try:
            results[i] = target()
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_concurrent_builders_of_one_key_build_once(tmp_path):
    build = SlowBuilder()
    results, errors = _race(4, lambda: EngineCache(tmp_path).get_or_build(KEY, build))
    assert errors == [] and build.calls == 1
    assert len(set(results)) == 1 and results[0].read_bytes() == b'engine-1'
    # No lock file or build folder is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY.dirname]


def test_the_loser_of_a_rename_race_uses_the_winners_entry(tmp_path, monkeypatch, caplog):
    # Builders that do not take the lock (a filesystem without flock, an older dvd_ros) still
    # race the rename; the loser gets ENOTEMPTY/EEXIST and must use the winner's entry.
    monkeypatch.setattr(EngineCache, 'key_lock', lambda self, key: contextlib.nullcontext())
    build = SlowBuilder(threading.Barrier(2), delay=0)
    with caplog.at_level(logging.INFO, logger='dvd_ros.engine_cache'):
        results, errors = _race(2, lambda: EngineCache(tmp_path).get_or_build(KEY, build))
    assert errors == [] and build.calls == 2
    assert results[0] == results[1] and results[0].read_bytes() in (b'engine-1', b'engine-2')
    assert EngineCache(tmp_path).lookup(KEY) == results[0]
    assert 'finished first' in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY.dirname]


@pytest.mark.parametrize('code', [errno.ENOTEMPTY, errno.EEXIST])
def test_rename_errors_of_a_lost_race_are_handled(tmp_path, monkeypatch, code):
    cache, build = EngineCache(tmp_path), Builder()
    winner = EngineCache(tmp_path / 'other').get_or_build(KEY, Builder())
    real_rename = os.rename

    def rename(src, dst):
        # The winner lands between our build and our rename.
        if not os.path.exists(dst):
            shutil.copytree(winner.parent, dst)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, 'rename', rename)
    path = cache.get_or_build(KEY, build)
    monkeypatch.setattr(os, 'rename', real_rename)
    assert path == cache.entry_dir(KEY) / 'model.engine' and path.read_bytes() == b'engine-1'
    assert cache.lookup(KEY) == path


def _build_in_process(root, log):
    def build(folder):
        with open(log, 'a') as fh:
            fh.write(f'{os.getpid()}\n')
        time.sleep(0.3)
        path = folder / 'model.engine'
        path.write_bytes(b'engine-proc')
        return path

    path = EngineCache(root).get_or_build(KEY, build)
    os._exit(0 if path.read_bytes() == b'engine-proc' else 3)


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs fork')
def test_concurrent_processes_build_once(tmp_path):
    log = tmp_path / 'builds.txt'
    ctx = multiprocessing.get_context('fork')
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path / 'cache', log))
             for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert sorted(p.name for p in (tmp_path / 'cache').iterdir()) == [KEY.dirname]


def test_build_folders_of_killed_builders_are_removed(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    dead = tmp_path / f'.{KEY.dirname}.tmp-999999999-abc'  # above any pid_max
    alive = tmp_path / f'.{KEY.dirname}.tmp-{os.getpid()}-abc'
    for folder in (dead, alive):
        folder.mkdir()
        (folder / 'half').write_bytes(b'partial')
    cache.get_or_build(KEY, build)
    assert not dead.exists() and alive.exists()
