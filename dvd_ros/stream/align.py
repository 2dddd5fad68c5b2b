"""Scale/shift alignment of depth windows in disparity space, and the reference stitching.

DVD outputs affine-normalised disparity per window (spec 1.5): each window has its own unknown
scale and shift. Consecutive windows are brought to a common scale by least squares over the
frames they share, then cross-faded (spec 2.1).
"""

from dataclasses import dataclass
import math

import numpy as np

from dvd_ros.errors import InputError

REFERENCE_SCALE_CLIP = (0.7, 1.5)
ROBUST_METHODS = ('huber', 'tukey', 'trim')

# Tuning constants of the robust losses (95 % efficiency under Gaussian noise).
_HUBER_K = 1.345
_TUKEY_C = 4.685
_MAD_TO_SIGMA = 1.4826
# Residual MADs are estimated on at most this many pixels (strided): a median over a whole
# 21 x 480 x 640 overlap costs more than the fit itself and the estimate does not need it.
_MAD_SAMPLES = 200_000
# Robust reweighting runs on a strided subsample of at most this many pixels.
_ROBUST_SAMPLES = 1 << 18
# Pixels per float64 chunk when summing moments (bounds temporaries to a few MB).
_CHUNK = 1 << 18


@dataclass(frozen=True)
class Alignment:
    """Result of a scale/shift fit ``y ~ scale * x + shift``.

    ``residual`` is the weighted RMS of ``scale * x + shift - y`` over the pixels used (after
    clipping, when :func:`clip_scale` produced it); ``n`` counts those pixels; ``degenerate``
    says the system had no unique solution and the identity was returned; ``clipped`` says the
    scale was clipped; ``inlier_fraction`` is the share of pixels the robust loss kept (1.0 for
    plain least squares).
    """

    scale: float = 1.0
    shift: float = 0.0
    residual: float = 0.0
    n: int = 0
    degenerate: bool = True
    clipped: bool = False
    inlier_fraction: float = 1.0


IDENTITY = Alignment()


def _flat(a, name):
    try:
        return np.asarray(a).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f'{name} must be a numeric array, got {type(a).__name__}') from exc


def _dot(a, b):
    # einsum's own loop, not BLAS: a threaded BLAS dot stalls on a busy robot CPU and the
    # chunks are small enough that threads buy nothing.
    return np.einsum('i,i->', a, b)


def _moments(x, y, w, x0, y0):
    """Return float64 ``[sw, sx, sy, sxx, sxy, syy]`` of ``(x - x0, y - y0)``, chunk by chunk.

    Chunks keep the float64 temporaries small (a 21 x 480 x 640 overlap is 6.5 M pixels);
    subtracting a rough mean first keeps the raw moments free of cancellation.
    """
    acc = np.zeros(6)
    for i in range(0, x.size, _CHUNK):
        xc = x[i:i + _CHUNK].astype(np.float64)
        xc -= x0
        yc = y[i:i + _CHUNK].astype(np.float64)
        yc -= y0
        if w is None:
            acc += (xc.size, xc.sum(), yc.sum(), _dot(xc, xc), _dot(xc, yc), _dot(yc, yc))
        else:
            wc = w[i:i + _CHUNK]
            wx = wc * xc
            wy = wc * yc
            acc += (wc.sum(), wx.sum(), wy.sum(), _dot(wx, xc), _dot(wx, yc), _dot(wy, yc))
    return acc


