"""Catch a model window whose output is numerically broken (NaN / inf) before it is published.

A half-precision overflow turns a whole window into NaN or inf; aligned and published, it would
blank the stream and poison the alignment reference of the next windows. The guard wraps any
regressor: a window in which some frame is mostly non-finite raises, so the stream drops the
window's frames (counted) and starts over; a few non-finite pixels stay "no data" (NaN) as the
stream already treats them. Pure numpy.
"""

import threading

import numpy as np

from dvd_ros.errors import InputError

# A frame with more non-finite pixels than this fraction rejects its window.
MAX_NONFINITE_FRACTION = 0.5


class NonFiniteOutput(InputError):
    """The model returned a window whose output is mostly NaN or infinite."""


class FiniteOutputGuard:
    """Regressor wrapper that checks each window's output for NaN and inf.

    Attributes other than :meth:`predict` (``recommended_window``, ``backend_name``,
    ``dtype``, ...) are the wrapped regressor's. Counters (thread-safe): ``windows`` checked,
    ``partial`` windows with a few non-finite pixels, ``rejected`` windows and
    ``rejected_frames`` in them.

    :param regressor: object with ``predict((T, H, W, 3) uint8) -> (T, H, W)``.
    :param max_fraction: largest tolerated non-finite share of one frame's pixels.
    """

    def __init__(self, regressor, max_fraction=MAX_NONFINITE_FRACTION):
        if not 0.0 <= max_fraction < 1.0:
            raise InputError(f'max_fraction must be in [0, 1), got {max_fraction!r}')
        self.regressor = regressor
        self.max_fraction = float(max_fraction)
        self._lock = threading.Lock()
        self.windows = 0
        self.partial = 0
        self.rejected = 0
        self.rejected_frames = 0

    def __getattr__(self, name):
        # Only called for names the guard lacks: the wrapped model's attributes.
        if name == 'regressor':
            raise AttributeError(name)
        return getattr(self.regressor, name)

    def predict(self, frames):
        """Return the wrapped model's output for ``frames`` after checking it.

        :param frames: (T, H, W, 3) uint8 RGB.
        :return: (T, H, W) float32 (non-finite pixels kept; the stream marks them no data).
        :raises NonFiniteOutput: some frame has more than ``max_fraction`` non-finite pixels.
        """
        out = np.asarray(self.regressor.predict(frames), dtype=np.float32)
        with np.errstate(invalid='ignore', over='ignore'):
            finite = np.isfinite(np.add.reduce(out, axis=None, dtype=np.float64))
        bad_fraction = 0.0
        if not finite and out.ndim >= 1 and out.size:
            bad = ~np.isfinite(out.reshape(out.shape[0], -1))
            bad_fraction = float(bad.mean(axis=1).max())
        with self._lock:
            self.windows += 1
            if bad_fraction > self.max_fraction:
                self.rejected += 1
                self.rejected_frames += int(out.shape[0])
            elif not finite:
                self.partial += 1
        if bad_fraction > self.max_fraction:
            raise NonFiniteOutput(
                f"model output is NaN/inf in {bad_fraction:.0%} of a frame's pixels (window of "
                f'{out.shape[0]} frames): not published; a float16 overflow? use dtype '
                'float32 or bfloat16')
        return out
