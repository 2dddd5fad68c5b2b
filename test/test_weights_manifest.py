"""Converted folders are verified (manifest, values), inputs bounded, files readable by all."""

import hashlib
import json
import os
import signal
import stat

import pytest
import torch

from dvd_ros.cli.main import main
from dvd_ros.errors import WeightsError
from dvd_ros.model import checkpoint
from dvd_ros.model.weights import converted, files, loading, release
from dvd_ros.model.weights.manifest import PAYLOAD, reseal
from dvd_ros.model.weights.tensor_io import SafetensorsReader, write_safetensors

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def models(fixtures):
    return checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')


@pytest.fixture
def folder(tmp_path, models):
    return checkpoint.save_converted(models, tmp_path / 'converted')


@pytest.fixture(autouse=True)
def no_hang():
    """Turn a hang (a FIFO opened for reading blocks forever) into a failure."""
    def hung(*_):
        raise TimeoutError('blocked on a non-regular file')
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta_of(folder):
    return json.loads((folder / checkpoint.META_FILE).read_text())


# ------------------------------------------------------------------ the manifest

def test_manifest_lists_exactly_the_written_files(folder):
    listed = meta_of(folder)['files']
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()}
    assert set(listed) == on_disk - {checkpoint.META_FILE} == set(PAYLOAD)
    for name, entry in listed.items():
        assert entry == {'size': (folder / name).stat().st_size, 'sha256': sha256(folder / name)}


@pytest.mark.parametrize('extra, named', [
    ('notes.txt', 'notes.txt'), ('transformer/model-00002.safetensors', None),
    ('vae/.hidden', None), ('other/x.safetensors', 'other/')])
def test_extra_file_is_refused(folder, extra, named):
    (folder / extra).parent.mkdir(exist_ok=True)
    (folder / extra).write_bytes(b'x')
    with pytest.raises(WeightsError, match=f'does not list: {named or extra}.*re-run convert'):
        checkpoint.load_models(folder)


def test_same_size_change_is_refused(folder):
    weights = folder / 'transformer' / 'diffusion_pytorch_model.safetensors'
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a weight's byte: same size, same header
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match='does not match its SHA-256.*re-run convert'):
        checkpoint.load_models(folder)


def test_changed_config_is_refused(folder):
    config = folder / 'vae' / 'config.json'
    config.write_text(config.read_text().replace('"dropout": 0.0', '"dropout": 0.5'))
    with pytest.raises(WeightsError, match='manifest says|SHA-256'):
        checkpoint.load_models(folder)


def test_missing_file_is_refused(folder):
    (folder / 'vae' / 'config.json').unlink()
    with pytest.raises(WeightsError, match='missing files: vae/config.json'):
        checkpoint.load_models(folder)


def test_listed_file_replaced_by_a_fifo_is_refused(folder):
    target = folder / 'vae' / 'diffusion_pytorch_model.safetensors'
    target.unlink()
    os.mkfifo(target)
    with pytest.raises(WeightsError, match='not regular files'):
        checkpoint.load_models(folder)


def test_convert_then_folder_reads_back_bit_exact(folder, models):
    again = checkpoint.load_models(folder)
    for mine, theirs in ((again.transformer, models.transformer), (again.vae, models.vae)):
        a, b = mine.state_dict(), theirs.state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_embedded_tiny_model_carries_a_valid_manifest():
    meta = meta_of(checkpoint.DEFAULT_WEIGHTS)
    assert meta['format_version'] == checkpoint.FORMAT_VERSION
    assert set(meta['files']) == set(PAYLOAD)
    for name, entry in meta['files'].items():
        assert entry['sha256'] == sha256(checkpoint.DEFAULT_WEIGHTS / name)


def test_folder_from_older_version_asks_for_reconversion(folder):
    meta = meta_of(folder)
    meta['format_version'] = 1
    del meta['files']
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match='no file manifest.*re-run `dvd-ros weights convert`'):
        checkpoint.load_models(folder)


# ------------------------------------------------------------------ values

