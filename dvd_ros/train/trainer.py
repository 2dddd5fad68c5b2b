"""Training loops: the tiny Wan VAE autoencoder stage and the DVD DiT regression stage.

Both stages keep a resumable state (model, optimizer, scheduler, step, numpy and torch RNG) in
``<out>/state.pt``, written every ``save_every`` steps and at the end; ``resume=True`` continues
from it bit-exactly on the same machine.
"""

from dataclasses import asdict, dataclass, field
import json
import math
from pathlib import Path
import time

import numpy as np
import torch

from dvd_ros.errors import InputError
from dvd_ros.train import latent
from dvd_ros.train.data import JointSampler
from dvd_ros.train.losses import dvd_loss
from dvd_ros.train.targets import normalized_disparity, rgb_video, target_video

# Small Wan VAE: same architecture as Wan2.1 (causal 3D convs, RMS norms, 8x spatial / 4x
# temporal), narrower and with one residual block per level so it trains on one CPU thread.
TINY_VAE_CONFIG = {'base_dim': 16, 'z_dim': 16, 'dim_mult': [1, 2, 4, 4], 'num_res_blocks': 1,
                   'attn_scales': [], 'temperal_downsample': [False, True, True], 'dropout': 0.0}
# Small Wan DiT: same block structure as Wan2.1-T2V-1.3B; head dim 32 keeps the RoPE split
# (head_dim // 3 even) identical between the reference and diffusers (spec 4.3 caveat).
TINY_DIT_CONFIG = {'patch_size': [1, 2, 2], 'num_attention_heads': 4, 'attention_head_dim': 32,
                   'in_channels': 16, 'out_channels': 16, 'text_dim': 32, 'freq_dim': 64,
                   'ffn_dim': 512, 'num_layers': 6, 'cross_attn_norm': True,
                   'qk_norm': 'rms_norm_across_heads', 'eps': 1e-6, 'image_dim': None,
                   'added_kv_proj_dim': None, 'rope_max_seq_len': 1024}


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (stored in the state and the checkpoint meta)."""

    stage: str = 'dit'  # 'vae', 'dit', 'joint' (DiT + VAE decoder) or 'decoder' (decoder only)
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    warmup: int = 5  # ConstantLR(factor 1/3) for the first steps, as the reference
    cosine: bool = False  # decay to 10 % (used for the from-scratch tiny stages)
    video_frames: int | list = 5  # one length, or several (drawn per video batch)
    image_batch: int = 8
    video_batch: int = 2
    image_weight: float = 1 / 6
    loss: str = 'full'
    pixel_weight: float = 1.0  # stage 'joint': weight of the decoded-disparity loss
    edge_weight: float = 1.0  # stages 'joint'/'decoder': weight of the edge terms of pixel_loss
    pred_fraction: float = 0.5  # stage 'decoder': share of samples decoded from DiT predictions
    seed: int = 0
    save_every: int = 200
    extra: dict = field(default_factory=dict)


def lr_factor(cfg, step):
    """Return the learning-rate multiplier at optimizer ``step`` (0-based)."""
    f = 1.0 / 3.0 if step < cfg.warmup else 1.0
    if cfg.cosine:
        f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / max(cfg.steps, 1), 1.0)))
    return f


def _batch(bank, draw):
    """Assemble (rgb (B, 3, T, H, W), disparity target (B, 3, T, H, W)) tensors in [-1, 1]."""
    rgbs, tgts = [], []
    for k, start, length in draw:
        rgbs.append(rgb_video(bank.rgb[k, start:start + length]))
        # Percentiles over the frames actually used, jointly (an image uses its own frame).
        tgts.append(target_video(normalized_disparity(bank.depth[k, start:start + length])))
    return torch.from_numpy(np.stack(rgbs)), torch.from_numpy(np.stack(tgts))


def pixel_loss(pred, target, edge_weight=1.0):
    """L1 on decoded disparity plus L1 on its spatial forward differences (sharp edges).

    :param pred: (B, T, H, W) decoded disparity in [-1, 1] (channel mean)
    :param target: same shape, the target
    :param edge_weight: weight of the two difference terms
    :return: scalar tensor
    """
    def grad(x, dim):
        return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)

    edges = ((grad(pred, 2) - grad(target, 2)).abs().mean()
             + (grad(pred, 3) - grad(target, 3)).abs().mean())
    return (pred - target).abs().mean() + edge_weight * edges


class Trainer:
    """Run one training stage with a resumable state.

    :param cfg: TrainConfig
    :param bank: ClipBank with the training clips
    :param out_dir: directory for ``state.pt``, ``log.jsonl`` and results
    :param vae: diffusers AutoencoderKLWan (trained in stage 'vae', frozen in stage 'dit'; its
        decoder trains in stages 'joint' and 'decoder')
    :param transformer: WanTransformer3DModel (stages 'dit', 'joint'; frozen in 'decoder'); may
        be LoRA-wrapped
    :param latents_mean: 16 floats (stage 'dit')
    :param latents_std: 16 floats (stage 'dit')
    :param latents: precomputed LatentBank of ``bank`` (stage 'dit'; encoded here if None)
    """

    def __init__(self, cfg, bank, out_dir, vae, transformer=None, latents_mean=None,
                 latents_std=None, latents=None):
        if cfg.stage not in ('vae', 'dit', 'joint', 'decoder'):
            raise InputError(f"stage must be 'vae', 'dit', 'joint' or 'decoder', got "
                             f"{cfg.stage!r}")
        if not 0.0 <= cfg.pred_fraction <= 1.0:
            raise InputError(f'pred_fraction must be in [0, 1], got {cfg.pred_fraction}')
        if cfg.stage != 'vae' and (transformer is None or latents_mean is None):
            raise InputError(f'the {cfg.stage} stage needs a transformer and latents_mean/std')
        self.cfg, self.bank, self.out = cfg, bank, Path(out_dir)
        self.vae, self.transformer = vae, transformer
        self.mean, self.std = latents_mean, latents_std
        self.model = vae if cfg.stage == 'vae' else transformer
        if cfg.stage != 'vae':
            vae.requires_grad_(False)
            vae.eval()
        if cfg.stage in ('joint', 'decoder'):
            # The encoder stays frozen (its latents are cached); the decoder only ever decodes
            # depth at inference, so it is specialised to the DiT's predictions here.
            vae.decoder.requires_grad_(True)
            vae.post_quant_conv.requires_grad_(True)
            parts = {'decoder': vae.decoder, 'post_quant_conv': vae.post_quant_conv}
            if cfg.stage == 'joint':
                parts = {'transformer': transformer, **parts}
            else:
                # Stage 'decoder': the DiT is frozen and only predicts (a forward pass without
                # gradients), so a step costs the decoder alone.
                transformer.requires_grad_(False)
                transformer.eval()
            self.model = torch.nn.ModuleDict(parts)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise InputError('no trainable parameters (all frozen)')
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.betas),
                                     weight_decay=cfg.weight_decay)
        self.latents = None
        frames = bank.rgb.shape[1]
        if cfg.stage != 'vae':
            self.latents = latents if latents is not None else LatentBank.encode(
                vae, bank, latents_mean, latents_std, cfg.video_frames)
            frames = max(np.atleast_1d(cfg.video_frames))
        self.sampler = JointSampler(len(bank), frames, cfg.video_frames, cfg.image_batch,
                                    cfg.video_batch, cfg.image_weight,
                                    rng=np.random.default_rng(cfg.seed),
                                    image_first_frame=cfg.stage != 'vae')
        self.step = 0
        self.seconds = 0.0

    # -- state ---------------------------------------------------------------------------
    def state_dict(self):
        """Return everything needed to resume: weights, optimizer, step, RNG states."""
        trainable = {n: p.detach().clone() for n, p in self.model.named_parameters()
                     if p.requires_grad}
        return {'cfg': asdict(self.cfg), 'step': self.step, 'seconds': self.seconds,
                'trainable': trainable, 'optimizer': self.opt.state_dict(),
                'numpy_rng': self.sampler.rng.bit_generator.state,
                'torch_rng': torch.get_rng_state()}

    def save_state(self):
        """Write ``state.pt`` atomically."""
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / 'state.pt.tmp'
        torch.save(self.state_dict(), tmp)
        tmp.replace(self.out / 'state.pt')

    def load_state(self, path=None):
        """Resume from ``state.pt`` (default: in ``out_dir``)."""
        path = Path(path or self.out / 'state.pt')
        if not path.is_file():
            raise InputError(f'no training state at {path}; start without --resume')
        state = torch.load(path, map_location='cpu', weights_only=False)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state['trainable'].items():
                params[name].copy_(value)
        self.opt.load_state_dict(state['optimizer'])
        self.sampler.rng.bit_generator.state = state['numpy_rng']
        torch.set_rng_state(state['torch_rng'])
        self.step, self.seconds = int(state['step']), float(state['seconds'])

    # -- steps ---------------------------------------------------------------------------
    def loss_on(self, draw):
        """Compute the stage loss on one drawn batch -> (loss, logs)."""
        if self.cfg.stage == 'vae':
            rgb, tgt = _batch(self.bank, draw)
            video = torch.cat([rgb, tgt], 0)
            mu = self.vae.encode(video).latent_dist.mode()
            rec = self.vae.decode(mu).sample
            l1 = (rec - video).abs().mean()
            mse = ((rec - video) ** 2).mean()
            # A weak pull on the posterior mean keeps the latent scale bounded (no sampling).
            reg = 1e-4 * (mu ** 2).mean()
            loss = l1 + mse + reg
            return loss, {'l1': l1.item(), 'mse': mse.item(), 'loss': loss.item()}
        z_rgb, z_tgt = self.latents.batch(draw)
        if self.cfg.stage == 'decoder':
            return self._decoder_loss(draw, z_rgb, z_tgt)
        pred = latent.regress(self.transformer, z_rgb)
        loss, logs = dvd_loss(pred, z_tgt, kind=self.cfg.loss)
        if self.cfg.stage == 'joint':
            _, tgt = _batch(self.bank, draw)
            mu = pred * latent.stats_like(self.std, pred) + latent.stats_like(self.mean, pred)
            disparity = self.vae.decode(mu).sample.mean(1)  # channel mean, as at inference
            pixel = pixel_loss(disparity, tgt[:, 0], self.cfg.edge_weight)
            loss = loss + self.cfg.pixel_weight * pixel
            logs.update(pixel=float(pixel.detach()), loss=float(loss.detach()))
        return loss, logs

    def _decoder_loss(self, draw, z_rgb, z_tgt):
        """Return the stage 'decoder' loss on one batch -> (loss, logs).

        A ``pred_fraction`` share of the samples decodes the DiT's predictions, the rest the
        encoded targets; both are compared with the target disparity. The predictions teach
        the decoder to sharpen what the DiT actually outputs; the encoded targets keep it a
        faithful decoder of the latent space the DiT was trained on.
        """
        with torch.no_grad():
            pred = latent.regress(self.transformer, z_rgb)
        use_pred = torch.rand(len(draw)) < self.cfg.pred_fraction  # torch RNG: in the state
        z = torch.where(use_pred.view(-1, 1, 1, 1, 1), pred, z_tgt)
        _, tgt = _batch(self.bank, draw)
        mu = z * latent.stats_like(self.std, z) + latent.stats_like(self.mean, z)
        disparity = self.vae.decode(mu).sample.mean(1)  # channel mean, as at inference
        loss = pixel_loss(disparity, tgt[:, 0], self.cfg.edge_weight)
        l1 = (disparity.detach() - tgt[:, 0]).abs().mean()
        return loss, {'l1': float(l1), 'pixel': float(loss.detach()), 'loss': float(loss.detach()),
                      'pred_share': float(use_pred.float().mean())}

    def train_step(self):
        """Run one optimizer step; returns the log dict."""
        self.model.train()
        for g in self.opt.param_groups:
            g['lr'] = self.cfg.lr * lr_factor(self.cfg, self.step)
        loss, logs = self.loss_on(self.sampler.draw())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        logs['grad_norm'] = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip))
        self.opt.step()
        self.step += 1
        return logs

    def run(self, progress=True, log_every=10):
        """Train until ``cfg.steps``; saves state periodically and at the end."""
        from tqdm import tqdm
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not progress,
                   desc=f'train {self.cfg.stage}', unit='step', mininterval=5)
        with open(self.out / 'log.jsonl', 'a') as log:
            while self.step < self.cfg.steps:
                t0 = time.perf_counter()
                logs = self.train_step()
                self.seconds += time.perf_counter() - t0
                bar.update(1)
                if self.step % log_every == 0 or self.step == self.cfg.steps:
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                    log.write(json.dumps({'step': self.step, 'seconds': round(self.seconds, 2),
                                          **logs}) + '\n')
                    log.flush()
                if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                    self.save_state()
        bar.close()


class LatentBank:
    """Normalised latents of a ClipBank under a frozen VAE, computed once (stage 'dit').

    Per clip and video length T: the latents of its first T frames (RGB and clip-normalised
    disparity target); plus the image target of frame 0 normalised on its own. The causal VAE
    encodes frame 0 alone, so the image RGB latent is the first latent frame of any video.
    """

    def __init__(self, videos, target_image):
        self.videos = videos  # {T: (rgb (N, 16, T', h, w), target (N, 16, T', h, w))}
        self.target_image = target_image

    @classmethod
    @torch.no_grad()
    def encode(cls, vae, bank, mean, std, frames, progress=False, chunk=16):
        """Encode every clip of ``bank`` at each length in ``frames`` -> LatentBank.

        Clips are encoded ``chunk`` at a time: the Wan VAE's per-frame Python loop dominates
        at these sizes, so batching amortises it.
        """
        from tqdm import tqdm

        lengths = [int(f) for f in np.atleast_1d(frames)]
        videos = {n: ([], []) for n in lengths}
        img = []
        for k0 in tqdm(range(0, len(bank), chunk), desc='encode', unit='chunk',
                       disable=not progress, mininterval=5):
            ks = range(k0, min(k0 + chunk, len(bank)))
            for n in lengths:
                videos[n][0].append(cls._rgb_latents(vae, bank, ks, n, mean, std))
                videos[n][1].append(cls._target_latents(vae, bank, ks, n, mean, std))
            img.append(cls._target_latents(vae, bank, ks, 1, mean, std))
        return cls({n: (torch.cat(r), torch.cat(t)) for n, (r, t) in videos.items()},
                   torch.cat(img))

    @staticmethod
    def _rgb_latents(vae, bank, ks, n, mean, std):
        """Latents of the first ``n`` RGB frames of clips ``ks``."""
        r = torch.from_numpy(np.stack([rgb_video(bank.rgb[k, :n]) for k in ks]))
        return latent.encode(vae, r, mean, std)

    @staticmethod
    def _target_latents(vae, bank, ks, n, mean, std):
        """Latents of the clip-normalised disparity targets of the first ``n`` frames."""
        t = torch.from_numpy(np.stack([
            target_video(normalized_disparity(bank.depth[k, :n])) for k in ks]))
        return latent.encode(vae, t, mean, std)

    @torch.no_grad()
    def check(self, vae, bank, mean, std, frames, path, atol=1e-3):
        """Raise InputError unless these latents (read from ``path``) are ``bank``'s under ``vae``.

        Counts and lengths are checked for every clip; the values by re-encoding the first and
        the last clip (a cache made by another VAE or of another bank differs by far more than
        the rounding of a different batch size).
        """
        fix = f'give --latents a new file name (the file {path} is left alone)'
        lengths = [int(f) for f in np.atleast_1d(frames)]
        missing = [n for n in lengths if n not in self.videos]
        if missing:
            raise InputError(f'the latent cache {path} has no {missing}-frame videos (it holds '
                             f'{sorted(self.videos)}); {fix}')
        counts = {len(self.target_image)} | {len(v[0]) for v in self.videos.values()}
        if counts != {len(bank)}:
            raise InputError(f'the latent cache {path} holds {sorted(counts)} clips, the bank '
                             f'{len(bank)}; {fix}')
        for k in sorted({0, len(bank) - 1}):
            pairs = [(self._target_latents(vae, bank, [k], 1, mean, std), self.target_image)]
            for n in lengths:
                pairs += [(self._rgb_latents(vae, bank, [k], n, mean, std), self.videos[n][0]),
                          (self._target_latents(vae, bank, [k], n, mean, std), self.videos[n][1])]
            for want, stored in pairs:
                have = stored[k:k + 1]
                if want.shape != have.shape or not torch.allclose(want, have, rtol=0, atol=atol):
                    raise InputError(f'the latent cache {path} does not match clip {k} of the '
                                     f'bank encoded by this VAE; {fix}')

    def save(self, path):
        """Write the latents to ``path`` (torch file) atomically (other runs may be waiting).

        The file is read back and compared before it replaces ``path``.
        """
        tmp = Path(str(path) + '.tmp')
        torch.save({'videos': self.videos, 'target_image': self.target_image}, tmp)
        back = LatentBank.load(tmp)
        if not (torch.equal(back.target_image, self.target_image) and back.videos.keys()
                == self.videos.keys() and all(torch.equal(a, b) for n in self.videos
                                              for a, b in zip(back.videos[n], self.videos[n]))):
            raise OSError(f'{tmp} does not read back as written; the disk may be full or '
                          'failing (the file was kept for inspection)')
        tmp.replace(path)

    @classmethod
    def load(cls, path):
        """Read latents written by ``save``."""
        d = torch.load(path, map_location='cpu')
        if 'videos' not in d:  # single-length files of the first version
            d['videos'] = {4 * d['rgb'].shape[2] - 3: (d['rgb'], d['target'])}
        return cls(d['videos'], d['target_image'])

    def batch(self, draw):
        """Return (RGB latents, target latents) (B, 16, T', h, w) for a JointSampler draw."""
        idx = torch.tensor([k for k, _, _ in draw])
        length = draw[0][2]
        if length == 1:
            rgb = next(iter(self.videos.values()))[0]
            return rgb[idx, :, :1], self.target_image[idx]
        rgb, target = self.videos[length]
        return rgb[idx], target[idx]


@torch.no_grad()
def latent_statistics(vae, bank, n_clips=64, frames=5):
    """Per-channel mean/std (16 floats each) of VAE posterior means over RGB and targets."""
    mus = []
    for k in range(min(n_clips, len(bank))):
        rgb = torch.from_numpy(rgb_video(bank.rgb[k, :frames]))[None]
        tgt = torch.from_numpy(target_video(normalized_disparity(bank.depth[k, :frames])))[None]
        mus.append(vae.encode(torch.cat([rgb, tgt])).latent_dist.mode())
    mu = torch.cat([m.transpose(0, 1).reshape(m.shape[1], -1) for m in mus], 1)
    return mu.mean(1).tolist(), mu.std(1).clamp_min(1e-3).tolist()
