"""Engine cache: equal keys share an entry, any changed field rebuilds (with a log line)."""

import dataclasses
import json
import logging

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
    assert manifest['files'] == {'model.engine': len(b'engine-1')}


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
