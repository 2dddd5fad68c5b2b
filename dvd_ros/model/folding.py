"""The three DVD stages as pure tensor -> tensor modules, with DVD's constants folded.

DVD calls the DiT with a fixed timestep (t = 500) and an all-zero text context
(DVD_SPEC.md §1.3). Both make large parts of the network constant (§5.5):

- ``temb``, ``t_mod`` (the six per-block modulation vectors) and the head's
  shift/scale do not depend on the video, so they are computed once;
- the context has identical rows, so every key of a cross-attention is the same,
  the softmax is uniform and each block's cross-attention output is the constant
  ``to_out(to_v(text_embedder(0)))``, independent of the video and of the context
  length.

``FoldedDiT`` therefore takes only the latents: no 512x4096 context input, no
timestep input, no cross-attention kernels. It shares (does not copy) the
parameters of the diffusers transformer it was built from, so LoRA-merged or
peft-wrapped linears keep working. ``VaeEncoderStage`` and ``VaeDecoderStage`` wrap
``AutoencoderKLWan`` into single-input modules including DVD's latent
normalisation, which diffusers leaves outside the VAE.

The modules are written so the TorchScript ONNX exporter can trace them: RMSNorm
is spelled out (``aten::rms_norm`` has no ONNX symbolic) and the rotary embedding
is applied without in-place strided writes. The arithmetic is the same as in
diffusers; tests measure the difference (< 1e-5 in float32).
"""

import contextlib

import torch
from torch import nn
import torch.nn.functional as F

# t = 1000 * denoise_step with denoise_step = 0.5 (DVD_SPEC.md §1.3).
DVD_TIMESTEP = 500.0
LATENT_CHANNELS = 16


class FoldedBlock(nn.Module):
    """One Wan transformer block with its modulation and cross-attention folded to constants."""

    def __init__(self, block, modulation, cross):
        """Wrap ``block`` (a diffusers ``WanTransformerBlock``).

        :param block: the block whose self-attention and FFN weights are shared.
        :param modulation: ``(1, 6, dim)`` float32, ``scale_shift_table + t_mod``.
        :param cross: ``(1, 1, dim)`` constant cross-attention output.
        """
        super().__init__()
        attn = block.attn1
        self.heads = attn.heads
        self.to_q, self.to_k, self.to_v = attn.to_q, attn.to_k, attn.to_v
        self.to_out = attn.to_out[0]
        self.q_weight, self.k_weight = attn.norm_q.weight, attn.norm_k.weight
        self.q_eps = attn.norm_q.eps if attn.norm_q.eps is not None else 1e-6
        self.k_eps = attn.norm_k.eps if attn.norm_k.eps is not None else 1e-6
        self.norm1, self.norm3, self.ffn = block.norm1, block.norm3, block.ffn
        self.register_buffer('modulation', modulation.detach().clone(), persistent=False)
        self.register_buffer('cross', cross.detach().clone(), persistent=False)

    @staticmethod
    def _rms_norm(x, weight, eps):
        # Same formula as torch.nn.RMSNorm; spelled out because aten::rms_norm cannot be
        # exported to ONNX by the TorchScript exporter.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (out * weight.float()).type_as(x)

    @staticmethod
    def _rotate(x, cos, sin):
        # Interleaved-pair rotation, the arithmetic of diffusers' apply_rotary_emb.
        x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return out.flatten(-2).type_as(x)

    def _self_attention(self, x, cos, sin):
        q = self._rms_norm(self.to_q(x), self.q_weight, self.q_eps)
        k = self._rms_norm(self.to_k(x), self.k_weight, self.k_eps)
        v = self.to_v(x)
        q, k, v = (t.unflatten(2, (self.heads, -1)) for t in (q, k, v))
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.to_out(out.transpose(1, 2).flatten(2, 3).type_as(q))

    def forward(self, x, cos, sin):
        """Run the block on tokens ``x`` ``(1, N, dim)`` with rotary tables ``(1, N, 1, d/2)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation.chunk(6, dim=1)
        h = (self.norm1(x.float()) * (1 + scale1) + shift1).type_as(x)
        x = (x.float() + self._self_attention(h, cos, sin) * gate1).type_as(x)
        x = x + self.cross.to(x.dtype)
        h = (self.norm3(x.float()) * (1 + scale2) + shift2).type_as(x)
        return (x.float() + self.ffn(h).float() * gate2).type_as(x)


class FoldedDiT(nn.Module):
    """DVD's single DiT pass with t = 500 and the zero context folded in: latents -> latents."""

    def __init__(self, transformer, timestep=DVD_TIMESTEP):
        """Fold the constants of a diffusers ``WanTransformer3DModel``.

        :param transformer: the (LoRA-merged) DVD transformer; parameters are shared.
        :param timestep: the fixed timestep (DVD uses 500).
        """
        super().__init__()
        config = transformer.config
        if getattr(config, 'image_dim', None) is not None or \
                getattr(config, 'added_kv_proj_dim', None) is not None:
            raise ValueError('FoldedDiT supports the text-to-video Wan DiT only (DVD has no '
                             f'image branch), got image_dim={config.image_dim}')
        self.patch_size = tuple(config.patch_size)
        self.rope = transformer.rope
        self.patch_embedding = transformer.patch_embedding
        self.norm_out = transformer.norm_out
        self.proj_out = transformer.proj_out
        modulations, crosses, head = fold_constants(transformer, timestep)
        self.blocks = nn.ModuleList(
            FoldedBlock(block, mod, cross)
            for block, mod, cross in zip(transformer.blocks, modulations, crosses))
        self.register_buffer('head_modulation', head, persistent=False)

    def forward(self, latents):
        """Map normalised latents ``(1, 16, T', h, w)`` to depth latents of the same shape."""
        _, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.patch_size
        cos, sin = self.rope(latents)
        # The rotation uses the even cos and odd sin entries (pairs are repeated).
        cos, sin = cos[..., 0::2], sin[..., 1::2]
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2).contiguous()
        for block in self.blocks:
            x = block(x, cos, sin)
        shift, scale = self.head_modulation.chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(1, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)


