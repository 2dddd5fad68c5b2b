"""FP8 (E4M3) linear layers for the torch backend's DiT, on ``torch._scaled_mm``.

The recipe is the one of the ONNX/TensorRT fp8 graphs (``dvd_ros.model.precision``):
every ``nn.Linear`` of the transformer blocks gets float8 E4M3 weights with one scale
per output channel and a float8 input with one scale per tensor, calibrated (max
calibration) on frames of a rendered room or the user's scene; the patch embedding, the
output projection, norms, attention and the VAE keep the run dtype.

Here the float8 tensors are real: the weight is stored in float8 (half the memory of
bfloat16) and the product runs in ``torch._scaled_mm`` (FP8 tensor cores on Ada/Hopper;
a reference kernel on CPU, so the arithmetic is tested everywhere). Row-wise scaling
(input scale as an ``(M, 1)`` column, weight scales as a ``(1, N)`` row) is tried first;
where the GPU's kernel lacks it the product runs with tensor-wise scales and the
per-channel weight scales are applied to the output with the bias, in one ``addcmul``.
"""

import torch
from torch import nn

from dvd_ros.errors import InputError
from dvd_ros.model.precision import FP8_MAX, calibrate_fp8, quantize_linears

FP8 = torch.float8_e4m3fn


def _to_fp8(x, inv_scale):
    """Return ``x * inv_scale`` saturated to the E4M3 range, as float8 (round to nearest)."""
    return (x * inv_scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8)


class ScaledFp8Linear(nn.Module):
    """``nn.Linear`` as an FP8 GEMM: float8 weight (per output channel), float8 input.

    Until calibrated (``calibrating`` True) it runs the unquantised product with the
    original weight and records the largest absolute input.
    """

    def __init__(self, linear):
        """Quantise ``linear``'s weight to float8 (``linear`` is kept only while calibrating)."""
        super().__init__()
        weight = linear.weight.detach()
        amax = weight.float().abs().amax(dim=1).clamp_min(1e-12)
        scale = amax / FP8_MAX
        # (out, in) row-major: its transpose is the column-major (in, out) _scaled_mm wants.
        self.register_buffer('weight', _to_fp8(weight.float(), (1.0 / scale)[:, None]))
        self.register_buffer('weight_scale', scale[None, :].contiguous())  # (1, out) float32
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.register_buffer('input_scale', torch.ones((), device=weight.device))
        self.calibrating = True
        self.amax = 0.0
        self._source = linear
        self._rows = {}
        self.rowwise = True

    def finish_calibration(self):
        """Fix the input scale from the recorded maximum (refuses an uncalibrated layer)."""
        if not self.amax > 0.0 or self.amax == float('inf'):
            raise InputError('FP8 calibration saw no (finite, non-zero) input for a linear '
                             f'layer (max |x| = {self.amax}); calibrate on real frames')
        self.input_scale.fill_(self.amax / FP8_MAX)
        self.inv_input_scale = 1.0 / (self.amax / FP8_MAX)
        self.calibrating = False
        self._source = None
        self._rows.clear()

    def _row_scale(self, rows):
        # One (rows, 1) column of the input scale per token count, made outside graph capture
        # (the first call of a shape is an eager warm-up).
        column = self._rows.get(rows)
        if column is None:
            column = self.input_scale.expand(rows, 1).contiguous()
            self._rows[rows] = column
        return column

    def forward(self, x):
        """``x @ W.T + b`` with ``x`` and ``W`` in float8 (after calibration)."""
        if self.calibrating:
            self.amax = max(self.amax, float(x.detach().abs().max()))
            return self._source(x)
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        xq = _to_fp8(flat, self.inv_input_scale)
        out_dtype = x.dtype
        if self.rowwise:
            try:
                out = torch._scaled_mm(xq, self.weight.t(), scale_a=self._row_scale(len(flat)),
                                       scale_b=self.weight_scale, out_dtype=out_dtype)
                if self.bias is not None:
                    out += self.bias
                return out.view(*shape[:-1], -1)
            except RuntimeError:
                self.rowwise = False  # this GPU's kernel has no row-wise scaling
        one = self.input_scale.new_ones(())
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=self.input_scale, scale_b=one,
                               out_dtype=out_dtype)
        scale = self.weight_scale.to(out_dtype)
        if self.bias is None:
            out = out * scale
        else:
            out = torch.addcmul(self.bias.to(out_dtype), out, scale)
        return out.view(*shape[:-1], -1)


def quantize_blocks(module):
    """Replace every ``nn.Linear`` under ``module.blocks`` by a ``ScaledFp8Linear`` (in place).

    :param module: a ``FoldedDiT`` (its blocks share the transformer's modules, so the
        transformer's feed-forward linears are replaced too).
    :return: the new layers (calibrate them with ``calibrate``).
    :raises InputError: no linear layer found.
    """
    return quantize_linears(module, ScaledFp8Linear)


def calibrate(module, layers, latents):
    """Fix every layer's input scale from ``module`` run on each of ``latents``.

    :param module: the DiT module whose ``layers`` were made by ``quantize_blocks``.
    :param layers: the ``ScaledFp8Linear`` layers.
    :param latents: iterable of normalised latents ``(1, 16, T', h, w)``.
    :return: ``module``.
    """
    return calibrate_fp8(module, layers, latents)
