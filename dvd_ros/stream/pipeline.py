"""Pipelined streaming: the model runs window k+1 while window k is finished on the CPU.

:class:`Pipeline` is the generic part: stages on their own threads joined by bounded FIFO
queues (one thread per stage, so items keep their order; bounded, so memory is too).
:class:`StreamPipeline` runs a :class:`~dvd_ros.stream.estimator.StreamingDepth` on it: its
model side (frames into windows, ``regressor.predict``) on one thread, its finishing side
(alignment, confidence, emission) and the caller's ``sink`` (colorizing, point clouds,
publishing) on another. Both sides are the code :meth:`StreamingDepth.push` runs one after
the other, so the frames, values and order are the same; only the time overlaps. No torch
and no ROS here: the GPU specifics live behind the regressor, publishing in the sink.
"""

from collections import deque
import threading
import time

from dvd_ros.errors import InputError
from dvd_ros.stream.estimator import StreamingDepth

OVERFLOW_POLICIES = ('block', 'drop_oldest')
# How often a blocked thread looks whether the pipeline was cancelled (seconds).
_POLL_S = 0.05


class Cancelled(Exception):
    """Raised inside the pipeline's threads when it is cancelled."""


class BoundedQueue:
    """A FIFO of at most ``capacity`` items that producers and consumers can be woken from.

    :param capacity: largest number of queued items, ``>= 1``.
    """

    def __init__(self, capacity):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InputError(f'queue capacity must be an integer >= 1, got {capacity!r}')
        self.capacity = capacity
        self._items = deque()
        self._cond = threading.Condition()
        self._cancelled = False
        self.high_water = 0  # the most items it ever held

    def __len__(self):
        """Return the number of queued items."""
        with self._cond:
            return len(self._items)

    @property
    def cancelled(self):
        """Return True once :meth:`cancel` was called."""
        return self._cancelled

    def put(self, item, timeout=None):
        """Append ``item``, waiting while the queue is full.

        :param timeout: seconds to wait at most (None = until there is room).
        :return: True when queued, False on timeout.
        :raises Cancelled: the queue was cancelled.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._items) >= self.capacity:
                if self._cancelled:
                    raise Cancelled()
                left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
                if left <= 0:
                    return False
                self._cond.wait(left)
            if self._cancelled:
                raise Cancelled()
            self._append(item)
            return True

    def put_evicting(self, item, evictable):
        """Append ``item``; when full, first remove the oldest item ``evictable(item)`` accepts.

        Waits like :meth:`put` when no queued item may be evicted.

        :return: the evicted item, or None.
        :raises Cancelled: the queue was cancelled.
        """
        with self._cond:
            evicted = None
            if len(self._items) >= self.capacity:
                for i, queued in enumerate(self._items):
                    if evictable(queued):
                        evicted = queued
                        del self._items[i]
                        break
            if evicted is None:
                while len(self._items) >= self.capacity and not self._cancelled:
                    self._cond.wait(_POLL_S)
            if self._cancelled:
                raise Cancelled()
            self._append(item)
            return evicted

    def get(self):
        """Remove and return the oldest item, waiting for one.

        :raises Cancelled: the queue was cancelled.
        """
        with self._cond:
            while not self._items:
                if self._cancelled:
                    raise Cancelled()
                self._cond.wait(_POLL_S)
            if self._cancelled:
                raise Cancelled()
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def cancel(self):
        """Wake every waiting thread with :class:`Cancelled`; return the items left."""
        with self._cond:
            self._cancelled = True
            left = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return left

    def _append(self, item):
        self._items.append(item)
        self.high_water = max(self.high_water, len(self._items))
        self._cond.notify_all()


class _Barrier:
    """Passes through every stage; the last one sets ``done``."""

    def __init__(self):
        self.done = threading.Event()


_CLOSE = object()


class Pipeline:
    """Stages on their own threads, joined by bounded FIFO queues; items keep their order.

    Each stage is ``(name, fn)``: ``fn(item)`` returns an iterable of items for the next stage
    (what the last stage returns is discarded). An exception raised by ``fn`` goes to
    ``on_error(stage name, exception)`` and the stage goes on with its next item.

    :param stages: list of ``(name, fn)``, at least one.
    :param capacity: items each queue holds at most (the first one: ``input_capacity``).
    :param input_capacity: items the input queue holds (default ``capacity``).
    :param on_error: ``(stage name, exception) -> None``; default: ignore.
    :param name: prefix of the thread names.
    """

    def __init__(self, stages, capacity=1, input_capacity=None, on_error=None, name='pipeline'):
        if not stages:
            raise InputError('a pipeline needs at least one stage')
        self.queues = [BoundedQueue(capacity if i else (input_capacity or capacity))
                       for i in range(len(stages))]
        self._on_error = on_error or (lambda stage, exc: None)
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, args=(i, stage_name, fn),
                                          name=f'{name}_{stage_name}', daemon=True)
                         for i, (stage_name, fn) in enumerate(stages)]
        for thread in self._threads:
            thread.start()

    @property
    def alive(self):
        """Return True while any stage thread runs."""
        return any(t.is_alive() for t in self._threads)

    @property
    def closed(self):
        """Return True once :meth:`close` or :meth:`cancel` was called (no more input)."""
        return self._closed

    def put(self, item, timeout=None):
        """Queue ``item`` for the first stage, waiting while the queue is full.

        :return: True when queued; False on timeout or when the pipeline is closed.
        """
        if self._closed:
            return False
        try:
            return self.queues[0].put(item, timeout)
        except Cancelled:
            return False

    def put_evicting(self, item, evictable):
        """Queue ``item``, evicting the oldest queued item ``evictable`` accepts when full.

        :return: ``(queued, evicted item or None)``.
        """
        if self._closed:
            return False, None
        try:
            return True, self.queues[0].put_evicting(item, evictable)
        except Cancelled:
            return False, None

    def barrier(self, timeout=None):
        """Wait until every item queued before has passed through all stages.

        :return: True when it has; False on timeout or when the pipeline stopped.
        """
        marker = _Barrier()
        if not self.put(marker, timeout):
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        while not marker.done.wait(_POLL_S):
            if not self.alive or self.queues[0].cancelled or (
                    deadline is not None and time.monotonic() > deadline):
                return False
        return True

    def close(self, timeout=None):
        """Finish every queued item, then stop the threads.

        :param timeout: seconds to wait for the threads (None = as long as it takes).
        :return: True when every thread ended.
        """
        if not self._closed:
            try:
                self.queues[0].put(_CLOSE)
            except Cancelled:
                pass
            self._closed = True
        return self.join(timeout)

    def cancel(self, timeout=None):
        """Stop now: queued items are discarded, a running ``fn`` call is waited for.

        :param timeout: seconds to wait for the threads.
        :return: ``(True when every thread ended, the items left in the input queue)``.
        """
        self._closed = True
        left = self.queues[0].cancel()
        for q in self.queues[1:]:
            q.cancel()
        return self.join(timeout), [i for i in left if i is not _CLOSE
                                    and not isinstance(i, _Barrier)]

    def join(self, timeout=None):
        """Wait for the threads (at most ``timeout`` seconds in all); return True if ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = threading.current_thread()
        for thread in self._threads:
            if thread is current:
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads if t is not current)

    def _serve(self, index, stage_name, fn):
        inbox = self.queues[index]
        outbox = self.queues[index + 1] if index + 1 < len(self.queues) else None
        try:
            while True:
                item = inbox.get()
                if item is _CLOSE or isinstance(item, _Barrier):
                    if outbox is not None:
                        outbox.put(item)
                    elif isinstance(item, _Barrier):
                        item.done.set()
                    if item is _CLOSE:
                        return
                    continue
                try:
                    for result in fn(item):
                        if outbox is not None:
                            outbox.put(result)
                except Cancelled:
                    raise
                except Exception as exc:  # noqa: BLE001 - one bad item must not stop a stage
                    self._on_error(stage_name, exc)
        except Cancelled:
            return


