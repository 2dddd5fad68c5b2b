"""Graph precisions: the dtype each stage graph computes in, and FP8 for the DiT's linears.

TensorRT 11 builds only strongly typed networks (its FP16/BF16/FP8 builder flags are
gone; they were deprecated in 10.12), so the precision of an engine is the precision of
the ONNX graph it is built from. Each precision is therefore a graph of its own:

- ``fp32``, ``fp16``, ``bf16``: the stage module traced in that dtype. The modules
  already keep norms, modulation and residual sums in float32 (``x.float()`` in
  ``folding.py``), so a typed graph is the same mixed-precision recipe as the torch
  backend in that dtype, not an automatic cast of every layer.
- ``fp8``: the DiT's linear layers get explicit FP8 (E4M3) quantise/dequantise pairs
  (ONNX ``QuantizeLinear``/``DequantizeLinear``): weights per output channel, inputs
  per tensor with a scale calibrated on real frames (max calibration); everything else
  runs in fp16. The VAE stages of an fp8 build are plain fp16 (convolutions in FP8 lose
  too much for little gain).

Inputs and outputs of every graph stay float32, so the runtimes bind the same buffers
whatever the precision.
"""

from dataclasses import dataclass
import hashlib

import numpy as np
import torch
from torch import nn

from dvd_ros.errors import InputError

FP8_MAX = 448.0  # largest finite float8 E4M3 value


@dataclass(frozen=True)
class Precision:
    """How a stage graph of this precision is made."""

    name: str
    dtype: torch.dtype           # compute dtype of the traced module
    opset: int                   # ONNX opset the graph needs
    min_capability: tuple        # lowest CUDA compute capability that runs it natively
    fp8_linears: bool = False    # DiT linears quantised to FP8


PRECISIONS = {
    'fp32': Precision('fp32', torch.float32, 17, (0, 0)),
    'fp16': Precision('fp16', torch.float16, 17, (5, 3)),
    # Conv accepts bfloat16 from opset 22 on (TensorRT 11 parses up to opset 25).
    'bf16': Precision('bf16', torch.bfloat16, 22, (8, 0)),
    # float8 Q/DQ needs opset 19; FP8 tensor cores need Ada / Hopper (sm 8.9+).
    'fp8': Precision('fp8', torch.float16, 19, (8, 9), fp8_linears=True),
}


# What a backend computes in when only a torch dtype is given.
DEFAULT_PRECISION = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16'}


def find_precision(name):
    """Return the ``Precision`` called ``name``.

    :raises InputError: for an unknown name (lists the known ones).
    """
    try:
        return PRECISIONS[name]
    except KeyError:
        raise InputError(f'unknown precision {name!r}; choose one of '
                         f'{", ".join(PRECISIONS)}') from None


class TypedStage(nn.Module):
    """Run ``module`` in ``dtype`` behind float32 input and output."""

    def __init__(self, module, dtype):
        """Wrap ``module`` (already cast to ``dtype``)."""
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x):
        """``x`` float32 -> ``module(x in dtype)`` as float32."""
        return self.module(x.to(self.dtype)).float()


