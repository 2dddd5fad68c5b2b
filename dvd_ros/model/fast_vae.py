"""Our own executor of the Wan2.1 VAE: whole window per pass, channels-last, no padding copies.

``FastWanVAE`` computes what ``AutoencoderKLWan.encode(x).latent_dist.mean`` and
``AutoencoderKLWan.decode(z).sample`` compute, from the same parameters, but not the
way diffusers does it. Why each choice (measured in ``benchmarks/bench_fast_vae.py``):

- **Whole window, no feature cache.** Diffusers encodes frame 0 alone and then chunks of
  4 frames (decodes one latent frame at a time), carrying the last two frames of every
  causal convolution's input in a cache. Worked out, that chunking is the same as one
  pass over the whole window in which

  * every causal 3x3x3 / 3x1x1 convolution sees two zero frames before frame 0,
  * the encoder's temporal downsampling passes frame 0 through and applies its stride-2
    3x1x1 convolution (no padding) to the whole sequence, frame 0 included,
  * the decoder's temporal upsampling passes frame 0 through and applies its causal
    3x1x1 convolution (two zero frames) to frames 1.., each giving two output frames,

  and every other layer is per frame. So one pass computes the same numbers with large
  batched convolutions and no per-chunk copies (``test/test_fast_vae.py`` holds it to
  diffusers within 1e-5 in float32). Inputs that are not 4n+1 frames long are cut to
  ``1 + 4 * ((T - 1) // 4)`` frames, as diffusers does.
  For less memory, ``chunk_frames`` runs the window in temporal chunks carrying each
  causal layer's last two input frames (the time resamplers their own history) from
  chunk to chunk: bit for bit the whole-window result on CPU, since every convolution
  is per frame and the taps are summed in the same order.
- **Causal convolution as three 2-D convolutions.** A causal 3x3x3 convolution over
  ``T`` frames is the sum of three 3x3 convolutions of time-shifted frame ranges: tap 2
  over all frames (with the bias), tap 1 added to frames 1.., tap 0 to frames 2... The
  shifted ranges are views of the unpadded activation, so no padded copy exists at all
  (no ``F.pad``, no ``cat``) and no work is spent on the zero frames. On CPU this is 6x
  faster than ``conv3d``; on an H200 the issue measured 1.50 vs 1.96 ms per layer.
  ``temporal='conv3d'`` keeps one ``conv3d`` per layer over a buffer allocated once with
  its two zero frames (for comparison).
- **Channels-last end to end.** Activations are held as contiguous ``(B, T, H, W, C)``
  tensors; convolutions see their channels-last ``(N, C, H, W)`` views, so cuDNN/oneDNN
  never convert layouts, and RMS norms reduce over the innermost dimension.
- **RMS norm + SiLU** is ``F.rms_norm`` (one fused kernel, accumulating in float32 for
  half types, no float32 copy of the activation) and an in-place SiLU.
- **Folded affine maps.** The encoder's ``conv_out``, the mean half of ``quant_conv``
  and (optionally) DVD's latent normalisation are one convolution; the decoder's
  de-normalisation is folded into ``post_quant_conv``. Folding is done in float64, then
  cast to the run dtype.

The executor copies the parameters it needs at construction (laid out for its kernels);
build it after the VAE is on its device and dtype, and rebuild it if the VAE changes.
Only the Wan2.1 layout is supported (``is_residual=False``, no ``patch_size``);
``UnsupportedVAE`` says why otherwise, and callers fall back to diffusers.
"""

import math

import torch
import torch.nn.functional as F

TEMPORAL_MODES = ('taps', 'conv3d')


class UnsupportedVAE(ValueError):
    """The VAE's configuration is outside what ``FastWanVAE`` implements (names the field)."""


class FlopCounter:
    """Multiply-add count (as 2 FLOPs each) of the convolutions, linears and attention run."""

    def __init__(self):
        self.flops = 0

    def add(self, flops):
        """Add ``flops`` floating-point operations."""
        self.flops += int(flops)


