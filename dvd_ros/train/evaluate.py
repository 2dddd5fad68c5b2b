"""Evaluation protocol of the spec (1.6) on synthetic clips, and the baselines.

Per clip: one scale+shift fitted in *disparity* space over all valid pixels of all frames
jointly, aligned disparity clipped to >= 1e-3, inverted, clipped to the depth range; then
AbsRel and delta1 per frame, averaged over frames. Two video extras measured against ground
truth depth (possible here because the scenes are exact):

- boundary F1: occluding edges where neighbouring depths differ by more than 5 % (ratio 1.05)
  in the aligned prediction vs. in the ground truth, matched with 1 px tolerance;
- temporal flicker: RMS over valid pixels of (predicted - true) frame-to-frame relative depth
  change, ``(d[t+1] - d[t]) / d[t]`` (the spec's relative temporal difference).
"""

import numpy as np

from dvd_ros.errors import InputError

MIN_DEPTH, MAX_DEPTH = 0.1, 80.0


def fit_disparity_scale_shift(pred, gt_depth, valid):
    """Least-squares ``(s, b)`` with ``s * pred + b ~ 1 / gt_depth`` over ``valid`` (joint)."""
    p = pred[valid].astype(np.float64)
    g = 1.0 / gt_depth[valid].astype(np.float64)
    a = np.stack([p, np.ones_like(p)], 1)
    # lstsq gives the minimum-norm solution for a constant prediction (s*p + b = mean(g)).
    (s, b), *_ = np.linalg.lstsq(a, g, rcond=None)
    return float(s), float(b)


