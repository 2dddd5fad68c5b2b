"""Rates, latencies and drop counters of the depth node, reported on /diagnostics."""

from collections import Counter, deque
import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

# Share of the input frames of the last horizon that were dropped from which the status is
# WARN (the model keeps up with at most every other frame); ERROR when all were.
DROP_WARN_FRACTION = 0.5


class RateMeter:
    """Events per second over the last ``horizon_s`` seconds (bounded memory)."""

    def __init__(self, horizon_s=5.0, capacity=4096, clock=time.monotonic):
        self.horizon_s = float(horizon_s)
        self.clock = clock
        self._times = deque(maxlen=capacity)
        self.total = 0

    def tick(self, now=None):
        """Record one event."""
        self._times.append(self.clock() if now is None else now)
        self.total += 1

    def rate(self, now=None):
        """Return events per second in the horizon (0 with fewer than two events)."""
        now = self.clock() if now is None else now
        while self._times and now - self._times[0] > self.horizon_s:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0


class Recent:
    """The last ``capacity`` values of a quantity: mean, max, last."""

    def __init__(self, capacity=256):
        self._values = deque(maxlen=capacity)

    def add(self, value):
        """Record one value."""
        self._values.append(float(value))

    def __len__(self):
        return len(self._values)

    @property
    def last(self):
        """Return the newest value (NaN when empty)."""
        return self._values[-1] if self._values else float('nan')

    @property
    def mean(self):
        """Return the mean of the kept values (NaN when empty)."""
        return sum(self._values) / len(self._values) if self._values else float('nan')

    @property
    def max(self):
        """Return the largest kept value (NaN when empty)."""
        return max(self._values) if self._values else float('nan')


class NodeStats:
    """Thread-safe counters of one depth node (callbacks and the worker both write)."""

    def __init__(self, clock=time.monotonic):
        self.lock = threading.Lock()
        self.clock = clock
        self.input_rate = RateMeter(clock=clock)
        self.output_rate = RateMeter(clock=clock)
        self.latency_s = Recent()
        self.model_s = Recent()
        self.dropped = Counter()
        self.windows = 0
        # (time, frames in, frames dropped) at each status: the counts of the last horizon.
        self._totals = deque([(clock(), 0, 0)], maxlen=4096)

    def recent(self, now, frames_in, dropped):
        """Record the totals at ``now``; return (frames in, dropped) of the last horizon.

        Call with the lock held. The baseline is the newest record at least one horizon old
        (the first record, at start-up, until then).
        """
        horizon = self.input_rate.horizon_s
        totals = self._totals
        while len(totals) > 1 and now - totals[1][0] >= horizon:
            totals.popleft()
        _, in0, dropped0 = totals[0]
        totals.append((now, frames_in, dropped))
        return frames_in - in0, dropped - dropped0

    def restart_horizon(self):
        """Make the recent counts start now (frames dropped before no longer set the level).

        E.g. once the model is loaded: the queue overflowed while it loaded, which says nothing
        about whether the running node keeps up. The totals stay.
        """
        with self.lock:
            self._totals.clear()
            self._totals.append((self.clock(), self.input_rate.total,
                                 sum(self.dropped.values())))

    def drop(self, reason, n=1):
        """Count ``n`` frames dropped for ``reason``."""
        with self.lock:
            self.dropped[reason] += n

    @property
    def dropped_total(self):
        """Return all frames dropped so far."""
        with self.lock:
            return sum(self.dropped.values())


def status(name, hardware_id, stats, extra, queue_length, queue_size, more_dropped=None,
           now=None, loading=False, error=None):
    """Build the DiagnosticStatus of a depth node.

    Levels: ERROR when the node failed (``error``) or every frame of the last horizon was
    dropped (an unsupported encoding: nothing is published); WARN without input, or when at
    least :data:`DROP_WARN_FRACTION` of the recent frames were dropped; OK otherwise, also
    while the model loads.

    :param name: status name (the node's fully qualified name).
    :param hardware_id: e.g. the camera frame_id.
    :param stats: :class:`NodeStats`.
    :param extra: further ``{key: value}`` pairs (backend, dtype, metric mode and fit, ...).
    :param queue_length: frames waiting for the worker now.
    :param queue_size: the bound of that queue.
    :param more_dropped: ``{reason: count}`` of frames dropped elsewhere (the estimator).
    :param now: the clock's time (default: now).
    :param loading: the model is still loading (frames queue meanwhile).
    :param error: why the node stopped working, or None.
    :return: diagnostic_msgs/DiagnosticStatus.
    """
    now = stats.clock() if now is None else now
    with stats.lock:
        in_rate = stats.input_rate.rate(now)
        out_rate = stats.output_rate.rate(now)
        dropped = Counter(stats.dropped)
        dropped.update(more_dropped or {})
        # A cause counted with 0 frames (a time jump with no image pending) is no drop.
        dropped = +dropped
        recent_in, recent_dropped = stats.recent(now, stats.input_rate.total,
                                                 sum(dropped.values()))
        values = {
            'input rate (Hz)': f'{in_rate:.2f}',
            'output rate (Hz)': f'{out_rate:.2f}',
            'frames in': stats.input_rate.total,
            'frames out': stats.output_rate.total,
            'latency stamp->publish mean (ms)': f'{stats.latency_s.mean * 1e3:.1f}',
            'latency stamp->publish max (ms)': f'{stats.latency_s.max * 1e3:.1f}',
            'model time per window (ms)': f'{stats.model_s.last * 1e3:.1f}',
            'model time per window mean (ms)': f'{stats.model_s.mean * 1e3:.1f}',
            'windows run': stats.windows,
            'queue': f'{queue_length}/{queue_size}',
            'frames dropped': sum(dropped.values()),
        }
    values.update({f'dropped: {reason}': n for reason, n in sorted(dropped.items())})
    values.update(extra)
    horizon = f'{stats.input_rate.horizon_s:.0f} s'
    causes = ', '.join(sorted(dropped))
    level, message = DiagnosticStatus.OK, 'running'
    if error:
        level, message = DiagnosticStatus.ERROR, error
    elif loading:
        message = 'loading the model (input frames queue meanwhile)'
    elif stats.input_rate.total == 0:
        level, message = DiagnosticStatus.WARN, 'no input images yet'
    elif recent_in > 0 and recent_dropped >= recent_in:
        level = DiagnosticStatus.ERROR
        message = f'every frame of the last {horizon} dropped, none published ({causes})'
    elif in_rate == 0.0:
        level, message = DiagnosticStatus.WARN, f'no input images for {horizon}'
    elif recent_in > 0 and recent_dropped >= DROP_WARN_FRACTION * recent_in:
        level = DiagnosticStatus.WARN
        message = (f'{recent_dropped} of {recent_in} frames of the last {horizon} dropped '
                   f'({causes})')
    elif dropped:
        message = f'running; {sum(dropped.values())} frames dropped ({causes})'
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])
