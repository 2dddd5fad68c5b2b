"""Which dtypes a device computes natively, and what ``dtype: auto`` picks.

On a CPU without bfloat16 instructions torch runs bfloat16 through its generic path: a window
that takes a second in float32 takes minutes. So a dtype is accepted only where the hardware
has it: bfloat16 on CPUs with AVX-512-BF16 or AMX-BF16 (x86) or the BF16 extension (Arm),
float16 on CPUs with AVX-512-FP16 or AMX-FP16 (x86) or FP16 arithmetic (Arm); on CUDA GPUs
float16 always and bfloat16 where ``torch.cuda.is_bf16_supported()``. ``auto`` takes bfloat16
where it is native (on CUDA and on such CPUs: measured 3.6-4.5x faster than float32 with the
same held-out accuracy, docs/acceleration.md) and float32 elsewhere.
"""

import functools
import platform

import torch

from dvd_ros.errors import InputError

AUTO = 'auto'
NAMES = {torch.float32: 'float32', torch.bfloat16: 'bfloat16', torch.float16: 'float16'}
# /proc/cpuinfo flags (x86 "flags", Arm "Features") that make a dtype native on the CPU.
NATIVE_CPU_FLAGS = {
    torch.bfloat16: ('avx512_bf16', 'amx_bf16', 'bf16'),
    torch.float16: ('avx512_fp16', 'amx_fp16', 'asimdhp'),
}
# torch CPU kernel levels that use those instructions (an AVX2-level build does not).
_VECTOR_CAPABILITIES = ('AVX512', 'SVE', 'SVE256', 'NEON')


@functools.cache
def cpu_flags(path='/proc/cpuinfo'):
    """Return the CPU's feature flags (lower case) from ``/proc/cpuinfo``; empty if unknown."""
    try:
        with open(path) as fh:
            text = fh.read()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip().lower() in ('flags', 'features'):
            flags.update(value.lower().split())
    return frozenset(flags)


def cpu_capability():
    """Return torch's CPU kernel level (``'AVX2'``, ``'AVX512'``, ``'DEFAULT'``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # noqa: BLE001 - older/odd builds: assume the generic level
        return 'DEFAULT'


def native_dtypes(device='cpu'):
    """Return the dtypes ``device`` computes natively, fastest first.

    :param device: ``'cpu'``, ``'cuda[:i]'`` or a ``torch.device``.
    :return: tuple of torch dtypes; float32 is always last.
    """
    device = torch.device(device)
    if device.type == 'cuda':
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ((torch.bfloat16,) if bf16 else ()) + (torch.float16, torch.float32)
    flags = cpu_flags()
    vector = cpu_capability().startswith(_VECTOR_CAPABILITIES) or platform.machine() in (
        'aarch64', 'arm64')
    found = tuple(dtype for dtype in (torch.bfloat16, torch.float16)
                  if vector and flags & set(NATIVE_CPU_FLAGS[dtype]))
    return found + (torch.float32,)


def auto_dtype(device='cpu'):
    """Return what ``dtype: auto`` runs on ``device``: bfloat16 where native, else float32."""
    return torch.bfloat16 if torch.bfloat16 in native_dtypes(device) else torch.float32


def describe_cpu():
    """Return one line naming the CPU's kernel level and its bf16/fp16 flags (for messages)."""
    flags = sorted(cpu_flags() & {f for names in NATIVE_CPU_FLAGS.values() for f in names})
    return f'torch CPU level {cpu_capability()}, flags: {", ".join(flags) or "no bf16/fp16"}'


def choose_dtype(dtype, device='cpu', backend='torch'):
    """Resolve ``'auto'`` and refuse a dtype the device cannot run natively.

    :param dtype: ``'auto'``, a dtype name (``'bfloat16'``, ``'bf16'``, ...) or a torch dtype.
    :param device: where the model runs.
    :param backend: execution backend; onnxruntime on the CPU has no bfloat16 kernels, so
        ``auto`` is float32 there (its graph precision is checked by the backend itself).
    :return: torch dtype.
    :raises InputError: an unknown dtype, or one the device would only emulate (names the fix).
    """
    from dvd_ros.model.backends.torch_eager import resolve_dtype

    device = torch.device(device)
    if isinstance(dtype, str) and dtype.strip().lower() == AUTO:
        if backend == 'onnxruntime' and device.type == 'cpu':
            return torch.float32
        return auto_dtype(device)
    dtype = resolve_dtype(dtype)
    if not backend.startswith('torch') or (device.type == 'cuda'
                                           and not torch.cuda.is_available()):
        return dtype  # other backends check their precision; a missing GPU fails later
    if dtype in native_dtypes(device):
        return dtype
    if device.type == 'cuda':
        why = f'{device} ({torch.cuda.get_device_name(device)}) has no native {NAMES[dtype]}'
    else:
        needs = ' or '.join(f.upper() for f in NATIVE_CPU_FLAGS[dtype][:2])
        why = (f'this CPU has no native {NAMES[dtype]} ({describe_cpu()}; it needs {needs}), '
               f'so torch would emulate it many times slower than float32')
    raise InputError(f'dtype {NAMES[dtype]} refused: {why}; use dtype float32 or auto '
                     f'(picks {NAMES[auto_dtype(device)]} here)')


def fastest_backend(device='cpu'):
    """Return the backend that runs the model fastest at full accuracy on ``device``.

    CPU with native bfloat16: torch (``dtype: auto`` runs bfloat16); other CPUs: onnxruntime
    when it is installed (float32 graphs), else torch in float32; CUDA: torch (TensorRT needs
    an engine build first). Measured on an AMX CPU, interleaved, one thread, the embedded
    model's 5-frame window at 64x96: torch bfloat16 148 ms, onnxruntime float32 209 ms, torch
    float32 652 ms, with the same held-out accuracy (docs/acceleration.md); on an AVX2 CPU
    bfloat16 falls into torch's generic path and onnxruntime is the fast one.
    """
    import importlib.util

    if torch.device(device).type != 'cpu' or torch.bfloat16 in native_dtypes('cpu'):
        return 'torch'
    return 'onnxruntime' if importlib.util.find_spec('onnxruntime') else 'torch'