class _Fp8QuantDequant(torch.autograd.Function):
    """Round to float8 E4M3 with a scale; exported as a QuantizeLinear/DequantizeLinear pair."""

    @staticmethod
    def forward(ctx, x, scale, axis):
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            scale = scale.view(shape)
        # torch's float8 cast is round-to-nearest-even like ONNX's QuantizeLinear, but it
        # overflows to NaN, where ONNX saturates (saturate=1): clamp first. The division
        # is done in float32, as onnxruntime does for 16-bit inputs.
        q = (x.float() / scale.float()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q.to(x.dtype) * scale

    @staticmethod
    def symbolic(g, x, scale, axis):
        sizes = scale.type().sizes() if axis is not None else ()
        zero = g.op('Constant', value_t=torch.zeros(sizes, dtype=torch.float8_e4m3fn))
        attrs = {} if axis is None else {'axis_i': axis}
        q = g.op('QuantizeLinear', x, scale, zero, **attrs)
        return g.op('DequantizeLinear', q, scale, zero, **attrs)


def fp8_quant_dequant(x, scale, axis=None):
    """Round ``x`` to float8 E4M3 steps of ``scale`` (per tensor, or per index along ``axis``)."""
    return _Fp8QuantDequant.apply(x, scale, axis)


class Fp8Linear(nn.Module):
    """``nn.Linear`` with FP8 weights (per output channel) and FP8 input (per tensor).

    Until ``input_scale`` is calibrated (``calibrating`` True) it runs unquantised and
    records the largest absolute input it sees.
    """

    def __init__(self, linear):
        """Quantise a copy of ``linear``'s weight; the bias stays in the compute dtype."""
        super().__init__()
        weight = linear.weight.detach()
        # Stored transposed, (in, out), so the graph is DQ(weight) -> MatMul with no
        # Transpose between them (TensorRT fuses that pattern into an FP8 GEMM).
        self.register_buffer('weight_t', weight.t().contiguous())
        amax = weight.float().abs().amax(dim=1).clamp_min(1e-12)
        self.register_buffer('weight_scale', (amax / FP8_MAX).to(weight.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.register_buffer('input_scale', torch.ones((), dtype=weight.dtype))
        self.calibrating = True
        self.amax = 0.0

    def finish_calibration(self):
        """Fix the input scale from the recorded maximum (refuses an uncalibrated layer)."""
        if not self.amax > 0.0 or not np.isfinite(self.amax):
            raise InputError('FP8 calibration saw no (finite, non-zero) input for a linear '
                             f'layer (max |x| = {self.amax}); calibrate on real frames')
        self.input_scale.fill_(self.amax / FP8_MAX)
        self.calibrating = False

    def forward(self, x):
        """``x @ W.T + b`` with ``x`` and ``W`` rounded to FP8 (after calibration)."""
        if self.calibrating:
            self.amax = max(self.amax, float(x.detach().abs().max()))
            out = torch.matmul(x, self.weight_t.to(x.dtype))
        else:
            xq = fp8_quant_dequant(x, self.input_scale.to(x.dtype))
            wq = fp8_quant_dequant(self.weight_t.to(x.dtype), self.weight_scale.to(x.dtype),
                                   axis=1)
            out = torch.matmul(xq, wq)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def quantize_linears(module, layer_class=None):
    """Replace every ``nn.Linear`` under ``module.blocks`` by an FP8 layer (in place).

    Only the transformer blocks: the patch embedding (a convolution) and the output
    projection, which writes the latents the VAE decodes, keep full precision.

    :param layer_class: the FP8 layer made from each ``nn.Linear``; None = ``Fp8Linear``
        (Q/DQ for the ONNX graphs).
    :return: the list of new layers (calibrate ``Fp8Linear`` ones with ``calibrate_fp8``).
    """
    layer_class = layer_class or Fp8Linear
    layers = []
    for parent in list(module.blocks.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                layer = layer_class(child)
                setattr(parent, name, layer)
                layers.append(layer)
    if not layers:
        raise InputError('found no linear layers to quantise to FP8 under module.blocks')
    return layers


@torch.no_grad()
def calibrate_fp8(module, layers, latents):
    """Run ``module`` on each calibration input and fix every layer's input scale.

    :param module: the DiT module whose ``layers`` were made by ``quantize_linears``.
    :param layers: the ``Fp8Linear`` layers.
    :param latents: iterable of normalised latents ``(1, 16, T', h, w)``.
    :return: ``module``.
    """
    for layer in layers:
        layer.calibrating, layer.amax = True, 0.0
    param = next(module.parameters())
    for x in latents:
        module(x.to(device=param.device, dtype=param.dtype))
    for layer in layers:
        layer.finish_calibration()
    return module


def calibration_frames(shape, frames=None, seed=7):
    """Return calibration video ``(1, 3, T, H, W)`` float32 in [-1, 1] at ``shape``'s size.

    :param shape: the ``WindowShape`` the graph serves (its height and width are used).
    :param frames: ``(T, H, W, 3)`` uint8 RGB of the user's scene (resized to the shape),
        or ``None`` for a rendered synthetic room (deterministic).
    :param seed: synthetic scene seed.
    """
    import cv2

    if frames is None:
        from dvd_ros.synthetic import SyntheticScene

        count = min(shape.window, 9)
        frames, _ = SyntheticScene(seed, shape.height, shape.width).clip(count, stride=3)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or \
            len(frames) == 0:
        raise InputError('calibration frames must be (T, H, W, 3) uint8 RGB with T >= 1, got '
                         f'{frames.dtype} {frames.shape}')
    count = 4 * ((min(len(frames), shape.window) - 1) // 4) + 1  # 4n+1 frames
    resized = [cv2.resize(f, (shape.width, shape.height), interpolation=cv2.INTER_AREA)
               for f in frames[:count]]
    video = torch.from_numpy(np.stack(resized)).permute(3, 0, 1, 2).unsqueeze(0)
    return video.float() / 127.5 - 1.0


def save_calibration(frames, folder):
    """Save calibration ``frames`` as ``folder/fp8-calibration-<id>.npy``; return the path."""
    from pathlib import Path

    path = Path(folder) / f'fp8-calibration-{calibration_id(frames)}.npy'
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(frames), allow_pickle=False)
    return path


def load_calibration(path):
    """Load calibration frames saved by ``save_calibration`` (``(T, H, W, 3)`` uint8).

    :raises InputError: missing or unreadable file, or not uint8 RGB frames.
    """
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f'cannot read FP8 calibration frames {path} ({exc}); write them with '
                         '`dvd-ros engine build --precision fp8 --calibration VIDEO`') from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise InputError(f'FP8 calibration file {path} holds {frames.dtype} {frames.shape}; '
                         'expected (T, H, W, 3) uint8 RGB frames')
    return frames


def calibration_id(frames):
    """Return a short digest naming calibration ``frames`` (``''`` for the synthetic default)."""
    if frames is None:
        return ''
    array = np.ascontiguousarray(frames)
    digest = hashlib.blake2b(repr(array.shape).encode(), digest_size=8)
    digest.update(memoryview(array).cast('B'))
    return digest.hexdigest()
