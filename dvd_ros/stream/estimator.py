"""Causal streaming depth: frames in one at a time, final aligned disparity frames out.

``StreamingDepth`` runs the regressor on overlapping windows (``stream.windows`` causal
schedule), aligns each window to the values it already published over the overlap
(``stream.align``), and emits every pushed frame exactly once (or counts it as dropped).
``OfflineStitcher`` / ``run_offline`` are the reference non-causal procedure as a generator.
"""

from collections import deque
from dataclasses import dataclass, field
import math
import threading
import time

import numpy as np

from dvd_ros.errors import InputError
from dvd_ros.stream.adaptive import DEFAULT_MARGIN, OverlapController
from dvd_ros.stream.align import (
    IDENTITY,
    REFERENCE_SCALE_CLIP,
    apply_alignment,
    check_scale_clip,
    clip_scale,
    crossfade,
    crossfade_weights,
    disagreement_confidence,
    fit_scale_shift,
    stitch_step,
)
from dvd_ros.stream.windows import check_window, eval_windows, offline_windows

POLICIES = ('immediate', 'blend')
FLUSH_MODES = ('reanchor', 'pad')
RESIZE_MODES = ('restart', 'raise')
# 'auto': each window's overlap is chosen from the measured throughput (stream.adaptive).
OVERLAP_MODES = ('fixed', 'auto')
# Percentiles of the training normalisation (spec 1.5): the drift reference tracks them.
_DRIFT_PERCENTILES = (2.0, 98.0)
_DRIFT_SAMPLES = 50_000


@dataclass(frozen=True)
class DepthFrame:
    """One final output frame.

    ``disparity`` is ``(H, W)`` float32 relative disparity >= 0 (larger = nearer, NaN = no
    data) on the stream's common scale; ``confidence`` is ``(H, W)`` float32 in [0, 1];
    ``stamp`` is whatever was pushed with the frame, untouched; ``index`` counts pushed frames
    from 0 since the last reset; ``window`` is the window that produced the frame. Both arrays
    are read-only (frames of one window share them with the estimator's state): copy them
    before modifying.
    """

    stamp: object
    disparity: np.ndarray
    confidence: np.ndarray
    index: int
    window: int


@dataclass(frozen=True)
class StreamStats:
    """Snapshot of a stream's counters for diagnostics.

    ``pushed`` counts every :meth:`StreamingDepth.push` call (rejected frames too, they are
    also in ``dropped``); ``pending`` = pushed - emitted - dropped (frames waiting for their
    window, or held by the ``'blend'`` policy);
    ``last_*`` describe the most recent window (model seconds, and the alignment of its raw
    output to the published overlap: scale, shift, RMS residual in disparity units, whether
    the scale was clipped, robust inlier fraction, frames it shared with final ones, seconds of
    its alignment); ``overlap`` is the overlap of the next window (chosen per window with
    ``overlap_mode='auto'``).
    """

    pushed: int = 0
    emitted: int = 0
    dropped: dict = field(default_factory=dict)
    windows: int = 0
    restarts: int = 0
    last_model_seconds: float = 0.0
    last_scale: float = 1.0
    last_shift: float = 0.0
    last_residual: float = 0.0
    last_clipped: bool = False
    last_inlier_fraction: float = 1.0
    overlap: int = 0
    last_overlap: int = 0
    last_align_seconds: float = 0.0

    @property
    def dropped_total(self):
        """Return the number of dropped frames over all reasons."""
        return sum(self.dropped.values())

    @property
    def pending(self):
        """Return the frames pushed but neither emitted nor dropped yet."""
        return self.pushed - self.emitted - self.dropped_total

    def as_dict(self):
        """Return a flat ``{name: value}`` dict (e.g. for a DiagnosticStatus)."""
        out = {k: getattr(self, k) for k in (
            'pushed', 'emitted', 'windows', 'restarts', 'last_model_seconds', 'last_scale',
            'last_shift', 'last_residual', 'last_clipped', 'last_inlier_fraction', 'overlap',
            'last_overlap', 'last_align_seconds')}
        out['pending'] = self.pending
        out['dropped'] = self.dropped_total
        for reason, count in sorted(self.dropped.items()):
            out[f'dropped_{reason}'] = count
        return out