def aligned_depth(pred, gt_depth, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
    """Align (T, H, W) predicted disparity to ground truth depth -> (depth, valid, (s, b))."""
    pred = np.asarray(pred, dtype=np.float64)
    gt_depth = np.asarray(gt_depth, dtype=np.float64)
    if pred.shape != gt_depth.shape or pred.ndim != 3:
        raise InputError(f'pred and gt_depth must both be (T, H, W), got {pred.shape} and '
                         f'{gt_depth.shape}')
    range_mask = (gt_depth > min_depth) & (gt_depth < max_depth)
    valid = range_mask & (pred > 0)
    if not valid.reshape(len(pred), -1).any(axis=1).all():
        # The spec skips such sequences; a constant 0 prediction would always be skipped, so
        # fall back to the range mask (keeps baselines comparable).
        valid = range_mask
    s, b = fit_disparity_scale_shift(pred, gt_depth, valid)
    disp = np.maximum(s * pred + b, 1e-3)
    depth = np.clip(1.0 / disp, min_depth, max_depth)
    return np.maximum(depth, 1e-6), range_mask, (s, b)


def _edges(depth, ratio):
    """Boolean (H, W) occluding-edge map: a neighbour (right/down) differs by > ``ratio``."""
    e = np.zeros(depth.shape, dtype=bool)
    rx = np.maximum(depth[:, 1:] / depth[:, :-1], depth[:, :-1] / depth[:, 1:]) > ratio
    ry = np.maximum(depth[1:] / depth[:-1], depth[:-1] / depth[1:]) > ratio
    e[:, :-1] |= rx
    e[:, 1:] |= rx
    e[:-1] |= ry
    e[1:] |= ry
    return e


def _dilate(mask):
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


def boundary_f1(depth, gt_depth, ratio=1.05):
    """Mean over frames of the F1 between predicted and true occluding edges (1 px tolerance)."""
    scores = []
    for d, g in zip(depth, gt_depth):
        ep, eg = _edges(d, ratio), _edges(g, ratio)
        if not eg.any():
            continue
        precision = (ep & _dilate(eg)).sum() / max(ep.sum(), 1)
        recall = (eg & _dilate(ep)).sum() / eg.sum()
        scores.append(0.0 if precision + recall == 0 else
                      2 * precision * recall / (precision + recall))
    return float(np.mean(scores)) if scores else float('nan')


def temporal_flicker(depth, gt_depth, valid):
    """RMS of (predicted - true) relative frame-to-frame depth change over valid pixel pairs."""
    if len(depth) < 2:
        return float('nan')
    both = valid[1:] & valid[:-1]
    rp = (depth[1:] - depth[:-1]) / depth[:-1]
    rg = (gt_depth[1:] - gt_depth[:-1]) / gt_depth[:-1]
    return float(np.sqrt(np.mean((rp - rg)[both] ** 2)))


def evaluate_clip(pred, gt_depth, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH):
    """Compute the metrics of one clip -> dict(abs_rel, delta1, boundary_f1, flicker, s, b).

    :param pred: (T, H, W) predicted relative disparity (any affine scale)
    :param gt_depth: (T, H, W) ground truth depth, metres
    """
    gt = np.asarray(gt_depth, dtype=np.float64)
    depth, mask, (s, b) = aligned_depth(pred, gt, min_depth, max_depth)
    abs_rel, delta1 = [], []
    for d, g, m in zip(depth, gt, mask):
        abs_rel.append(np.mean(np.abs(d[m] - g[m]) / g[m]))
        delta1.append(np.mean(np.maximum(d[m] / g[m], g[m] / d[m]) < 1.25))
    return {'abs_rel': float(np.mean(abs_rel)), 'delta1': float(np.mean(delta1)),
            'boundary_f1': boundary_f1(depth, gt), 'flicker': temporal_flicker(depth, gt, mask),
            'scale': s, 'shift': b}


def held_out_clips(seeds, frames=9, height=64, width=96, stride=2, start=0):
    """Render evaluation clips -> list of (rgb (T, H, W, 3) uint8, depth (T, H, W) metres)."""
    from dvd_ros.synthetic import SyntheticScene

    return [SyntheticScene(s, height=height, width=width).clip(frames, start, stride)
            for s in seeds]


def evaluate(predict, clips, per_clip=False):
    """Mean metrics of ``predict(uint8 (T, H, W, 3)) -> (T, H, W)`` over ``clips``.

    :param per_clip: also return the list of per-clip metric dicts under ``'per_clip'``
    """
    rows = [evaluate_clip(np.asarray(predict(rgb)), depth) for rgb, depth in clips]
    keys = ('abs_rel', 'delta1', 'boundary_f1', 'flicker')
    out = {k: float(np.nanmean([r[k] for r in rows])) for k in keys} | {'clips': len(rows)}
    if per_clip:
        out['per_clip'] = rows
    return out


class MeanDisparity:
    """Baseline: a constant prediction (after alignment: the clip's mean true disparity)."""

    def predict(self, frames):
        """Return (T, H, W) float32 ones for (T, H, W, 3) frames."""
        return np.ones(np.asarray(frames).shape[:3], dtype=np.float32)

    __call__ = predict


class LatentPredictor:
    """Minimal DVD inference at the training size: encode, one DiT pass, decode, channel mean.

    Used for training-time evaluation (the trained network, the untrained network, the
    ablation arms) without going through the packaged loader.
    """

    def __init__(self, vae, transformer, latents_mean, latents_std):
        self.vae, self.transformer = vae.eval(), transformer.eval()
        self.mean, self.std = latents_mean, latents_std

    def predict(self, frames):
        """Map (T, H, W, 3) uint8 (T = 4n+1, H, W multiples of 16) -> (T, H, W) in [0, 1]."""
        import torch

        from dvd_ros.train import latent
        from dvd_ros.train.targets import rgb_video

        with torch.no_grad():
            x = torch.from_numpy(rgb_video(frames))[None]
            z = latent.encode(self.vae, x, self.mean, self.std)
            out = latent.decode(self.vae, latent.regress(self.transformer, z), self.mean,
                                self.std)
        d = ((out[0] + 1) / 2).clamp(0, 1).mean(0)
        return d.numpy().astype(np.float32)

    __call__ = predict