def _edit_meta(folder, key, value):
    meta = meta_of(folder)
    meta[key] = value
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))


def _edit_config(folder, part, key, value):
    """Change a config value and re-seal: a consistent folder whose values are wrong."""
    path = folder / part / 'config.json'
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    reseal(folder)


@pytest.mark.parametrize('key, value, message', [
    ('format_version', 99, 'format_version'),
    ('dtype', 'int8', 'dtype'),
    ('height', 'big', 'height'),
    ('width', 10 ** 9, 'width'),
    ('recommended_window', 6, r'4n\+1'),
    ('recommended_window', 165, r'4n\+1'),
    ('latents_std', [1.0] * 15 + [0.0], 'latents_std'),
    ('latents_std', [1.0] * 15 + [-2.0], 'latents_std'),
    ('latents_mean', [float('nan')] * 16, 'latents_mean'),
    ('latents_mean', [0.0] * 8, 'latents_std'),
    ('files', {'../escape.safetensors': {'size': 1, 'sha256': '0' * 64}}, 'files'),
    ('files', {'transformer/config.json': {'size': 1, 'sha256': 'zz'}}, 'files'),
])
def test_malformed_meta_values_are_refused(folder, key, value, message):
    _edit_meta(folder, key, value)
    with pytest.raises(WeightsError, match=message):
        checkpoint.load_models(folder)


@pytest.mark.parametrize('part, key, value, message', [
    ('transformer', 'num_attention_heads', 0, 'num_attention_heads'),
    ('transformer', 'num_layers', 10 ** 6, 'num_layers'),
    ('transformer', 'attention_head_dim', 32.5, 'attention_head_dim'),
    ('transformer', 'ffn_dim', -1, 'ffn_dim'),
    ('transformer', 'eps', float('nan'), 'eps'),
    ('transformer', 'patch_size', [1, 2], 'patch_size'),
    ('transformer', 'cross_attn_norm', 'yes', 'cross_attn_norm'),
    ('transformer', 'evil_kwarg', 1, "unknown key 'evil_kwarg'"),
    ('vae', 'z_dim', 0, 'z_dim'),
    ('vae', 'dim_mult', [1] * 50, 'dim_mult'),
    ('vae', 'temperal_downsample', [True], 'temperal_downsample'),
    ('vae', 'latents_std', [0.0] * 16, 'latents_std'),
])
def test_malformed_config_values_are_refused(folder, part, key, value, message):
    _edit_config(folder, part, key, value)
    with pytest.raises(WeightsError, match=message):
        checkpoint.load_models(folder)


def test_a_newer_diffusers_argument_is_accepted(folder, monkeypatch):
    # A diffusers release newer than our rules writes a key of its own: accepted when the
    # installed class takes it as a plain argument (here: a rule we pretend not to have).
    from dvd_ros.model.weights import schema
    rules = dict(schema.DIT_KEYS)
    rules.pop('rope_max_seq_len')
    monkeypatch.setattr(schema, 'DIT_KEYS', rules)
    assert checkpoint.load_models(folder).transformer is not None
    # ... but not with a value that could ask for a large allocation.
    _edit_config(folder, 'transformer', 'rope_max_seq_len', [1] * 10)
    with pytest.raises(WeightsError, match="unknown key 'rope_max_seq_len'"):
        checkpoint.load_models(folder)


def test_oversized_meta_is_refused(folder):
    meta = meta_of(folder)
    meta['padding'] = 'x' * (2 * 1024 * 1024)
    (folder / checkpoint.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match='larger than'):
        checkpoint.load_models(folder)


# ------------------------------------------------------------------ non-regular inputs

def test_fifo_as_weights_file_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / 'model.safetensors'
    os.mkfifo(fifo)
    with pytest.raises(WeightsError, match='not a regular file'):
        checkpoint.load_models(fifo)
    with pytest.raises(WeightsError, match='not a regular file'):
        checkpoint.describe(fifo)


