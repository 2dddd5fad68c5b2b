"""dtype auto and the native-dtype check of dvd_ros.model.devices (CPU capability mocked)."""

import pytest
import torch

from dvd_ros.errors import InputError
from dvd_ros.model import devices

AMX = frozenset({'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'})
AVX2 = frozenset({'avx2', 'fma'})
FP16 = frozenset({'avx512f', 'avx512_bf16', 'avx512_fp16'})


@pytest.fixture
def cpu(monkeypatch):
    """Return a setter ``cpu(flags, level)`` for the CPU the module sees."""
    def set_cpu(flags, level='AVX512'):
        monkeypatch.setattr(devices, 'cpu_flags', lambda path=None: frozenset(flags))
        monkeypatch.setattr(devices, 'cpu_capability', lambda: level)
        monkeypatch.setattr(devices.platform, 'machine', lambda: 'x86_64')
    return set_cpu


def test_cpuinfo_flags_are_parsed(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nflags\t\t: fpu AVX2 amx_bf16\n\nprocessor\t: 1\n'
                    'flags\t\t: fpu avx2 amx_bf16\n')
    assert devices.cpu_flags.__wrapped__(str(info)) == {'fpu', 'avx2', 'amx_bf16'}
    assert devices.cpu_flags.__wrapped__(str(tmp_path / 'absent')) == frozenset()


def test_auto_is_bfloat16_on_an_amx_cpu_and_float32_on_avx2(cpu):
    cpu(AMX)
    assert devices.auto_dtype('cpu') == torch.bfloat16
    assert devices.choose_dtype('auto') == torch.bfloat16
    assert devices.choose_dtype('bf16') == torch.bfloat16
    cpu(AVX2, 'AVX2')
    assert devices.auto_dtype('cpu') == torch.float32
    assert devices.choose_dtype('auto') == torch.float32


def test_bf16_flags_without_avx512_kernels_are_not_native(cpu):
    # torch running at its AVX2 level (e.g. ATEN_CPU_CAPABILITY=avx2) uses no bf16 instructions.
    cpu(AMX, 'AVX2')
    assert devices.native_dtypes('cpu') == (torch.float32,)


def test_emulated_dtype_is_refused_naming_the_fix(cpu):
    cpu(AVX2, 'AVX2')
    with pytest.raises(InputError, match=r'bfloat16 refused.*AVX512_BF16 or AMX_BF16.*'
                                         r'use dtype float32 or auto \(picks float32 here\)'):
        devices.choose_dtype('bfloat16')
    cpu(AMX)
    with pytest.raises(InputError, match=r'float16 refused.*AVX512_FP16 or AMX_FP16.*'
                                         r'picks bfloat16 here'):
        devices.choose_dtype(torch.float16)
    cpu(FP16)
    assert devices.choose_dtype('float16') == torch.float16
    assert devices.choose_dtype('float32') == torch.float32
    with pytest.raises(InputError, match='unknown dtype'):
        devices.choose_dtype('int8')


def test_onnxruntime_on_the_cpu_gets_float32_from_auto(cpu):
    cpu(AMX)
    assert devices.choose_dtype('auto', 'cpu', backend='onnxruntime') == torch.float32
    # Its graph precision is checked by the backend, not here.
    assert devices.choose_dtype('bfloat16', 'cpu', backend='onnxruntime') == torch.bfloat16


def test_cuda_prefers_bfloat16_where_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    assert devices.auto_dtype('cuda') == torch.bfloat16
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)
    assert devices.auto_dtype('cuda:0') == torch.float32
    assert devices.choose_dtype('float16', 'cuda') == torch.float16


def test_from_pretrained_refuses_before_loading(cpu, monkeypatch, tmp_path):
    from dvd_ros.model import checkpoint
    from dvd_ros.model.regressor import DepthRegressor

    def never(*args, **kwargs):
        raise AssertionError('weights loaded although the dtype is refused')

    monkeypatch.setattr(checkpoint, 'load_models', never)
    cpu(AVX2, 'AVX2')
    with pytest.raises(InputError, match='bfloat16 refused'):
        DepthRegressor.from_pretrained(tmp_path, dtype='bfloat16')


def test_from_pretrained_auto_loads_in_the_chosen_dtype(cpu, monkeypatch, tmp_path):
    from tiny_models import save_tiny_weights

    from dvd_ros.model import checkpoint
    from dvd_ros.model.regressor import DepthRegressor

    folder = save_tiny_weights(tmp_path / 'tiny')
    cpu(AVX2, 'AVX2')
    assert DepthRegressor.from_pretrained(folder, height=16, width=16).dtype == torch.float32
    cpu(AMX)
    loaded = []
    real = checkpoint.load_models
    monkeypatch.setattr(checkpoint, 'load_models',
                        lambda *a, **k: loaded.append(k['dtype']) or real(*a, **k))
    assert DepthRegressor.from_pretrained(folder, height=16, width=16).dtype == torch.bfloat16
    assert loaded == [torch.bfloat16]


def test_fastest_backend_per_cpu(cpu, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: object() if name == 'onnxruntime' else real(name, *a))
    cpu(AMX)
    assert devices.fastest_backend('cpu') == 'torch'  # bfloat16 is native here
    cpu(AVX2, 'AVX2')
    assert devices.fastest_backend('cpu') == 'onnxruntime'
    assert devices.fastest_backend('cuda') == 'torch'
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'onnxruntime' else real(name, *a))
    assert devices.fastest_backend('cpu') == 'torch'