def _solve(m, extra, symmetric):
    """Solve for (scale, shift) in the shifted coordinates; None when degenerate.

    ``extra`` = (px, py, pw): pseudo-observations in the same shifted coordinates.
    """
    sw, sx, sy, sxx, sxy, syy = (float(v) for v in m)
    if extra is not None:
        px, py, pw = extra
        sw += float(pw.sum())
        sx += float(pw @ px)
        sy += float(pw @ py)
        sxx += float(pw @ (px * px))
        sxy += float(pw @ (px * py))
        syy += float(pw @ (py * py))
    if not (sw > 0.0 and math.isfinite(sw)):
        return None
    xm = sx / sw
    ym = sy / sw
    cxx = sxx - sx * xm
    cxy = sxy - sx * ym
    cyy = syy - sy * ym
    # Centred sums give the reference's solution, but a constant x gives cxx == 0 (up to
    # round-off) instead of a tiny determinant that explodes the scale.
    if not (math.isfinite(cxx) and math.isfinite(cxy)) or cxx <= 1e-12 * sxx or cxx <= 0.0:
        return None
    scale = cxy / cxx
    if symmetric and cxy != 0.0 and cyy > 0.0:
        scale = math.copysign(math.sqrt(cyy / cxx), cxy)
    shift = ym - scale * xm
    if not (math.isfinite(scale) and math.isfinite(shift)):
        return None
    return scale, shift


def _pass(x, y, w, scale, shift, weigh=None):
    """Return (sum w r^2, sum w, inlier count) of ``r = scale * x + shift - y`` over all pixels.

    ``weigh(|r|) -> (robust weights, inlier mask)`` applies a robust loss (None = plain).
    """
    total = np.zeros(3)
    for i in range(0, x.size, _CHUNK):
        r = x[i:i + _CHUNK].astype(np.float64)
        r *= scale
        r += shift
        r -= y[i:i + _CHUNK]
        if w is None and weigh is None:
            total += (_dot(r, r), r.size, r.size)
            continue
        wc = np.ones(r.size) if w is None else w[i:i + _CHUNK]
        inl = r.size
        if weigh is not None:
            rw, keep = weigh(np.abs(r))
            wc = wc * rw
            inl = int(np.count_nonzero(keep))
        total += (_dot(wc, r * r), wc.sum(), inl)
    return total