def test_fifo_as_vae_pickle_is_an_error(tmp_path, fixtures):
    fifo = tmp_path / 'Wan2.1_VAE.pth'
    os.mkfifo(fifo)
    with pytest.raises(WeightsError, match='not a regular file'):
        checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors', vae_path=fifo)


def test_folder_as_vae_file_is_an_error(tmp_path, fixtures):
    with pytest.raises(WeightsError, match='is a folder'):
        checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors', vae_path=tmp_path)


def test_fifo_as_meta_is_an_error(folder):
    (folder / checkpoint.META_FILE).unlink()
    os.mkfifo(folder / checkpoint.META_FILE)
    with pytest.raises(WeightsError, match='not a regular file'):
        checkpoint.load_models(folder)
    assert checkpoint.recommended_window(folder) is None


# ------------------------------------------------------------------ unsafe pickles (torch 2.13)

class _Blocked:
    def __reduce__(self):
        return (os.system, ('echo should-never-run',))


@pytest.mark.parametrize('payload, named', [(_Blocked(), 'system'), (print, 'print')])
def test_unsafe_pickle_refusal_says_so(tmp_path, fixtures, payload, named):
    unsafe = tmp_path / 'Wan2.1_VAE.pth'
    torch.save({'weight': torch.zeros(1), 'hook': payload}, unsafe)
    with pytest.raises(WeightsError, match=f'unsafe unpickling.*{named}.*refusing'):
        checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors', vae_path=unsafe)


@pytest.mark.parametrize('message, reason', [
    ('Weights only load failed. ... Trying to load unsupported GLOBAL posix.system whose '
     'module posix is blocked.', 'posix.system'),
    ('Weights only load failed. ... WeightsUnpickler error: Unsupported global: GLOBAL '
     'builtins.eval was not an allowed global by default.', 'builtins.eval'),
    ('Weights only load failed. ... Trying to call reduce for unrecognized function '
     '<function f>', 'objects other than tensors'),
    ('Weights only load failed. ... Unsupported operand 110', None),
    ("invalid load key, 'x'.", None),
])
def test_unsafe_pickle_reason_across_torch_wordings(message, reason):
    assert files.unsafe_pickle_reason(message) == reason


# ------------------------------------------------------------------ modes, source, dtype names

@pytest.mark.parametrize('umask, file_mode, dir_mode', [(0o022, 0o644, 0o755),
                                                        (0o077, 0o600, 0o700)])