def _frames(x):
    """Return the ``(B*T, C, H, W)`` channels-last view of a contiguous ``(B, T, H, W, C)``."""
    b, t, h, w, c = x.shape
    return x.view(b * t, h, w, c).permute(0, 3, 1, 2)


def _physical(y, batch):
    """Return the contiguous ``(B, T, H, W, C)`` view of a channels-last ``(B*T, C, H, W)``."""
    n, c, h, w = y.shape
    y = y.permute(0, 2, 3, 1)
    if not y.is_contiguous():  # a backend that ignored the layout; rare, but stay correct
        y = y.contiguous()
    return y.view(batch, n // batch, h, w, c)


def _cl(weight):
    """Return a channels-last copy of a 4-D conv weight (always a new tensor)."""
    return weight.detach().clone().contiguous(memory_format=torch.channels_last)


class _Context:
    """Per-call state shared by the layers: the FLOP counter, the chunk history."""

    counter = None
    # While a window runs in temporal chunks: layer -> what it keeps of earlier chunks.
    state = None


def _causal_sum(y, sources, taps, past, run):
    """Add the causal taps 1 and 0 of ``sources`` (and of ``past``, earlier frames) to ``y``.

    ``y[t] += tap1(X[t-1]) + tap0(X[t-2])`` where ``X`` is ``past`` followed by
    ``sources``, zero before its start; frames along dimension 0 of ``y``/``sources``.
    """
    count = y.shape[0]
    if count > 1:
        y[1:] += run(sources[:-1], taps[1])
    if count > 2:
        y[2:] += run(sources[:-2], taps[0])
    if past is not None:
        known = past.shape[0]
        for tap, shift in ((1, 1), (0, 2)):
            first, last = max(0, shift - known), min(shift, count)
            if first < last:
                y[first:last] += run(past[known - shift + first:known - shift + last],
                                     taps[tap])
    return y


def _keep_last_two(past, x):
    """Return the last two frames of ``past`` followed by ``x`` (dim 1), as a new tensor."""
    if x.shape[1] >= 2 or past is None:
        return x[:, -2:].clone()
    return torch.cat([past[:, -1:], x], dim=1)


class _Conv2d:
    """A per-frame 2-D convolution."""

    def __init__(self, ctx, weight, bias, stride=1, padding=1):
        self.ctx = ctx
        self.weight = _cl(weight)
        self.bias = None if bias is None else bias.detach().clone()
        self.stride, self.padding = stride, padding

    def run(self, frames, with_bias=True, weight=None):
        """Convolve ``(N, C, H, W)`` channels-last frames; return channels-last output."""
        weight = self.weight if weight is None else weight
        y = F.conv2d(frames, weight, self.bias if with_bias else None, self.stride,
                     self.padding)
        if self.ctx.counter is not None:
            cout, cin, kh, kw = weight.shape
            self.ctx.counter.add(2 * y.numel() * cin * kh * kw)
        return y

    def __call__(self, x):
        """Apply to every frame of ``(B, T, H, W, C)``."""
        return _physical(self.run(_frames(x)), x.shape[0])


class _Linear:
    """A 1x1(x1) convolution as a matrix product over the channel dimension."""

    def __init__(self, ctx, weight, bias):
        self.ctx = ctx
        self.weight = weight.detach().reshape(weight.shape[0], -1).clone()
        self.bias = None if bias is None else bias.detach().clone()

    def accumulate(self, out, x):
        """Add ``x @ W.T`` (no bias) to the contiguous ``out`` in place; return ``out``."""
        if self.ctx.counter is not None:
            self.ctx.counter.add(2 * x.numel() * self.weight.shape[0])
        flat = out.view(-1, out.shape[-1])
        flat.addmm_(x.reshape(-1, x.shape[-1]), self.weight.t())
        return out

    def __call__(self, x, with_bias=True):
        """Apply to the last dimension of ``x``."""
        if self.ctx.counter is not None:
            self.ctx.counter.add(2 * x.numel() * self.weight.shape[0])
        return F.linear(x, self.weight, self.bias if with_bias else None)


class _CausalConv:
    """Causal 3x3x3 convolution (two zero frames in front), stride 1, spatial padding 1."""

    def __init__(self, ctx, weight, bias, temporal):
        if tuple(weight.shape[2:]) != (3, 3, 3):
            raise UnsupportedVAE(f'causal convolution kernel {tuple(weight.shape[2:])} != 3x3x3')
        self.ctx = ctx
        self.temporal = temporal
        self.bias = bias.detach().clone()
        if temporal == 'taps':
            self.taps = [_cl(weight[:, :, k]) for k in range(3)]
        else:
            self.weight = weight.detach().clone().contiguous(memory_format=torch.channels_last_3d)
        self.cin = weight.shape[1]

    def __call__(self, x):
        """Convolve ``(B, T, H, W, C)``; return ``(B, T, H, W, C_out)``."""
        if x.shape[0] != 1:
            if self.ctx.state is not None:
                raise ValueError('temporal chunks are supported for batch 1 only')
            return torch.cat([self(x[i:i + 1]) for i in range(x.shape[0])])
        past = None
        if self.ctx.state is not None:  # chunked window: the last two frames of before
            past = self.ctx.state.get(self)
            self.ctx.state[self] = _keep_last_two(past, x)
        if self.temporal == 'conv3d':
            return self._conv3d(x, past)
        frames = _frames(x)  # (T, C, H, W)
        y = F.conv2d(frames, self.taps[2], self.bias, 1, 1)
        if self.ctx.counter is not None:
            self.ctx.counter.add(2 * y.numel() * self.cin * 9)
        _causal_sum(y, frames, self.taps, None if past is None else _frames(past), self._tap)
        return _physical(y, 1)

    def _tap(self, frames, weight):
        if self.ctx.counter is not None:
            self.ctx.counter.add(2 * frames.shape[0] * frames.shape[2] * frames.shape[3]
                                 * weight.shape[0] * self.cin * 9)
        return F.conv2d(frames, weight, None, 1, 1)

    def _conv3d(self, x, past=None):
        _, t, h, w, c = x.shape
        buffer = x.new_empty(1, t + 2, h, w, c)  # the causal padding lives in the buffer
        known = 0 if past is None else past.shape[1]
        buffer[:, :2 - known].zero_()
        if known:
            buffer[:, 2 - known:2].copy_(past)
        buffer[:, 2:].copy_(x)
        y = F.conv3d(buffer.permute(0, 4, 1, 2, 3), self.weight, self.bias, 1, (0, 1, 1))
        if self.ctx.counter is not None:
            self.ctx.counter.add(2 * y.numel() * self.cin * 27)
        return y.permute(0, 2, 3, 4, 1).contiguous()


def _gamma(norm):
    """Return the per-channel weight of a diffusers ``WanRMS_norm`` as a flat tensor."""
    if isinstance(norm.bias, torch.Tensor):
        raise UnsupportedVAE('RMS norm with a bias')
    return norm.gamma.detach().reshape(-1).clone()


def _rms(x, gamma):
    """Return ``x / ||x||_C * sqrt(C) * gamma`` over the last dimension (diffusers' norm).

    ``F.rms_norm`` divides by ``sqrt(mean(x^2) + eps)`` = ``||x|| / sqrt(C)``; the tiny eps
    plays the role of diffusers' ``max(||x||, 1e-12)``.
    """
    channels = x.shape[-1]
    return F.rms_norm(x, (channels,), gamma, eps=1e-24 / channels)


def _norm_silu(x, gamma):
    return F.silu(_rms(x, gamma), inplace=True)


class _Residual:
    """``WanResidualBlock``: norm-SiLU-conv twice plus a (1x1x1 or identity) shortcut."""

    def __init__(self, ctx, block, temporal):
        self.gamma1, self.gamma2 = _gamma(block.norm1), _gamma(block.norm2)
        self.conv1 = _CausalConv(ctx, block.conv1.weight, block.conv1.bias, temporal)
        shortcut = block.conv_shortcut
        self.shortcut = None
        bias2 = block.conv2.bias.detach()
        if isinstance(shortcut, torch.nn.Conv3d):
            self.shortcut = _Linear(ctx, shortcut.weight, None)
            # Both biases are per-channel constants added to the same output.
            bias2 = (bias2.double() + shortcut.bias.detach().double()).to(bias2.dtype)
        self.conv2 = _CausalConv(ctx, block.conv2.weight, bias2, temporal)
        self.pad_output = False  # set when a spatial downsampler follows

    def __call__(self, x):
        """Apply to ``(B, T, H, W, C)``.

        With ``pad_output`` the result has a zero row and column appended at the
        bottom/right: the downsampler's padding, written for free by the residual sum.
        """
        y = self.conv2(_norm_silu(self.conv1(_norm_silu(x, self.gamma1)), self.gamma2))
        if not self.pad_output:
            if self.shortcut is None:
                return y.add_(x)
            # The 1x1x1 shortcut accumulates straight into the conv output (one GEMM, beta 1).
            return self.shortcut.accumulate(y, x)
        h = x if self.shortcut is None else self.shortcut(x)
        b, t, rows, cols, c = y.shape
        out = y.new_empty(b, t, rows + 1, cols + 1, c)
        out[:, :, rows].zero_()
        out[:, :, :rows, cols].zero_()
        torch.add(y, h, out=out[:, :, :rows, :cols])
        return out


class _Attention:
    """``WanAttentionBlock``: per-frame single-head self-attention over all pixels."""

    def __init__(self, ctx, block):
        self.ctx = ctx
        self.gamma = _gamma(block.norm)
        self.qkv = _Linear(ctx, block.to_qkv.weight, block.to_qkv.bias)
        self.proj = _Linear(ctx, block.proj.weight, block.proj.bias)

    def __call__(self, x):
        """Apply to ``(B, T, H, W, C)``."""
        b, t, h, w, c = x.shape
        qkv = self.qkv(_rms(x, self.gamma)).view(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.split(c, dim=-1)
        if self.ctx.counter is not None:
            self.ctx.counter.add(4 * b * t * (h * w) ** 2 * c)
        out = F.scaled_dot_product_attention(q, k, v).view(b, t, h, w, c)
        return self.proj(out).add_(x)


class _Downsample:
    """``WanResample`` downsample2d/3d: zero pad right/bottom, 3x3 stride 2, then (3d) time."""

    def __init__(self, ctx, block):
        self.ctx = ctx
        conv = block.resample[1]
        self.spatial = _Conv2d(ctx, conv.weight, conv.bias, stride=2, padding=0)
        self.time = None
        if block.mode == 'downsample3d':
            weight = block.time_conv.weight
            self.time = [_Linear(ctx, weight[:, :, k], block.time_conv.bias if k == 2 else None)
                         for k in range(3)]

    def __call__(self, x):
        """Apply to ``(B, T, H+1, W+1, C)`` (already padded by the residual block before)."""
        y = self.spatial(x)
        if self.time is None:
            return y
        state = self.ctx.state
        past = None if state is None else state.get(self)
        if state is not None:
            state[self] = y[:, -1:].clone()
        if past is None:  # the window's start: frame 0 passes
            if y.shape[1] == 1:
                return y
            return torch.cat([y[:, :1], self._stride2(y)], dim=1)
        # A later chunk (an even number of frames): the windows continue from the last frame.
        return self._stride2(torch.cat([past, y], dim=1))

    def _stride2(self, z):
        """Frames ``(z[2j-2], z[2j-1], z[2j])`` -> output ``j`` for j = 1.. (odd length)."""
        timed = self.time[2](z[:, 2::2])
        timed += self.time[1](z[:, 1:-1:2])
        timed += self.time[0](z[:, 0:-2:2])
        return timed


class _Upsample:
    """``WanResample`` upsample2d/3d: (3d) time conv doubling frames 1.., nearest x2, 3x3."""

    def __init__(self, ctx, block):
        self.ctx = ctx
        conv = block.resample[1]
        self.spatial = _Conv2d(ctx, conv.weight, conv.bias, stride=1, padding=1)
        self.time = None
        if block.mode == 'upsample3d':
            weight = block.time_conv.weight
            if tuple(weight.shape[2:]) != (3, 1, 1):
                raise UnsupportedVAE(f'time_conv kernel {tuple(weight.shape[2:])} != 3x1x1')
            self.time = [_Linear(ctx, weight[:, :, k], block.time_conv.bias if k == 2 else None)
                         for k in range(3)]

    def __call__(self, x):
        """Apply to ``(B, T, H, W, C)``; return ``(B, T', 2H, 2W, C')``."""
        b, t, h, w, c = x.shape
        if self.time is None:
            up = x.new_empty(b, t, 2 * h, 2 * w, c)
            up.view(b, t, h, 2, w, 2, c).copy_(x[:, :, :, None, :, None, :].expand(
                b, t, h, 2, w, 2, c))
            return self.spatial(up)
        state = self.ctx.state
        started, past = (False, None) if state is None else state.get(self, (False, None))
        head = 0 if started else 1  # frame 0 of the window passes without the time conv
        rest = x[:, head:]
        n = t - head
        if state is not None:
            state[self] = (True, past if n == 0 else _keep_last_two(past, rest))
        up = x.new_empty(b, head + 2 * n, 2 * h, 2 * w, c)
        if head:
            up[:, :1].view(b, 1, h, 2, w, 2, c).copy_(
                x[:, :1, :, None, :, None, :].expand(b, 1, h, 2, w, 2, c))
        if n:
            # (b, n, h, w, 2c): channels [even frame | odd frame], causal over frames 1..
            timed = self.time[2](rest)
            _causal_sum(timed.transpose(0, 1), rest.transpose(0, 1), self.time,
                        None if past is None else past.transpose(0, 1),
                        lambda frames, tap: tap(frames))
            source = timed.view(b, n, h, w, 2, c).permute(0, 1, 4, 2, 3, 5)  # (b, n, 2, ..)
            up[:, head:].view(b, n, 2, h, 2, w, 2, c).copy_(
                source[:, :, :, :, None, :, None, :].expand(b, n, 2, h, 2, w, 2, c))
        return self.spatial(up)


def _check_config(vae):
    config = vae.config
    if getattr(config, 'is_residual', False):
        raise UnsupportedVAE('is_residual=True (the Wan2.2 VAE layout)')
    if getattr(config, 'patch_size', None) is not None:
        raise UnsupportedVAE(f'patch_size={config.patch_size}')
    for name in ('encoder', 'decoder', 'quant_conv', 'post_quant_conv'):
        if not hasattr(vae, name):
            raise UnsupportedVAE(f'no {name} module')


class FastWanVAE:
    """Encode/decode with a diffusers ``AutoencoderKLWan``'s weights, whole window at once.

    ``encode`` returns the posterior mean (``latent_dist.mean``), ``decode`` the clamped
    sample; with ``latents_mean``/``latents_std`` both work on DVD's normalised latents.
    """

    def __init__(self, vae, latents_mean=None, latents_std=None, temporal='taps'):
        """Build the executor from ``vae`` (its current device and dtype).

        :param vae: a diffusers ``AutoencoderKLWan`` (Wan2.1 layout).
        :param latents_mean: per-channel latent mean (16 floats) to normalise with, or None.
        :param latents_std: per-channel latent std, given together with ``latents_mean``.
        :param temporal: 'taps' (three 2-D convolutions per causal layer, the default) or
            'conv3d' (one ``conv3d`` over a zero-fronted buffer).
        :raises UnsupportedVAE: a configuration this executor does not implement.
        :raises ValueError: unknown ``temporal`` or only one of mean/std.
        """
        if temporal not in TEMPORAL_MODES:
            raise ValueError(f'unknown temporal mode {temporal!r}; choose taps or conv3d')
        if (latents_mean is None) != (latents_std is None):
            raise ValueError('give latents_mean and latents_std together (or neither)')
        _check_config(vae)
        self.temporal = temporal
        self.ctx = _Context()
        param = next(vae.parameters())
        self.dtype, self.device = param.dtype, param.device
        with torch.no_grad():
            self._build_encoder(vae, latents_mean, latents_std)
            self._build_decoder(vae, latents_mean, latents_std)

    # ------------------------------------------------------------------ construction

    def _layers(self, modules):
        layers = []
        for module in modules:
            kind = type(module).__name__
            if kind == 'WanResidualBlock':
                layers.append(_Residual(self.ctx, module, self.temporal))
            elif kind == 'WanAttentionBlock':
                layers.append(_Attention(self.ctx, module))
            elif kind == 'WanResample' and module.mode.startswith('downsample'):
                if not layers or not isinstance(layers[-1], _Residual):
                    raise UnsupportedVAE('a downsampler not preceded by a residual block')
                layers[-1].pad_output = True
                layers.append(_Downsample(self.ctx, module))
            elif kind == 'WanResample' and module.mode.startswith('upsample'):
                layers.append(_Upsample(self.ctx, module))
            elif kind == 'WanMidBlock':
                layers.append(_Residual(self.ctx, module.resnets[0], self.temporal))
                for attn, resnet in zip(module.attentions, module.resnets[1:]):
                    if attn is not None:
                        layers.append(_Attention(self.ctx, attn))
                    layers.append(_Residual(self.ctx, resnet, self.temporal))
            elif kind == 'WanUpBlock':
                layers.extend(self._layers(module.resnets))
                if module.upsamplers is not None:
                    layers.extend(self._layers(module.upsamplers))
            else:
                raise UnsupportedVAE(f'layer {kind}')
        return layers

    def _build_encoder(self, vae, mean, std):
        enc = vae.encoder
        self.enc_in = _CausalConv(self.ctx, enc.conv_in.weight, enc.conv_in.bias, self.temporal)
        self.enc_layers = self._layers([*enc.down_blocks, enc.mid_block])
        self.enc_gamma = _gamma(enc.norm_out)
        # conv_out, then the mean rows of quant_conv, then (x - mean) / std: one convolution.
        z_dim = vae.quant_conv.weight.shape[0] // 2
        quant = vae.quant_conv.weight.detach().double().reshape(2 * z_dim, -1)[:z_dim]
        weight = torch.einsum('zo,oitkl->zitkl', quant, enc.conv_out.weight.detach().double())
        bias = quant @ enc.conv_out.bias.detach().double() + vae.quant_conv.bias.detach().double()[
            :z_dim]
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float64, device=weight.device)
            std = torch.as_tensor(std, dtype=torch.float64, device=weight.device)
            weight = weight / std.view(-1, 1, 1, 1, 1)
            bias = (bias - mean) / std
        self.enc_out = _CausalConv(self.ctx, weight.to(self.dtype), bias.to(self.dtype),
                                   self.temporal)
        self.z_dim = z_dim

    def _build_decoder(self, vae, mean, std):
        dec = vae.decoder
        weight = vae.post_quant_conv.weight.detach().double().reshape(self.z_dim, self.z_dim)
        bias = vae.post_quant_conv.bias.detach().double()
        if mean is not None:
            mean = torch.as_tensor(mean, dtype=torch.float64, device=weight.device)
            std = torch.as_tensor(std, dtype=torch.float64, device=weight.device)
            bias = bias + weight @ mean
            weight = weight * std.view(1, -1)
        self.post_quant = _Linear(self.ctx, weight.to(self.dtype), bias.to(self.dtype))
        self.dec_in = _CausalConv(self.ctx, dec.conv_in.weight, dec.conv_in.bias, self.temporal)
        self.dec_layers = self._layers([dec.mid_block, *dec.up_blocks])
        self.dec_gamma = _gamma(dec.norm_out)
        self.dec_out = _CausalConv(self.ctx, dec.conv_out.weight, dec.conv_out.bias,
                                   self.temporal)

    # ------------------------------------------------------------------ execution

    def _to_physical(self, x, what):
        if x.ndim != 5:
            raise ValueError(f'{what} must be (B, C, T, H, W), got {tuple(x.shape)}')
        x = x.to(device=self.device, dtype=self.dtype)
        return x.permute(0, 2, 3, 4, 1).contiguous()

    @torch.inference_mode()
    def encode(self, video, chunk_frames=None):
        """Encode ``(B, 3, T, H, W)`` in [-1, 1] (H, W multiples of 8) to ``(B, 16, T', h, w)``.

        :param chunk_frames: None (the default) = the whole window in one pass; else at
            most this many frames per pass (frame 0 with ``4k`` more, then ``4k`` frames,
            ``k = max(1, chunk_frames // 4)``), carrying the causal history from chunk to
            chunk: the same numbers with less memory.
        :return: the posterior mean (normalised when built with latent statistics), a
            channels-last view in the VAE's dtype.
        """
        x = self._to_physical(video, 'video')
        usable = 1 + 4 * ((x.shape[1] - 1) // 4)  # diffusers drops a ragged tail
        step = 4 * max(1, int(chunk_frames) // 4) if chunk_frames else usable
        bounds = [0, *range(1 + 4 * ((min(step, usable) - 1) // 4), usable, step), usable]
        return self._chunked(self._encode, x, sorted(set(bounds)))

    def _encode(self, x):
        x = self.enc_in(x)
        for layer in self.enc_layers:
            x = layer(x)
        return self.enc_out(_norm_silu(x, self.enc_gamma))

    @torch.inference_mode()
    def decode(self, latents, chunk_frames=None):
        """Decode ``(B, 16, T', h, w)`` latents to ``(B, 3, 1 + 4 (T' - 1), 8h, 8w)`` in [-1, 1].

        :param chunk_frames: None = the whole window in one pass; else at most this many
            latent frames per pass, with the causal history carried over (less memory).
        :return: a channels-last view in the VAE's dtype, clamped like diffusers' sample.
        """
        x = self._to_physical(latents, 'latents')
        count = x.shape[1]
        step = max(1, int(chunk_frames)) if chunk_frames else count
        return self._chunked(self._decode, x, [*range(0, count, step), count])

    def _decode(self, x):
        x = self.dec_in(self.post_quant(x))
        for layer in self.dec_layers:
            x = layer(x)
        return self.dec_out(_norm_silu(x, self.dec_gamma)).clamp_(-1.0, 1.0)

    def _chunked(self, run, x, bounds):
        """Run ``run`` over ``x[:, a:b]`` for consecutive bounds; frames concatenated."""
        if len(bounds) <= 2:
            return run(x[:, bounds[0]:bounds[-1]] if bounds[-1] != x.shape[1] else x).permute(
                0, 4, 1, 2, 3)
        self.ctx.state = {}
        try:
            parts = [run(x[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        finally:
            self.ctx.state = None
        return torch.cat(parts, dim=1).permute(0, 4, 1, 2, 3)

    def count_flops(self, stage, shape):
        """Count the FLOPs of ``stage`` ('encode'/'decode') for an input of ``shape``.

        Runs the stage on fake tensors (shapes only, no arithmetic), summing
        ``2 * MACs`` of every convolution, linear and attention product from their shapes.

        :param stage: 'encode' or 'decode'.
        :param shape: ``(B, C, T, H, W)`` of the stage's input.
        :return: FLOPs (int).
        """
        from torch._subclasses.fake_tensor import FakeTensorMode

        if stage not in ('encode', 'decode'):
            raise ValueError(f"stage must be 'encode' or 'decode', got {stage!r}")
        counter = FlopCounter()
        self.ctx.counter = counter
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                x = torch.empty(tuple(shape), dtype=self.dtype, device=self.device)
                getattr(self, stage)(x)
        finally:
            self.ctx.counter = None
        return counter.flops


def achieved_tflops(flops, seconds):
    """Return ``flops / seconds`` in TFLOP/s (NaN for a zero time)."""
    return flops / seconds / 1e12 if seconds > 0 else math.nan