@torch.no_grad()
def fold_constants(transformer, timestep=DVD_TIMESTEP):
    """Compute DVD's constant tensors of a diffusers ``WanTransformer3DModel``.

    :param transformer: the transformer (any dtype/device).
    :param timestep: the fixed timestep.
    :return: ``(modulations, crosses, head)``: per block ``(1, 6, dim)`` float32
        ``scale_shift_table + t_mod``; per block ``(1, 1, dim)`` constant cross-attention
        output (transformer dtype); ``(1, 2, dim)`` float32 head shift/scale.
    """
    embedder = transformer.condition_embedder
    param = next(transformer.parameters())
    t = torch.tensor([timestep], device=param.device, dtype=torch.float32)
    # One zero context row is enough: every row is identical, so the softmax over any
    # number of them averages identical values.
    context = torch.zeros(1, 1, embedder.text_embedder.linear_1.in_features,
                          device=param.device, dtype=param.dtype)
    temb, t_mod, embedded, _ = embedder(t, context)
    t_mod = t_mod.unflatten(1, (6, -1))
    modulations, crosses = [], []
    for block in transformer.blocks:
        modulations.append((block.scale_shift_table + t_mod.float()).float())
        attn = block.attn2
        crosses.append(attn.to_out[0](attn.to_v(embedded)))
    head = (transformer.scale_shift_table + temb.unsqueeze(1)).float()
    return modulations, crosses, head


def _normalisation(models, reference):
    mean = torch.as_tensor(models.latents_mean, dtype=torch.float32, device=reference.device)
    std = torch.as_tensor(models.latents_std, dtype=torch.float32, device=reference.device)
    return mean.view(1, -1, 1, 1, 1), std.view(1, -1, 1, 1, 1)


class VaeEncoderStage(nn.Module):
    """Video ``(1, 3, T, H, W)`` in [-1, 1] -> normalised latents ``(1, 16, T', H/8, W/8)``."""

    def __init__(self, models):
        """Wrap ``models.vae`` with DVD's posterior mean and latent normalisation.

        :param models: a ``DVDModels`` (``vae``, ``latents_mean``, ``latents_std``).
        """
        super().__init__()
        self.vae = models.vae
        param = next(self.vae.parameters())
        mean, std = _normalisation(models, param)
        self.register_buffer('mean', mean, persistent=False)
        self.register_buffer('inv_std', 1.0 / std, persistent=False)

    def forward(self, video):
        """Encode (no tiling, causal chunks of 1 + 4k frames), keep the mean, normalise."""
        moments = self.vae._encode(video)
        mu = moments[:, :LATENT_CHANNELS]
        return ((mu.float() - self.mean) * self.inv_std).to(video.dtype)


class VaeDecoderStage(nn.Module):
    """Normalised latents ``(1, 16, T', h, w)`` -> video ``(1, 3, 4T'-3, 8h, 8w)`` in [-1, 1]."""

    def __init__(self, models):
        """Wrap ``models.vae`` with DVD's latent de-normalisation.

        :param models: a ``DVDModels`` (``vae``, ``latents_mean``, ``latents_std``).
        """
        super().__init__()
        self.vae = models.vae
        param = next(self.vae.parameters())
        mean, std = _normalisation(models, param)
        self.register_buffer('mean', mean, persistent=False)
        self.register_buffer('std', std, persistent=False)

    def forward(self, latents):
        """De-normalise, decode latent frame by latent frame, clamp to [-1, 1]."""
        z = (latents.float() * self.std + self.mean).to(latents.dtype)
        return self.vae._decode(z).sample


@contextlib.contextmanager
def onnx_compatible(module):
    """Temporarily make ``module`` traceable by the TorchScript ONNX exporter, exactly.

    The Wan VAE upsamples with ``nearest-exact``, which has no ONNX symbolic; for the
    integer factor 2 it selects the same pixels as ``nearest``, so that mode is
    swapped in for the duration of the export. Tiling is switched off (DVD never
    tiles, and tiling would change the graph).
    """
    swapped = []
    for sub in module.modules():
        if isinstance(sub, nn.Upsample) and sub.mode == 'nearest-exact':
            factors = sub.scale_factor if isinstance(sub.scale_factor, tuple) \
                else (sub.scale_factor,)
            if factors[0] is not None and all(float(f).is_integer() for f in factors):
                swapped.append(sub)
                sub.mode = 'nearest'
    tiling = [(sub, sub.use_tiling) for sub in module.modules() if hasattr(sub, 'use_tiling')]
    for sub, _ in tiling:
        sub.use_tiling = False
    try:
        yield module
    finally:
        for sub in swapped:
            sub.mode = 'nearest-exact'
        for sub, value in tiling:
            sub.use_tiling = value


def latent_shape(window, height, width):
    """Return the latent shape ``(1, 16, T', h, w)`` of a window of ``height`` x ``width``.

    :param window: frames per window, ``4n + 1``.
    :param height: pixels, a multiple of 16.
    :param width: pixels, a multiple of 16.
    """
    return (1, LATENT_CHANNELS, (window - 1) // 4 + 1, height // 8, width // 8)
