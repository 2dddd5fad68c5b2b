"""Pair messages by header stamp with bounded buffers (a small stand-in for message_filters).

Stamps are integer nanoseconds (:func:`stamp_ns`). Nothing here imports rclpy, so the logic is
tested without DDS.
"""

import bisect
from collections import deque
from dataclasses import dataclass
import time


def stamp_ns(stamp):
    """Return a builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class _Pending:
    stamp: int
    item: object
    received: float
    infos_seen: int = 0  # CameraInfos that had arrived when the image was queued


class StampBuffer:
    """The newest ``capacity`` messages by stamp; look-up by stamp within a tolerance."""

    def __init__(self, capacity, tolerance_ns=0):
        if capacity < 1:
            raise ValueError(f'capacity must be >= 1, got {capacity}')
        self.capacity = int(capacity)
        self.tolerance_ns = int(tolerance_ns)
        self._stamps = []
        self._items = []

    def __len__(self):
        return len(self._stamps)

    def add(self, stamp, item):
        """Store ``item`` under ``stamp`` (a repeated stamp replaces the older item)."""
        i = bisect.bisect_left(self._stamps, stamp)
        if i < len(self._stamps) and self._stamps[i] == stamp:
            self._items[i] = item
            return
        self._stamps.insert(i, stamp)
        self._items.insert(i, item)
        if len(self._stamps) > self.capacity:
            del self._stamps[0]
            del self._items[0]

    def find(self, stamp):
        """Return the item closest to ``stamp`` within the tolerance, or None."""
        if not self._stamps:
            return None
        i = bisect.bisect_left(self._stamps, stamp)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(self._stamps):
                dt = abs(self._stamps[j] - stamp)
                if dt <= self.tolerance_ns and (best is None or dt < best[0]):
                    best = (dt, self._items[j])
        return None if best is None else best[1]

    def newest_stamp(self):
        """Return the newest stored stamp, or None when empty."""
        return self._stamps[-1] if self._stamps else None

    def latest(self):
        """Return the item with the newest stamp, or None when empty."""
        return self._items[-1] if self._items else None


class StampSync:
    """Pair each image with the CameraInfo of the same stamp (within ``tolerance_ns``).

    An image whose CameraInfo has not arrived waits at most ``timeout_s`` (wall clock) and at
    most ``max_pending`` images; after that it is released alone (``info`` None) so depth never
    stalls on a missing calibration. If no CameraInfo has arrived ``startup_s`` after the first
    image, images stop waiting at all (a camera without calibration). Released pairs keep the
    order in which images arrived.
    """

    def __init__(self, tolerance_ns=0, timeout_s=0.1, max_pending=8, info_capacity=32,
                 startup_s=1.0, clock=time.monotonic):
        self.infos = StampBuffer(info_capacity, tolerance_ns)
        self.startup_s = float(startup_s)
        self._first_image = None
        self.timeout_s = float(timeout_s)
        self.max_pending = int(max_pending)
        self.clock = clock
        self._pending = deque()
        self.unmatched = 0
        self._infos_in = 0  # CameraInfos arrived so far
        self._arrived_stamp = None  # stamp of the CameraInfo that arrived last

    @property
    def pending(self):
        """Return the number of images waiting for their CameraInfo."""
        return len(self._pending)

    def add_info(self, stamp, info):
        """Store a CameraInfo; return the ``(image, info)`` pairs it (or a timeout) releases."""
        self.infos.add(stamp, info)
        self._infos_in += 1
        self._arrived_stamp = stamp
        return self._release()

    def add_image(self, stamp, image):
        """Queue an image; return the ``(image, info)`` pairs that are ready now."""
        now = self.clock()
        if self._first_image is None:
            self._first_image = now
        self._pending.append(_Pending(stamp, image, now, self._infos_in))
        return self._release()

    def poll(self):
        """Return the pairs released by the timeout alone (call periodically)."""
        return self._release()

    def _infos_passed(self, head):
        # CameraInfo arrives in stamp order: once a newer one arrives after the image, the
        # image's own never will. Only infos arriving after it count: a stale one stamped far
        # ahead (the old time line of a bag loop) would otherwise release every later image
        # unpaired, as the newest stored stamp.
        return (self._infos_in > head.infos_seen
                and self._arrived_stamp > head.stamp + self.infos.tolerance_ns)

    def _release(self):
        out = []
        now = self.clock()
        # Release in arrival order: an image waiting for its info also holds back later ones,
        # but never longer than the timeout / pending bound.
        while self._pending:
            head = self._pending[0]
            info = self.infos.find(head.stamp)
            uncalibrated = (len(self.infos) == 0
                            and now - self._first_image >= self.startup_s)
            if info is None and not (uncalibrated
                                     or len(self._pending) > self.max_pending
                                     or now - head.received >= self.timeout_s
                                     or self._infos_passed(head)):
                break
            self._pending.popleft()
            if info is None:
                self.unmatched += 1
            out.append((head.item, info))
        return out