def test_converted_files_are_readable_by_others_unless_the_umask_says_no(
        tmp_path, models, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        folder = checkpoint.save_converted(models, tmp_path / 'converted')
    finally:
        os.umask(old)
    for path in [folder, *folder.rglob('*')]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (dir_mode if path.is_dir() else file_mode), path


def test_convert_records_absolute_source_size_and_hash(tmp_path, fixtures, monkeypatch):
    src = tmp_path / 'in' / 'dvd_tiny.safetensors'
    src.parent.mkdir()
    src.write_bytes((fixtures / 'dvd_tiny_dit.safetensors').read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(['weights', 'convert', 'in/dvd_tiny.safetensors', 'out']) == 0
    meta = meta_of(tmp_path / 'out')
    assert meta['source'] == str(src.resolve())
    assert meta['source_size'] == src.stat().st_size
    assert meta['source_sha256'] == sha256(src)


def test_convert_force_refuses_foreign_files(tmp_path, fixtures, capsys):
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'holiday.jpg').write_bytes(b'x')
    assert main(['weights', 'convert', str(fixtures / 'dvd_tiny_dit.safetensors'),
                 str(tmp_path / 'out'), '--force']) == 2
    assert 'holiday.jpg' in capsys.readouterr().err
    assert (tmp_path / 'out' / 'holiday.jpg').exists()


def test_info_names_dtypes_the_same_for_file_and_folder(tmp_path, fixtures):
    src = fixtures / 'dvd_tiny_dit.safetensors'
    assert main(['weights', 'convert', str(src), str(tmp_path / 'bf16')]) == 0
    bf16_file = checkpoint.write_release_checkpoint(
        tmp_path / 'bf16.safetensors',
        {k.removeprefix('pipe.dit.'): v for k, v in SafetensorsReader(src).read_all().items()
         if k.startswith('pipe.dit.')}, dtype=torch.bfloat16)
    assert checkpoint.describe(tmp_path / 'bf16')['dtypes'] == ['bfloat16']
    assert checkpoint.describe(bf16_file)['dtypes'] == ['bfloat16']


# ------------------------------------------------------------------ tensor I/O and memory

def test_tensor_writer_matches_safetensors(tmp_path):
    from safetensors.torch import load_file

    tensors = {'a': torch.randn(3, 5), 'b': torch.arange(7, dtype=torch.int64),
               'c': torch.randn(4, 4).to(torch.bfloat16)[:, 1], 'd': torch.tensor(2.5),
               'e': torch.zeros(0, 3)}
    size, digest = write_safetensors(tmp_path / 'x.safetensors', tensors, {'format': 'pt'})
    assert (size, digest) == ((tmp_path / 'x.safetensors').stat().st_size,
                              sha256(tmp_path / 'x.safetensors'))
    theirs = load_file(str(tmp_path / 'x.safetensors'))
    with SafetensorsReader(tmp_path / 'x.safetensors') as reader:
        mine = reader.read_all()
        assert reader.metadata == {'format': 'pt'}
    for key, value in tensors.items():
        assert torch.equal(theirs[key], value) and torch.equal(mine[key], value)


def test_loads_release_memory(monkeypatch, fixtures, folder):
    calls = []
    for module in (release, converted):
        monkeypatch.setattr(module, 'release_memory',
                            lambda name=module.__name__: calls.append(name))
    loading.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    assert sum(name.endswith('release') for name in calls) >= 2  # after the merge, at the end
    loading.load_models(folder)
    assert any(name.endswith('converted') for name in calls)


def _rss_kb(field='VmRSS'):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    return None


@pytest.mark.skipif(_rss_kb() is None, reason='needs /proc/self/status (Linux)')
def test_mid_size_merge_keeps_only_the_result(tmp_path):
    # 24 LoRA-wrapped 768x768 layers, rank 128, written as a release-layout state and merged
    # to float32: what stays resident after the merge must be the merged weights (56 MB),
    # not the float64 temporaries (~14 MB per layer, 340 MB in all).
    layers, dim, rank = 24, 768, 128
    generator = torch.Generator().manual_seed(0)
    state = {}
    for i in range(layers):
        state[f'blocks.{i}.ffn.0.base_layer.weight'] = torch.randn(dim, dim, generator=generator)
        state[f'blocks.{i}.ffn.0.lora_A.default.weight'] = torch.randn(rank, dim,
                                                                       generator=generator)
        state[f'blocks.{i}.ffn.0.lora_B.default.weight'] = torch.randn(dim, rank,
                                                                       generator=generator)
    path = tmp_path / 'lora.safetensors'
    write_safetensors(path, state)
    del state
    from dvd_ros.model.weights.lora import merge_lora
    from dvd_ros.model.weights.memory import release_memory

    release_memory()
    before = _rss_kb()
    try:  # reset the peak (VmHWM) to now, where the kernel allows it
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')
        peak_known = True
    except OSError:
        peak_known = False
    with SafetensorsReader(path) as reader:
        merged, info = merge_lora((list(reader.entries), reader.get), dtype=torch.float32)
    peak_mb = (_rss_kb('VmHWM') - before) / 1024
    release_memory()
    grown_mb = (_rss_kb() - before) / 1024
    result_mb = sum(t.numel() * t.element_size() for t in merged.values()) / 2 ** 20
    assert info['lora_pairs'] == layers and info['rank'] == rank
    assert grown_mb < result_mb + 24, (grown_mb, result_mb)
    if peak_known:
        # One layer's float64 temporaries (~7 MB) on top of the result, never all of them
        # (measured here: growth 59 MB, peak 71 MB for a 54 MB result).
        assert peak_mb < result_mb + 48, (peak_mb, result_mb)