@dataclass
class _Job:
    """One window cut by the model side: its frames ``[(stamp, index)]`` and bookkeeping."""

    k: int
    frames: list
    final: bool
    new: int  # frames it makes final (dropped if the model fails)
    next_overlap: int = 0  # overlap of the window after it (blend holds as many frames)


@dataclass
class _Window:
    """Step: the model ran ``job``; ``raw`` is its ``(T, H, W)`` float32 output."""

    job: _Job
    raw: np.ndarray


@dataclass
class _Failed:
    """Step: the model raised ``error`` on ``job``; the stream restarts."""

    job: _Job
    error: BaseException


@dataclass
class _End:
    """Step: the stream ends (flush); held frames become final."""


@dataclass
class _Reset:
    """Step: the stream is forgotten; ``pending`` frames of the model side are dropped."""

    pending: int


def _check_choice(value, choices, name):
    if value not in choices:
        raise InputError(f'{name} must be one of {choices}, got {value!r}')
    return value


def _percentiles(values):
    flat = values.reshape(-1)
    flat = flat[:: max(1, flat.size // _DRIFT_SAMPLES)]
    flat = flat[np.isfinite(flat)]
    if flat.size < 2:
        return None
    lo, hi = np.percentile(flat, _DRIFT_PERCENTILES)
    return (float(lo), float(hi)) if hi > lo else None


class StreamingDepth:
    """Causal sliding-window depth over an endless stream of frames.

    Window ``k`` covers frames ``[k*S, k*S + window)`` with hop ``S = window - overlap``; the
    first window emits all its frames, every later one its ``S`` new frames, after aligning its
    raw output to the already final values of the ``overlap`` frames it shares (least squares
    in disparity space, scale clipped, negatives zeroed).

    Policies: ``'immediate'`` emits a window's new frames as soon as it has run (latency: the
    window's frames plus compute); ``'blend'`` holds back the last ``overlap`` frames of each
    window until the next window has run and cross-fades them with it (the reference's linear
    ramp, no seam; ``min(overlap, S)`` frames more latency). With ``policy='blend'``, the same
    inputs, ``overlap <= S``, ``symmetric=False``, ``drift_strength=0`` and a stream of
    ``window + k * S`` frames, the emitted values equal ``stitch_offline`` over the causal
    windows (with ``overlap > S`` the reference would rewrite frames already emitted).

    Drift: every window is aligned to the previous one, so errors chain (spec 2.2). Two
    controls: (1) ``symmetric=True`` (default) fits the scale by geometric-mean regression:
    ordinary least squares (the reference) shrinks the scale by ``var(x) / (var(x) +
    noise(x))`` because the new window's values are noisy too, and chained over windows that
    bias is a steady drift towards flat depth; on the oracle stream of the tests it is the
    dominant drift. (2) ``drift_strength > 0`` (off by default) adds two pseudo-observations to
    each fit that map the raw window's 2nd/98th disparity percentiles onto a running mean of
    those percentiles of earlier aligned windows (all windows, or an exponential mean over
    ``drift_horizon`` windows), weighing ``drift_strength`` times the overlap data. It bounds
    the remaining random walk only while the scene's disparity range stays similar, and biases
    the fit when the scene changes, hence off by default (numbers in docs/streaming.md).

    Confidence: ``c = exp(-e / confidence_tau)`` with ``e`` the per-pixel mean absolute
    difference between the new window's aligned values and the final values over the overlap
    (disparity units); frames of the first window (no overlap information) get 1; NaN pixels of
    the output get 0.

    :param regressor: anything with ``predict(uint8 (T, H, W, 3)) -> float32 (T, H, W)``.
    :param window: frames per model call (81 default of DVD; the model pads to 4n+1).
    :param overlap: frames shared by consecutive windows, ``0 <= overlap < window``.
    :param policy: ``'immediate'`` or ``'blend'``.
    :param scale_clip: ``(low, high)`` clip of the fitted scale (reference (0.7, 1.5)) or None.
    :param robust: robust alignment (see ``align.fit_scale_shift``): False, True, 'huber',
        'tukey', 'trim'.
    :param flush_mode: at end of stream, ``'reanchor'`` runs the last ``window`` frames (the
        reference's re-anchored last window: a longer overlap of published frames, keeps the
        last ``window - 1`` outputs in memory) or ``'pad'`` runs the overlap plus the tail (the
        model pads it to 4n+1; keeps ``overlap`` outputs).
    :param on_resize: a frame whose size differs from the stream's: ``'restart'`` flushes the
        old stream (its frames are emitted) and starts a new one; ``'raise'`` drops the frame
        (reason ``size_mismatch``) and raises :class:`InputError`.
    :param symmetric: geometric-mean instead of ordinary least squares scale (see above).
    :param drift_strength: weight of the percentile prior relative to the overlap data (0 = off).
    :param drift_horizon: windows averaged into the percentile reference (None = all).
    :param confidence_tau: disagreement (disparity units) at which confidence is ``1/e``.
    :param clock: monotonic clock in seconds, for ``stats.last_model_seconds`` and the
        measurements of ``overlap_mode='auto'``.
    :param overlap_mode: ``'fixed'`` or ``'auto'``: before each window, the largest overlap in
        ``[overlap_min, window - 1]`` that keeps up with the measured input rate and window
        time (:class:`~dvd_ros.stream.adaptive.OverlapController`); ``overlap`` is then the
        starting value, used until the first window has run.
    :param overlap_min: smallest overlap ``'auto'`` may choose.
    :param overlap_margin: ``'auto'``: throughput required over the input rate (>= 1).
    """

    def __init__(self, regressor, window=81, overlap=21, policy='immediate',
                 scale_clip=REFERENCE_SCALE_CLIP, robust=False, flush_mode='reanchor',
                 on_resize='restart', symmetric=True, drift_strength=0.0, drift_horizon=None,
                 confidence_tau=0.05, clock=time.perf_counter, overlap_mode='fixed',
                 overlap_min=1, overlap_margin=DEFAULT_MARGIN):
        if not callable(getattr(regressor, 'predict', None)):
            raise InputError(f'regressor must have predict(frames) -> (T, H, W), got '
                             f'{type(regressor).__name__}')
        self.regressor = regressor
        self.window, self.overlap = check_window(window, overlap)
        self.hop = self.window - self.overlap
        self.policy = _check_choice(policy, POLICIES, 'policy')
        self.scale_clip = check_scale_clip(scale_clip)
        fit_scale_shift(np.zeros(2), np.zeros(2), robust=robust)  # validates the option
        self.robust = robust
        self.symmetric = bool(symmetric)
        self.flush_mode = _check_choice(flush_mode, FLUSH_MODES, 'flush_mode')
        self.on_resize = _check_choice(on_resize, RESIZE_MODES, 'on_resize')
        self.drift_strength = float(drift_strength)
        if not (math.isfinite(self.drift_strength) and self.drift_strength >= 0):
            raise InputError(f'drift_strength must be >= 0 (0 disables), got {drift_strength!r}')
        if drift_horizon is not None and (isinstance(drift_horizon, bool)
                                          or not isinstance(drift_horizon, int)
                                          or drift_horizon < 1):
            raise InputError(f'drift_horizon must be an integer >= 1, got {drift_horizon!r}')
        self.drift_horizon = drift_horizon
        self.confidence_tau = float(confidence_tau)
        if not (math.isfinite(self.confidence_tau) and self.confidence_tau > 0):
            raise InputError(f'confidence_tau must be > 0, got {confidence_tau!r}')
        self.overlap_mode = _check_choice(overlap_mode, OVERLAP_MODES, 'overlap_mode')
        self.initial_overlap = self.overlap
        self.controller = (OverlapController(self.window, overlap_min, self.overlap,
                                             overlap_margin)
                           if self.overlap_mode == 'auto' else None)
        # Set by a pipeline that runs the model while the previous window is finished: the
        # window rate is then bounded by the slower stage, not by their sum.
        self.overlapped = False
        # Seconds the caller spends per window after the estimator (publishing), if known.
        self.sink_seconds = 0.0
        self.clock = clock
        self._lock = threading.Lock()  # counters: the two sides may run on two threads
        self._dropped = {}
        self._counts = {'pushed': 0, 'emitted': 0, 'windows': 0, 'restarts': 0}
        self._last = {'overlap': self.overlap}
        self._finish_seconds = 0.0
        self._reset_stream()

    # -- public API -----------------------------------------------------------------------

    @property
    def stats(self):
        """Return a :class:`StreamStats` snapshot."""
        with self._lock:
            return StreamStats(dropped=dict(self._dropped), **self._counts, **self._last)

    @property
    def latency_frames(self):
        """Return how many frames after a frame arrives it is emitted at most (excl. compute)."""
        return self.window - 1 + (min(self.overlap, self.hop) if self.policy == 'blend' else 0)

    def push(self, frame, stamp=None, arrival=None):
        """Add one frame; return the frames that became final (possibly none).

        :param frame: ``(H, W, 3)`` uint8 RGB, the same size as the stream's earlier frames.
        :param stamp: opaque per-frame record returned untouched with its output.
        :param arrival: when the frame arrived (seconds, monotonic; default now), for the
            input rate of ``overlap_mode='auto'``.
        :return: list of :class:`DepthFrame`, in frame order.
        :raises InputError: invalid frame (counted as dropped, reason ``invalid``), or a size
            change with ``on_resize='raise'`` (reason ``size_mismatch``).
        """
        frame = self.accept(frame)
        return self._drive(self.intake(frame, stamp, arrival))

    def flush(self):
        """Finish the stream: emit every pending frame, then start a new stream.

        :return: list of :class:`DepthFrame` (the tail, and frames held by ``'blend'``).
        """
        try:
            return self._drive(self.intake_flush())
        finally:
            self._reset_stream()

    def reset(self):
        """Forget the stream (pending frames are counted as dropped, reason ``reset``)."""
        self._drive(self.intake_reset())

    def note_dropped(self, reason, count=1):
        """Count frames dropped before they reached :meth:`push` (e.g. the node was busy)."""
        self._drop(str(reason), int(count))

    # -- the two sides, for a pipeline ------------------------------------------------------
    # push/flush/reset = the model side (accept + intake*: frames into windows, the model)
    # feeding the finishing side (finish: alignment, confidence, emission). A pipeline runs
    # intake* on one thread and finish on another, passing the steps through a FIFO queue;
    # both sides keep their own state, so the outputs are the same as push's.

    def accept(self, frame):
        """Count a pushed frame and validate it (caller side of :meth:`push`).

        :return: the frame as an array.
        :raises InputError: not an ``(H, W, 3)`` uint8 array (counted, reason ``invalid``).
        """
        # Every call counts, rejected frames too, so pushed = emitted + dropped + pending.
        self._count('pushed')
        return self._check_frame(frame)

    def intake(self, frame, stamp, arrival=None):
        """Model side of :meth:`push` for an accepted frame: yield the steps to finish.

        Runs the model when a window is complete. A model failure is yielded as a step (the
        model side has already restarted); the generator then ends.

        :raises InputError: a size change with ``on_resize='raise'`` (reason
            ``size_mismatch``).
        """
        if self._shape is not None and frame.shape[:2] != self._shape:
            if self.on_resize == 'raise':
                self._drop('size_mismatch')
                raise InputError(f'frame is {frame.shape[1]}x{frame.shape[0]} but the stream is '
                                 f'{self._shape[1]}x{self._shape[0]} (WxH); call reset() or use '
                                 "on_resize='restart'")
            ok = yield from self.intake_flush()
            if not ok:
                self._drop('model_error')  # this frame never reached a stream
                return
            self._count('restarts')
        if self.controller is not None:
            self.controller.arrival(self.clock() if arrival is None else arrival)
        self._shape = frame.shape[:2]
        self._store(frame)
        self._frames.append((None, stamp, self._next_index))
        self._next_index += 1
        self._new += 1
        if self._new >= (self.window if self._k == 0 else self.hop):
            yield from self._cut(len(self._frames), final=False)

    def intake_flush(self):
        """Model side of :meth:`flush`: yield the steps; return False if the model failed."""
        if self._new > 0:
            if self._k == 0 or self.flush_mode == 'reanchor':
                size = len(self._frames)
            else:
                size = min(len(self._frames), self.overlap + self._new)
            ok = yield from self._cut(size, final=True)
            if not ok:
                return False
        yield _End()
        self._reset_model()
        return True

    def intake_reset(self):
        """Model side of :meth:`reset`: yield the step that forgets the stream."""
        pending = self._new
        self._reset_model()
        yield _Reset(pending)

    def finish(self, step):
        """Finishing side: turn one step of the model side into final frames.

        :param step: what :meth:`intake`, :meth:`intake_flush` or :meth:`intake_reset`
            yielded, in order.
        :return: list of :class:`DepthFrame`.
        """
        if isinstance(step, _Window):
            t0 = self.clock()
            out = self._align(step)
            self._finish_seconds = float(self.clock() - t0)
            with self._lock:
                self._last['last_align_seconds'] = self._finish_seconds
            return out
        if isinstance(step, _End):
            out = self._release_held()
            self._reset_finish()
            return out
        if isinstance(step, _Failed):
            # The window's new frames have no output; the alignment reference would span a
            # gap, so the stream starts over with the next frame.
            self._drop('model_error', step.job.new + len(self._held))
            self._count('restarts')
            self._reset_finish()
            return []
        if isinstance(step, _Reset):
            pending = step.pending + len(self._held)
            if pending:
                self._drop('reset', pending)
            self._reset_finish()
            return []
        raise TypeError(f'not a stream step: {step!r}')

    # -- internals ------------------------------------------------------------------------

    def _drive(self, steps):
        """Run the model side and the finishing side in turn (the sequential stream)."""
        out = []
        error = None
        for step in steps:
            out += self.finish(step)
            if isinstance(step, _Failed):
                error = step.error  # the model side ends after it (and counts its own drops)
        if error is not None:
            raise error
        return out

    def _reset_stream(self):
        self._reset_model()
        self._reset_finish()

    def _reset_model(self):
        self._shape = None
        self._next_index = 0
        self._k = 0  # next window number
        self._new = 0  # frames pushed since the last window
        self._frames = deque(maxlen=self.window)  # (unused, stamp, index) of the ring's frames
        # Every frame is written twice, at j % W and j % W + W, so the last <= W frames are
        # always one contiguous slice: the window goes to the model without a 75 MB stack.
        self._ring = None

    def _reset_finish(self):
        # With a chosen overlap every later window may re-use up to window - 1 final frames.
        keep = (self.window - 1 if self.flush_mode == 'reanchor' or self.controller is not None
                else self.overlap)
        self._published = deque(maxlen=max(keep, 1))  # (index, disparity) final values
        self._held = []  # blend: [index, stamp, disparity, confidence, window] not yet final
        self._drift_ref = None  # running mean of aligned windows' (p2, p98)
        self._drift_count = 0

    def _count(self, name, count=1):
        with self._lock:
            self._counts[name] += count

    def _drop(self, reason, count=1):
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + count

    def _check_frame(self, frame):
        arr = np.asarray(frame) if isinstance(frame, np.ndarray) else None
        if arr is None or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 \
                or arr.shape[0] < 1 or arr.shape[1] < 1:
            self._drop('invalid')
            desc = (f'shape {arr.shape} dtype {arr.dtype}' if arr is not None
                    else type(frame).__name__)
            raise InputError(f'frame must be an (H, W, 3) uint8 RGB numpy array, got {desc}; '
                             'convert the image first (e.g. ros/messages.py)')
        return arr

    def _reference(self, indices):
        """Return the final-or-held values for ``indices`` (all must be known)."""
        held = {h[0]: h[2] for h in self._held}
        pub = dict(self._published)
        return np.stack([held[i] if i in held else pub[i] for i in indices])

    def _known(self, index):
        return any(h[0] == index for h in self._held) or any(p[0] == index
                                                            for p in self._published)

    def _store(self, frame):
        w = self.window
        if self._ring is None or self._ring.shape[1:] != frame.shape:
            self._ring = np.empty((2 * w,) + frame.shape, np.uint8)
        slot = self._next_index % w
        self._ring[slot] = frame
        self._ring[slot + w] = frame

    def _batch(self, size):
        """Return the last ``size`` frames as a read-only ``(size, H, W, 3)`` view."""
        start = (self._next_index - size) % self.window
        view = self._ring[start:start + size]
        view.flags.writeable = False
        return view

    def _predict(self, batch):
        t0 = self.clock()
        raw = self.regressor.predict(batch)
        seconds = float(self.clock() - t0)
        with self._lock:
            self._last['last_model_seconds'] = seconds
        raw = np.asarray(raw, dtype=np.float32)
        want = batch.shape[:3]
        if raw.shape != want:
            raise InputError(f'regressor returned shape {raw.shape} for {want[0]} frames of '
                             f'{want[2]}x{want[1]}; predict must return (T, H, W)')
        with np.errstate(invalid='ignore', over='ignore'):
            finite = math.isfinite(float(np.add.reduce(raw, axis=None, dtype=np.float64)))
        if not finite:
            raw = np.where(np.isinf(raw), np.float32(np.nan), raw)  # inf is no data, too
        return raw, seconds

    def _cut(self, size, final):
        """Run the model on the last ``size`` buffered frames; yield the step to finish.

        :return: True, or False when the model failed (a :class:`_Failed` step was yielded
            and the model side restarted).
        """
        frames = list(self._frames)[len(self._frames) - size:]
        job = _Job(self._k, [(f[1], f[2]) for f in frames], final, self._new)
        try:
            raw, seconds = self._predict(self._batch(size))
        except Exception as exc:  # noqa: BLE001 - handed to the finishing side, then raised
            self._reset_model()
            yield _Failed(job, exc)
            return False
        self._count('windows')
        self._k += 1
        self._new = 0
        if self.controller is not None:
            finish = self._finish_seconds + self.sink_seconds
            self.controller.service(max(seconds, finish) if self.overlapped
                                    else seconds + finish)
            self.overlap = self.controller.choose()
            self.hop = self.window - self.overlap
            with self._lock:
                self._last['overlap'] = self.overlap
        # Blend holds back as many frames as the next window will share.
        job.next_overlap = self.overlap
        yield _Window(job, raw)
        return True

    def _align(self, step):
        """Align one window's raw output to the final values; return the emitted frames."""
        job, raw = step.job, step.raw
        k = job.k
        indices = [f[1] for f in job.frames]
        ro = 0
        while ro < len(indices) and self._known(indices[ro]):
            ro += 1
        if ro == 0:
            aligned = apply_alignment(raw, IDENTITY)  # zero negatives as every later window
            fit = IDENTITY
            conf = np.ones(raw.shape[1:], np.float32)
        else:
            ref = self._reference(indices[:ro])
            fit = clip_scale(fit_scale_shift(raw[:ro], ref, robust=self.robust,
                                             prior=self._drift_prior(raw),
                                             symmetric=self.symmetric), self.scale_clip)
            aligned = apply_alignment(raw, fit)
            conf = disagreement_confidence(ref, aligned[:ro], self.confidence_tau)
        with self._lock:
            self._last.update(last_scale=float(fit.scale), last_shift=float(fit.shift),
                              last_residual=float(fit.residual), last_clipped=bool(fit.clipped),
                              last_inlier_fraction=float(fit.inlier_fraction),
                              last_overlap=ro)
        self._update_drift_reference(aligned)
        out = []
        held = {h[0]: h for h in self._held}
        # Held frames (blend) are finalised by cross-fading them with this window.
        if held:
            pos = [j for j in range(ro) if indices[j] in held]
            # A held frame this window does not share (its overlap shrank) is final as held.
            out += [self._final(*h) for h in self._held
                    if h[0] < indices[0] or h[0] not in indices[:ro]]
            if pos:
                weights = crossfade_weights(len(pos))
                blended = crossfade(np.stack([held[indices[j]][2] for j in pos]),
                                    aligned[pos], weights)
                for n, j in enumerate(pos):
                    out.append(self._final(indices[j], held[indices[j]][1], blended[n], conf, k))
            self._held = []
        new = list(range(ro, len(indices)))
        hold = 0 if job.final or self.policy == 'immediate' else min(job.next_overlap, len(new))
        for j in new[: len(new) - hold]:
            out.append(self._final(indices[j], job.frames[j][0], aligned[j], conf, k))
        for j in new[len(new) - hold:]:
            self._held.append([indices[j], job.frames[j][0], aligned[j], conf, k])
        return out

    def _final(self, index, stamp, disparity, conf, k):
        disparity = np.ascontiguousarray(disparity, dtype=np.float32)
        # Read-only: the same array is the alignment reference of the next window.
        disparity.flags.writeable = False
        if np.isnan(disparity).any():
            confidence = np.where(np.isnan(disparity), np.float32(0), conf)
        else:
            confidence = conf
        confidence.flags.writeable = False
        self._published.append((index, disparity))
        self._count('emitted')
        return DepthFrame(stamp, disparity, confidence, index, k)

    def _release_held(self):
        out = [self._final(*h) for h in self._held]
        self._held = []
        return out

    def _update_drift_reference(self, aligned):
        if self.drift_strength == 0:
            return
        q = _percentiles(aligned)
        if q is None:
            return
        self._drift_count += 1
        if self._drift_ref is None:
            self._drift_ref = np.asarray(q)
            return
        # Running mean over the whole stream, or exponential with a time constant of
        # drift_horizon windows: O(1) memory on an endless stream.
        n = self._drift_count if self.drift_horizon is None else min(self._drift_count,
                                                                     self.drift_horizon)
        self._drift_ref = self._drift_ref + (np.asarray(q) - self._drift_ref) / n

    def _drift_prior(self, raw):
        if self.drift_strength == 0 or self._drift_ref is None:
            return None
        q = _percentiles(raw)
        if q is None:
            return None
        return np.asarray(q), self._drift_ref, self.drift_strength


class OfflineStitcher:
    """The reference non-causal stitching, fed window by window, releasing final frames.

    A frame is final once no later window covers it; at most one window of stitched values
    is held. Equal to :func:`~dvd_ros.stream.align.stitch_offline` on the same outputs.

    :param total: frames in the video.
    :param window: frames per window.
    :param overlap: nominal overlap.
    :param variant: ``'single'`` (test_single_video.py: last window re-anchored, scale clipped)
        or ``'eval'`` (eval script: short last window, no scale clip).
    :param scale_clip: ``'reference'`` (the variant's own rule), ``(low, high)`` or None.
    :param robust: see :func:`~dvd_ros.stream.align.fit_scale_shift` (False = reference).
    """

    def __init__(self, total, window, overlap, variant='single', scale_clip='reference',
                 robust=False):
        _check_choice(variant, ('single', 'eval'), 'variant')
        schedule = offline_windows if variant == 'single' else eval_windows
        self.windows = schedule(total, window, overlap)
        self.total = total
        if isinstance(scale_clip, str) and scale_clip == 'reference':
            scale_clip = REFERENCE_SCALE_CLIP if variant == 'single' else None
        self.scale_clip = check_scale_clip(scale_clip)
        self.robust = robust
        self._k = 0
        self._tail = None  # stitched values of [tail_start, prev_end)
        self._tail_start = 0
        self.alignments = []

    @property
    def next_window(self):
        """Return the ``(start, end)`` whose output :meth:`add` expects next, or None."""
        return self.windows[self._k] if self._k < len(self.windows) else None

    def add(self, output):
        """Stitch the next window's output; return ``[(index, value)]`` that became final.

        :param output: ``(n, ...)`` raw model output of :attr:`next_window` (``n >=
            end - start``; extra padded frames are ignored).
        :return: list of ``(frame index, (...) float32)`` in order.
        """
        if self.next_window is None:
            raise InputError(f'all {len(self.windows)} windows were already added')
        start, end = self.next_window
        output = np.asarray(output, dtype=np.float32)
        if len(output) < end - start:
            raise InputError(f'window [{start}, {end}) needs {end - start} frames of output, got '
                             f'{len(output)}')
        raw = output[: end - start]
        if self._tail is None:
            merged, fit = raw.copy(), IDENTITY
        else:
            tail = self._tail[start - self._tail_start:]
            merged, fit = stitch_step(tail, raw, self.scale_clip, True, self.robust)
        self.alignments.append(fit)
        self._k += 1
        nxt = self.next_window
        keep_from = nxt[0] if nxt is not None else end
        cut = keep_from - start
        out = [(start + i, merged[i]) for i in range(cut)]
        self._tail = merged[cut:]
        self._tail_start = keep_from
        return out


def run_offline(regressor, frames, window, overlap, total=None, variant='single',
                scale_clip='reference', robust=False):
    """Yield ``(index, disparity (H, W) float32)`` for every frame, stitched like the reference.

    Frames are read lazily; at most one window of frames and of stitched values is held.

    :param regressor: anything with ``predict(uint8 (T, H, W, 3)) -> float32 (T, H, W)``.
    :param frames: iterable of ``(H, W, 3)`` uint8 frames.
    :param window: frames per window.
    :param overlap: nominal overlap.
    :param total: number of frames (default ``len(frames)``; needed for iterators).
    :param variant: ``'single'`` or ``'eval'`` (see :class:`OfflineStitcher`).
    :param scale_clip: ``'reference'``, ``(low, high)`` or None.
    :param robust: see :func:`~dvd_ros.stream.align.fit_scale_shift`.
    :return: generator.
    """
    if total is None:
        try:
            total = len(frames)
        except TypeError as exc:
            raise InputError('run_offline needs total= when frames is an iterator') from exc
    check_window(window, overlap)
    stitcher = OfflineStitcher(total, window, overlap, variant, scale_clip, robust)
    source = iter(frames)
    buffer = []
    base = 0
    read = 0
    while stitcher.next_window is not None:
        start, end = stitcher.next_window
        while read < end:
            try:
                buffer.append(next(source))
            except StopIteration:
                raise InputError(f'frames ended after {read} of total={total}') from None
            read += 1
        batch = np.stack(buffer[start - base:end - base])
        raw = np.asarray(regressor.predict(batch), dtype=np.float32)
        yield from stitcher.add(raw)
        nxt = stitcher.next_window
        if nxt is not None:
            del buffer[: nxt[0] - base]
            base = nxt[0]
