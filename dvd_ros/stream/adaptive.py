"""Throughput-adaptive overlap: the largest overlap that still keeps up with the camera.

Every window costs the model about the same time whatever its overlap (it always runs
``window`` frames), but only its ``hop = window - overlap`` new frames are output. A stream
keeps up when ``hop / service >= rate``: ``rate`` the input frame rate, ``service`` the time
one window occupies the slowest stage (model and finishing one after the other, or the
slower of the two when they overlap in a pipeline). :class:`OverlapController` measures
both and picks, before each window, ``overlap = window - ceil(rate * service * margin)``
within ``[overlap_min, window - 1]``: more overlap (better alignment, spec 2.2 ablation)
exactly as far as the hardware affords it.
"""

from collections import deque
import math
import statistics

from dvd_ros.errors import InputError

# Headroom over the measured need: absorbs jitter and drains a backlog (each window consumes
# margin - 1 more frames than arrive meanwhile).
DEFAULT_MARGIN = 1.25
# Service times whose median is used: one slow window (warm-up, a hiccup) is outvoted.
SERVICE_HISTORY = 5


class OverlapController:
    """Choose each window's overlap from the measured input rate and window service time.

    :param window: frames per window.
    :param overlap_min: smallest overlap it may choose, ``0 <= overlap_min < window``.
    :param initial: overlap used while nothing is measured yet (no rate or no window).
    :param margin: required throughput over the input rate, ``>= 1``.
    :param rate_frames: arrivals the rate is measured over (default ``2 * window + 1``, at
        least 8: spans a window even when frames arrive in bursts).
    """

    def __init__(self, window, overlap_min, initial, margin=DEFAULT_MARGIN, rate_frames=None):
        if isinstance(overlap_min, bool) or not isinstance(overlap_min, int) \
                or not 0 <= overlap_min < window:
            raise InputError(f'overlap_min must be an integer in [0, window={window}) (1 keeps '
                             f'one frame for the alignment), got {overlap_min!r}')
        if not overlap_min <= initial < window:
            raise InputError(f'the starting overlap ({initial}) must be in [overlap_min='
                             f'{overlap_min}, window={window}); raise overlap or lower '
                             'overlap_min')
        margin = float(margin)
        if not (math.isfinite(margin) and margin >= 1.0):
            raise InputError(f'overlap margin must be a number >= 1, got {margin!r}')
        self.window, self.overlap_min, self.initial = window, overlap_min, initial
        self.margin = margin
        size = rate_frames if rate_frames is not None else max(8, 2 * window + 1)
        self._arrivals = deque(maxlen=max(2, int(size)))
        self._service = deque(maxlen=SERVICE_HISTORY)

    def arrival(self, seconds):
        """Record the arrival time of one input frame (seconds on a monotonic clock)."""
        self._arrivals.append(float(seconds))

    def service(self, seconds):
        """Record how long one window occupied the slowest stage (seconds)."""
        if math.isfinite(seconds) and seconds >= 0:
            self._service.append(float(seconds))

    @property
    def rate(self):
        """Return the measured input rate in frames/s, or None before two distinct arrivals."""
        if len(self._arrivals) < 2:
            return None
        span = self._arrivals[-1] - self._arrivals[0]
        if span <= 0:
            return None
        return (len(self._arrivals) - 1) / span

    @property
    def service_seconds(self):
        """Return the median recent window service time (seconds), or None."""
        return statistics.median(self._service) if self._service else None

    def needed_hop(self):
        """Return the new frames per window needed to keep up (may exceed the window)."""
        rate, service = self.rate, self.service_seconds
        if rate is None or service is None:
            return None
        # The epsilon keeps an exact fit (rate * service == hop) from rounding up.
        return max(1, math.ceil(rate * service * self.margin - 1e-9))

    def choose(self):
        """Return the overlap of the next window."""
        hop = self.needed_hop()
        if hop is None:
            return self.initial
        return min(self.window - 1, max(self.overlap_min, self.window - hop))
