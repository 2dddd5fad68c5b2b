"""DVD training losses in the normalised latent space (spec 3.2): MSE + LMR."""

import torch

LMR_WEIGHT = 0.5  # grad_co of the reference config


def _diff(x, dim):
    return x.narrow(dim, 1, x.shape[dim] - 1) - x.narrow(dim, 0, x.shape[dim] - 1)


def lmr_terms(pred, target):
    """Return the L1 finite-difference terms ``(L_t, L_h, L_w)`` for (B, C, T', h, w) latents.

    ``L_t`` is 0 when ``T' == 1`` (image batches have no temporal term).
    """
    zero = pred.new_zeros(())
    l_t = (_diff(pred, 2) - _diff(target, 2)).abs().mean() if pred.shape[2] > 1 else zero
    l_h = (_diff(pred, 3) - _diff(target, 3)).abs().mean() if pred.shape[3] > 1 else zero
    l_w = (_diff(pred, 4) - _diff(target, 4)).abs().mean() if pred.shape[4] > 1 else zero
    return l_t, l_h, l_w


def dvd_loss(pred, target, kind='full', weight=LMR_WEIGHT):
    """Compute the DVD loss ``mse + weight * (L_t + L_h + L_w)``; ``kind='l2'`` is MSE only.

    :param pred: (B, 16, T', h, w) predicted normalised latents
    :param target: same shape, the normalised latents of the disparity target
    :param kind: ``'full'`` (MSE + LMR, the paper) or ``'l2'`` (the ablation baseline)
    :return: (loss scalar tensor, dict of float terms for logging)
    """
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f'pred and target must be equal (B, C, T, h, w), got '
                         f'{tuple(pred.shape)} and {tuple(target.shape)}')
    if kind not in ('full', 'l2'):
        raise ValueError(f"loss kind must be 'full' or 'l2', got {kind!r}")
    mse = torch.mean((pred - target) ** 2)
    l_t, l_h, l_w = lmr_terms(pred, target)
    loss = mse + weight * (l_t + l_h + l_w) if kind == 'full' else mse
    logs = {'mse': mse, 'l_t': l_t, 'l_h': l_h, 'l_w': l_w, 'loss': loss}
    return loss, {k: float(v.detach()) for k, v in logs.items()}