def _robust_sigma(r):
    sample = r[:: max(1, r.size // _MAD_SAMPLES)]
    return _MAD_TO_SIGMA * float(np.median(np.abs(sample - np.median(sample))))


def _weigher(stage, sigma, cut):
    """Return ``weigh(|r|) -> (weights, inlier mask)`` for one robust stage."""
    if stage == 'trim':
        return lambda a: ((a <= cut).astype(np.float64), a <= cut)
    if stage == 'huber':
        k = _HUBER_K * sigma
        return lambda a: (np.divide(k, a, out=np.ones_like(a), where=a > k), a <= k)
    c = _TUKEY_C * sigma
    return lambda a: (np.square(np.clip(1.0 - np.square(a / c), 0.0, None)), a < c)


def fit_scale_shift(x, y, mask=None, weights=None, robust=False, iterations=10, trim=0.2,
                    prior=None, symmetric=False):
    """Fit ``y ~ scale * x + shift`` by (weighted, optionally robust) least squares.

    Pixels where ``x`` or ``y`` is not finite, ``mask`` is false or ``weights`` is not positive
    are ignored. A degenerate system (no valid pixel, constant ``x``) returns the identity
    ``scale=1, shift=0`` as the reference does; this function never raises on data and never
    returns NaN.

    :param x: values to map (any shape, e.g. ``(O, H, W)`` new-window disparity).
    :param y: reference values, same shape as ``x`` (e.g. the published overlap).
    :param mask: optional boolean array, same shape; False excludes a pixel.
    :param weights: optional non-negative per-pixel weights, same shape.
    :param robust: False (plain LS, the reference), True (= ``'huber'``), ``'huber'`` or
        ``'tukey'`` (iteratively reweighted with a MAD noise scale; Tukey starts from the Huber
        solution) or ``'trim'`` (refit on the ``1 - trim`` fraction of smallest residuals), to
        resist moving objects that disagree between windows. The reweighting iterations run on
        a strided subsample of at most 262144 pixels; residual and inlier fraction are then
        computed over all pixels.
    :param iterations: maximum reweighting iterations of the robust fit (per stage).
    :param trim: fraction of pixels dropped per iteration by ``'trim'``, in ``[0, 0.9]``.
    :param prior: optional ``(prior_x, prior_y, strength)``: pseudo-observations (short 1-D
        arrays) that pull the fit towards mapping ``prior_x`` onto ``prior_y``; together they
        weigh ``strength`` times the total weight of the data (ridge-like regularisation used
        for drift control; 0 disables). Residual and ``n`` describe the data only.
    :param symmetric: geometric-mean regression ``scale = sign(sxy) * sqrt(syy / sxx)``
        instead of ordinary least squares ``sxy / sxx``. OLS shrinks the scale by
        ``var(x) / (var(x) + noise(x))`` when ``x`` is noisy too (regression dilution); chained
        over windows that shrink is a systematic drift. With similar noise in ``x`` and ``y``
        (two model windows) the symmetric fit has no such bias. False = reference.
    :return: :class:`Alignment`; ``residual`` is the (robustly weighted) RMS misfit.
    """
    if robust is True:
        robust = 'huber'
    if robust not in (False, None, *ROBUST_METHODS):
        raise InputError(f'robust must be False, True or one of {ROBUST_METHODS}, got {robust!r}')
    if not 0.0 <= trim <= 0.9:
        raise InputError(f'trim must be in [0, 0.9], got {trim!r}')
    xf = _flat(x, 'x')
    yf = _flat(y, 'y')
    if xf.shape != yf.shape:
        raise InputError(f'x and y must have the same number of values, got {np.shape(x)} and '
                         f'{np.shape(y)}')
    if xf.dtype.kind not in 'fiub' or yf.dtype.kind not in 'fiub':
        raise InputError(f'x and y must be numeric, got {xf.dtype} and {yf.dtype}')
    w = None
    valid = None
    if mask is not None:
        mf = _flat(mask, 'mask')
        if mf.shape != xf.shape:
            raise InputError(f'mask shape {np.shape(mask)} does not match x {np.shape(x)}')
        valid = mf.astype(bool)
    if weights is not None:
        w = _flat(weights, 'weights').astype(np.float64)
        if w.shape != xf.shape:
            raise InputError(f'weights shape {np.shape(weights)} does not match x {np.shape(x)}')
        ok = np.isfinite(w) & (w > 0)
        valid = ok if valid is None else valid & ok
    # One float64 sum per array tells whether any value is NaN/inf without a mask pass.
    with np.errstate(invalid='ignore', over='ignore'):
        finite = xf.size == 0 or math.isfinite(float(np.add.reduce(xf, dtype=np.float64))
                                                + float(np.add.reduce(yf, dtype=np.float64)))
    if not finite:
        ok = np.isfinite(xf) & np.isfinite(yf)
        valid = ok if valid is None else valid & ok
    if valid is not None and not valid.all():
        xf, yf = xf[valid], yf[valid]
        w = None if w is None else w[valid]
    n = int(xf.size)
    if n == 0:
        return Alignment(1.0, 0.0, 0.0, 0, True)
    step = max(1, n // 1024)
    x0 = float(np.mean(xf[::step], dtype=np.float64))
    y0 = float(np.mean(yf[::step], dtype=np.float64))
    m = _moments(xf, yf, w, x0, y0)
    extra = _prior_points(prior, float(m[0]), x0, y0)
    solved = _solve(m, extra, symmetric)
    if solved is None:
        sse, sw, _ = _pass(xf, yf, w, 1.0, 0.0)
        return Alignment(1.0, 0.0, _rms(sse, sw), n, True)
    scale, shift = solved[0], solved[1] + y0 - solved[0] * x0
    weigh = None
    if robust:
        scale, shift, weigh = _robust_fit(xf, yf, w, scale, shift, robust, iterations, trim,
                                          extra, symmetric, x0, y0)
    sse, sw, inl = _pass(xf, yf, w, scale, shift, weigh)
    return Alignment(scale, shift, _rms(sse, sw), n, False, False, float(inl) / n)


def _rms(sse, sw):
    value = math.sqrt(sse / sw) if sw > 0 and sse >= 0 else 0.0
    return value if math.isfinite(value) else 0.0


def _prior_points(prior, data_weight, x0, y0):
    """Turn ``(prior_x, prior_y, strength)`` into shifted weighted pseudo-observations."""
    if prior is None:
        return None
    try:
        px, py, strength = prior
        px = np.asarray(px, np.float64).reshape(-1)
        py = np.asarray(py, np.float64).reshape(-1)
        strength = float(strength)
    except (TypeError, ValueError) as exc:
        raise InputError(f'prior must be (prior_x, prior_y, strength), got {prior!r}') from exc
    if px.shape != py.shape or not np.isfinite(strength) or strength < 0:
        raise InputError(f'prior needs equal-length prior_x/prior_y and strength >= 0, got '
                         f'{px.shape}, {py.shape}, {strength!r}')
    ok = np.isfinite(px) & np.isfinite(py)
    if strength == 0 or not ok.any():
        return None
    px, py = px[ok], py[ok]
    # Without data the prior alone must still define the fit: give it unit weight then.
    total = strength * data_weight if data_weight > 0 else 1.0
    return px - x0, py - y0, np.full(px.shape, total / px.size)


def _robust_fit(x, y, w, scale, shift, method, iterations, trim, extra, symmetric, x0, y0):
    """Reweight from the LS start on a subsample; return (scale, shift, final weigher)."""
    step = max(1, -(-x.size // _ROBUST_SAMPLES))
    xs = x[::step].astype(np.float64) - x0
    ys = y[::step].astype(np.float64) - y0
    ws = np.ones(xs.size) if w is None else w[::step]
    if extra is not None:
        # The prior's weight was set against the full data: scale it to the subsample.
        full = x.size if w is None else float(w.sum())
        extra = (extra[0], extra[1], extra[2] * (float(ws.sum()) / full))
    b = shift - y0 + scale * x0  # shift in the shifted coordinates
    stages = ['trim'] if method == 'trim' else ['huber'] + (['tukey'] if method == 'tukey'
                                                            else [])
    weigh = None
    for stage in stages:
        for _ in range(iterations):
            r = scale * xs + b - ys
            if stage == 'trim':
                if trim == 0.0:
                    break
                weigh = _weigher('trim', 0.0, float(np.quantile(np.abs(r), 1.0 - trim)))
            else:
                sigma = _robust_sigma(r)
                if not sigma > 0.0:
                    break  # (nearly) exact fit: nothing to down-weight
                weigh = _weigher(stage, sigma, 0.0)
            rw, _ = weigh(np.abs(r))
            solved = _solve(_moments(xs, ys, ws * rw, 0.0, 0.0), extra, symmetric)
            if solved is None:
                break
            change = abs(solved[0] - scale) + abs(solved[1] - b)
            scale, b = solved
            if change < 1e-9 * (1.0 + abs(scale) + abs(b)):
                break
    return scale, b + y0 - scale * x0, weigh


def alignment_residual(x, y, alignment):
    """Return the RMS of ``scale * x + shift - y`` over pixels where both are finite (0 if none).

    :param x: values to map, any shape.
    :param y: reference values, same shape.
    :param alignment: :class:`Alignment`.
    :return: float >= 0.
    """
    r = (np.asarray(x, np.float64) * alignment.scale + alignment.shift
         - np.asarray(y, np.float64)).reshape(-1)
    r = r[np.isfinite(r)]
    return float(np.sqrt(np.mean(r * r))) if r.size else 0.0


def clip_scale(alignment, bounds=REFERENCE_SCALE_CLIP):
    """Clip the scale to ``bounds`` keeping the shift, as the reference does.

    :param alignment: :class:`Alignment` from :func:`fit_scale_shift`.
    :param bounds: ``(low, high)`` with ``0 < low <= high``, or None for no clipping.
    :return: :class:`Alignment` with ``clipped`` set when the scale changed.
    """
    if bounds is None:
        return alignment
    low, high = check_scale_clip(bounds)
    scale = min(max(alignment.scale, low), high)
    if scale == alignment.scale:
        return alignment
    return Alignment(scale, alignment.shift, alignment.residual, alignment.n,
                     alignment.degenerate, True, alignment.inlier_fraction)


def check_scale_clip(bounds):
    """Validate scale-clip bounds ``(low, high)`` (or None); return them as floats."""
    if bounds is None:
        return None
    try:
        low, high = (float(v) for v in bounds)
    except (TypeError, ValueError) as exc:
        raise InputError(f'scale_clip must be (low, high) or None, got {bounds!r}') from exc
    if not (np.isfinite(low) and np.isfinite(high) and 0.0 < low <= high):
        raise InputError(f'scale_clip must satisfy 0 < low <= high (reference: (0.7, 1.5)), got '
                         f'{bounds!r}')
    return low, high


def apply_alignment(values, alignment, clamp_negative=True):
    """Map ``values`` through ``scale * v + shift`` and zero negatives (reference rule).

    :param values: disparity array of any shape, float.
    :param alignment: :class:`Alignment`.
    :param clamp_negative: set negative results to 0 (the reference does; no upper clip).
    :return: float32 array of the same shape; NaN stays NaN.
    """
    out = np.asarray(values, dtype=np.float32) * np.float32(alignment.scale)
    out += np.float32(alignment.shift)
    if clamp_negative:
        np.maximum(out, np.float32(0.0), out=out)  # NaN propagates through maximum
    return out


def crossfade_weights(length):
    """Return the reference ramp ``linspace(0, 1, length)`` (weight of the new window).

    For ``length == 1`` the only weight is 0: the old value is kept, as in the reference.

    :param length: overlap frames.
    :return: ``(length,)`` float32.
    """
    if length <= 1:
        return np.zeros(max(length, 0), np.float32)
    return np.linspace(0.0, 1.0, length, dtype=np.float32)


def crossfade(old, new, weights=None):
    """Blend ``(1 - a_i) * old_i + a_i * new_i`` frame by frame along axis 0.

    :param old: ``(L, ...)`` values already stitched.
    :param new: ``(L, ...)`` aligned values of the new window.
    :param weights: ``(L,)`` new-window weights; default :func:`crossfade_weights`.
    :return: ``(L, ...)`` float32.
    """
    old = np.asarray(old, dtype=np.float32)
    new = np.asarray(new, dtype=np.float32)
    a = crossfade_weights(len(old)) if weights is None else np.asarray(weights, np.float32)
    a = a.reshape((-1,) + (1,) * (old.ndim - 1))
    return (1.0 - a) * old + a * new


def disagreement_confidence(old, new, tau=0.05):
    """Per-pixel confidence from how much two aligned windows disagree on their overlap.

    ``e = mean_i |new_i - old_i|`` over the overlap frames (NaN frames skipped) and
    ``c = exp(-e / tau)``; pixels with no finite pair get 1 (no information against them).

    :param old: ``(L, H, W)`` published / stitched values.
    :param new: ``(L, H, W)`` aligned values of the new window.
    :param tau: disagreement (disparity units) at which confidence falls to ``1/e``.
    :return: ``(H, W)`` float32 in ``[0, 1]``.
    """
    diff = np.asarray(new, np.float32) - np.asarray(old, np.float32)
    np.abs(diff, out=diff)
    if math.isfinite(float(np.add.reduce(diff, axis=None, dtype=np.float64))):
        err = diff.mean(axis=0, dtype=np.float32)
    else:
        finite = np.isfinite(diff)
        count = finite.sum(axis=0)
        total = np.where(finite, diff, np.float32(0)).sum(axis=0)
        err = np.divide(total, count, out=np.zeros(total.shape, np.float32), where=count > 0)
    return np.exp(-err / np.float32(tau)).astype(np.float32)


def stitch_step(tail, raw, scale_clip=REFERENCE_SCALE_CLIP, clamp_negative=True, robust=False,
                blend=True):
    """Align one new window to the stitched frames it overlaps and blend them (spec 2.1).

    :param tail: ``(ro, ...)`` stitched values of the overlap frames (``ro`` may be 0).
    :param raw: ``(n, ...)`` raw model output of the new window, ``n >= ro``; its first ``ro``
        frames are the overlap.
    :param scale_clip: ``(low, high)`` or None.
    :param clamp_negative: zero negative aligned values.
    :param robust: see :func:`fit_scale_shift`.
    :param blend: cross-fade the overlap (reference); False keeps ``tail`` there.
    :return: ``(merged (n, ...) float32, Alignment)``; ``merged[:ro]`` replaces the tail.
    """
    raw = np.asarray(raw, dtype=np.float32)
    ro = len(tail)
    if ro == 0:
        return raw.copy(), IDENTITY
    if ro > len(raw):
        raise InputError(f'overlap of {ro} frames exceeds the new window of {len(raw)} frames')
    fit = clip_scale(fit_scale_shift(raw[:ro], tail, robust=robust), scale_clip)
    merged = apply_alignment(raw, fit, clamp_negative)
    if fit.clipped:
        fit = Alignment(fit.scale, fit.shift, alignment_residual(raw[:ro], tail, fit), fit.n,
                        fit.degenerate, True, fit.inlier_fraction)
    if blend:
        merged[:ro] = crossfade(tail, merged[:ro])
    else:
        merged[:ro] = tail
    return merged, fit


def stitch_offline(outputs, windows, total=None, scale_clip=REFERENCE_SCALE_CLIP,
                   clamp_negative=True, robust=False):
    """Stitch per-window outputs exactly like the reference offline scripts.

    Each window is aligned to the already stitched (aligned + blended) sequence over its real
    overlap ``ro = prev_end - start``, its scale clipped, negatives zeroed, and the overlap
    cross-faded with :func:`crossfade_weights`. Use ``scale_clip=REFERENCE_SCALE_CLIP`` with
    :func:`~dvd_ros.stream.windows.offline_windows` (``test_single_video.py``) and
    ``scale_clip=None`` with :func:`~dvd_ros.stream.windows.eval_windows` (eval script).

    :param outputs: per-window arrays ``(n_k, ...)`` (``n_k >= end - start``; padded frames
        beyond the window length are ignored), e.g. ``(T_k, H, W)`` or ``(T_k, H, W, 3)``.
    :param windows: ``(start, end)`` per window, in order.
    :param total: frames in the result (default: the last window's end).
    :param scale_clip: ``(low, high)`` or None.
    :param clamp_negative: zero negative aligned values.
    :param robust: see :func:`fit_scale_shift` (False = reference).
    :return: ``(total, ...)`` float32.
    """
    outputs = list(outputs)
    windows = [(int(s), int(e)) for s, e in windows]
    if len(outputs) != len(windows):
        raise InputError(f'{len(outputs)} window outputs for {len(windows)} windows')
    if not windows:
        raise InputError('stitch_offline needs at least one window')
    pieces = []
    stitched_end = 0
    for (start, end), out in zip(windows, outputs):
        out = np.asarray(out, dtype=np.float32)
        if end <= start or len(out) < end - start:
            raise InputError(f'window [{start}, {end}) needs {end - start} frames of output, got '
                             f'{len(out)}')
        raw = out[: end - start]
        ro = stitched_end - start if pieces else 0
        tail = _take_tail(pieces, ro)
        merged, _ = stitch_step(tail, raw, scale_clip, clamp_negative, robust)
        pieces.append(merged)
        stitched_end = end
    result = np.concatenate(pieces)
    total = stitched_end if total is None else int(total)
    return result[:total]


def _take_tail(pieces, ro):
    """Pop the last ``ro`` stitched frames off ``pieces`` and return them."""
    if ro <= 0:
        return np.zeros((0,) + pieces[-1].shape[1:] if pieces else (0,), np.float32)
    taken = []
    need = ro
    while need > 0:
        last = pieces[-1]
        if len(last) <= need:
            taken.append(pieces.pop())
            need -= len(last)
        else:
            taken.append(last[len(last) - need:])
            pieces[-1] = last[: len(last) - need]
            need = 0
    return np.concatenate(taken[::-1])