class StreamPipeline:
    """A :class:`StreamingDepth` on two threads: the model, and finishing + ``sink``.

    ``push`` validates the frame on the caller's thread (an invalid one raises
    :class:`InputError` and is counted, as with :meth:`StreamingDepth.push`) and queues it;
    the model thread cuts windows and runs the model; the finishing thread aligns each window
    and calls ``sink(frames)`` with the frames it made final, in order. Errors go to
    ``on_error(exception, stage)``: stage ``'model'`` for the model (the stream restarts, its
    frames counted as ``model_error``) and ``on_resize='raise'``, ``'finish'`` for the
    alignment, ``'sink'`` for the sink.

    Memory is bounded: ``input_capacity`` frames in the input queue, ``capacity`` windows of
    model output between the threads, plus the window in the model and the one being
    finished.

    :param streaming: the :class:`StreamingDepth` (not used by anything else meanwhile).
    :param sink: ``(list of DepthFrame) -> None``, called on the finishing thread per window.
    :param on_error: ``(exception, stage) -> None``; default: ignore (the counters still say
        it).
    :param capacity: windows of model output queued for the finishing thread.
    :param input_capacity: frames queued for the model thread.
    :param overflow: a full input queue: ``'block'`` (:meth:`push` waits) or
        ``'drop_oldest'`` (the oldest queued frame is dropped, counted as ``queue_full``).
    :param name: prefix of the thread names.
    """

    def __init__(self, streaming, sink, on_error=None, capacity=1, input_capacity=4,
                 overflow='block', name='stream'):
        if not isinstance(streaming, StreamingDepth):
            raise InputError(f'streaming must be a StreamingDepth, got '
                             f'{type(streaming).__name__}')
        if not callable(sink):
            raise InputError(f'sink must be callable with a list of DepthFrame, got {sink!r}')
        if overflow not in OVERFLOW_POLICIES:
            raise InputError(f'overflow must be one of {OVERFLOW_POLICIES}, got {overflow!r}')
        self.streaming = streaming
        self.sink = sink
        self.overflow = overflow
        self._on_error = on_error or (lambda exc, stage: None)
        streaming.overlapped = True
        self.pipeline = Pipeline([('model', self._model_stage), ('finish', self._finish_stage)],
                                 capacity=capacity, input_capacity=input_capacity,
                                 on_error=self._stage_error, name=name)

    @property
    def alive(self):
        """Return True while the pipeline's threads run."""
        return self.pipeline.alive

    @property
    def queued_frames(self):
        """Return the number of frames and commands waiting for the model thread."""
        return len(self.pipeline.queues[0])

    def push(self, frame, stamp=None, arrival=None, timeout=None):
        """Queue one frame (``overflow='block'``: wait while the input queue is full).

        :param frame: ``(H, W, 3)`` uint8 RGB.
        :param stamp: opaque record returned with its output.
        :param arrival: arrival time (seconds, the stream's clock; default now), for
            ``overlap_mode='auto'``.
        :param timeout: ``'block'``: seconds to wait at most (None = until there is room).
        :return: True when queued; False when it timed out or the pipeline is closed (the
            frame is then counted as dropped, reason ``closed`` or ``queue_full``).
        :raises InputError: invalid frame (counted, reason ``invalid``).
        """
        frame = self.streaming.accept(frame)
        if arrival is None:
            arrival = self.streaming.clock()
        item = ('frame', frame, stamp, arrival)
        if self.overflow == 'drop_oldest':
            queued, evicted = self.pipeline.put_evicting(item, _is_frame)
            if evicted is not None:
                self.streaming.note_dropped('queue_full')
        else:
            queued = self.pipeline.put(item, timeout)
        if not queued:
            # A cancelled pipeline may still be finishing a window (threads alive): that is
            # not a full queue.
            closed = self.pipeline.closed or not self.alive
            self.streaming.note_dropped('closed' if closed else 'queue_full')
        return queued

    def flush(self, wait=True, timeout=None):
        """End the stream: its tail and held frames go to the sink; a new stream starts.

        :param wait: return only when the sink has had them (and everything queued before).
        :param timeout: seconds to wait at most.
        :return: True when queued (and, with ``wait``, delivered).
        """
        if not self.pipeline.put(('flush',), timeout):
            return False
        return self.pipeline.barrier(timeout) if wait else True

    def reset(self, wait=True, timeout=None):
        """Forget the stream after the frames queued before (pending ones count as dropped).

        :return: True when queued (and, with ``wait``, done).
        """
        if not self.pipeline.put(('reset',), timeout):
            return False
        return self.pipeline.barrier(timeout) if wait else True

    def drain(self, timeout=None):
        """Wait until every frame queued so far went through the model and the sink."""
        return self.pipeline.barrier(timeout)

    def close(self, flush=True, timeout=None):
        """Stop after the queued frames (and, with ``flush``, the stream's tail).

        :return: True when the threads ended within ``timeout``.
        """
        if flush:
            self.pipeline.put(('flush',), timeout)
        return self.pipeline.close(timeout)

    def cancel(self, timeout=None):
        """Stop now; queued frames are counted as dropped (reason ``shutdown``).

        A window already in the model is finished first (the model cannot be interrupted);
        ``timeout`` bounds the wait for it.

        :return: True when the threads ended within ``timeout``.
        """
        ended, left = self.pipeline.cancel(timeout)
        frames = sum(1 for item in left if _is_frame(item))
        if frames:
            self.streaming.note_dropped('shutdown', frames)
        return ended

    def join(self, timeout=None):
        """Wait for the threads after :meth:`close` or :meth:`cancel`; True when they ended."""
        return self.pipeline.join(timeout)

    # -- stages -----------------------------------------------------------------------------

    def _model_stage(self, item):
        kind = item[0]
        if kind == 'frame':
            return self.streaming.intake(item[1], item[2], item[3])
        if kind == 'flush':
            return self.streaming.intake_flush()
        return self.streaming.intake_reset()

    def _finish_stage(self, step):
        try:
            frames = self.streaming.finish(step)
        except Exception as exc:  # noqa: BLE001 - reported, the stream goes on
            self._on_error(exc, 'finish')
            return ()
        error = getattr(step, 'error', None)
        if error is not None:
            self._on_error(error, 'model')
        if frames:
            t0 = time.perf_counter()
            try:
                self.sink(frames)
            except Exception as exc:  # noqa: BLE001 - reported, the stream goes on
                self._on_error(exc, 'sink')
            self.streaming.sink_seconds = time.perf_counter() - t0
        return ()

    def _stage_error(self, stage, exc):
        self._on_error(exc, stage)


def _is_frame(item):
    return isinstance(item, tuple) and item[0] == 'frame'
