"""Which frames form each window: the reference offline rules and the causal schedule.

Windows are half-open frame ranges ``(start, end)``. The model itself pads a window to
``4n + 1`` frames (:func:`pad_length`); the schedule only decides which real frames go in.
"""

from dataclasses import dataclass

from dvd_ros.errors import InputError


def check_window(window, overlap):
    """Validate a window length and overlap; raise :class:`InputError` naming the fix.

    :param window: frames per window, ``>= 1``.
    :param overlap: frames shared by consecutive windows, ``0 <= overlap < window``.
    :return: ``(window, overlap)`` as ints.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise InputError(f'window must be an integer >= 1 (81 is the DVD default), got {window!r}')
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < window:
        raise InputError(f'overlap must be an integer in [0, window={window}) (21 is the DVD '
                         f'default for window 81), got {overlap!r}')
    return window, overlap


def _check_length(total):
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise InputError(f'number of frames must be an integer >= 0, got {total!r}')
    return total


def pad_length(num_frames):
    """Return the smallest ``4n + 1 >= num_frames`` (the temporal length the VAE accepts).

    :param num_frames: real frames in the window, ``>= 1``.
    :return: padded length; the extra frames repeat the last one and their outputs are dropped.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f'a window needs at least one frame, got {num_frames!r}')
    return num_frames + (5 - num_frames % 4) % 4


def offline_windows(total, window, overlap):
    """Return the windows of ``test_single_video.py`` for a video of ``total`` frames.

    Hop ``window - overlap``; the last window is re-anchored to the final ``window`` frames
    ``[max(0, total - window), total)``, so its overlap with the previous one is usually
    larger than ``overlap``.

    :param total: frames in the video (0 gives no window).
    :param window: frames per window.
    :param overlap: nominal overlap.
    :return: list of ``(start, end)``.
    """
    total = _check_length(total)
    window, overlap = check_window(window, overlap)
    if total == 0:
        return []
    if total <= window:
        return [(0, total)]
    hop = window - overlap
    out = [(0, window)]
    start = hop
    while start + window < total:
        out.append((start, start + window))
        start += hop
    out.append((max(0, total - window), total))
    return out


def eval_windows(total, window, overlap):
    """Return the windows of the evaluation script (``test_from_trained_all_vid.py``).

    Same hop as :func:`offline_windows`, but the last window is ``[start, total)``: not
    re-anchored, possibly short (the model pads it), so every overlap is the nominal one.

    :param total: frames in the video (0 gives no window).
    :param window: frames per window.
    :param overlap: nominal overlap.
    :return: list of ``(start, end)``.
    """
    total = _check_length(total)
    window, overlap = check_window(window, overlap)
    hop = window - overlap
    out = []
    start = 0
    while start == 0 or out[-1][1] < total:
        if total == 0:
            return out
        out.append((start, min(start + window, total)))
        start += hop
    return out


@dataclass(frozen=True)
class CausalWindow:
    """One window of the causal schedule.

    ``[start, end)`` are the frames fed to the model; ``[emit_start, end)`` are the frames it
    makes final for the first time (all of them for window 0, the ``hop`` new ones later).
    """

    index: int
    start: int
    end: int
    emit_start: int

    @property
    def overlap(self):
        """Frames of this window that an earlier window already produced."""
        return self.emit_start - self.start


def causal_window(index, window, overlap):
    """Return window ``index`` of the causal schedule (frames ``[k*hop, k*hop + window)``).

    :param index: window number, ``>= 0``.
    :param window: frames per window.
    :param overlap: frames re-used from the previous window.
    :return: :class:`CausalWindow`.
    """
    window, overlap = check_window(window, overlap)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InputError(f'window index must be an integer >= 0, got {index!r}')
    hop = window - overlap
    start = index * hop
    return CausalWindow(index, start, start + window, start if index == 0 else start + overlap)


def causal_windows(total, window, overlap):
    """Return the complete causal windows that fit in ``total`` frames, in order.

    Frames after the last complete window are the stream's tail; see
    :func:`causal_tail_window` for how the end of a stream is handled.

    :param total: frames pushed so far.
    :param window: frames per window.
    :param overlap: frames re-used from the previous window.
    :return: list of :class:`CausalWindow`.
    """
    total = _check_length(total)
    window, overlap = check_window(window, overlap)
    hop = window - overlap
    count = 0 if total < window else (total - window) // hop + 1
    return [causal_window(k, window, overlap) for k in range(count)]


def causal_tail_window(total, window, overlap, mode='reanchor'):
    """Return the window that finalises a stream's tail at end of stream, or ``None``.

    ``mode='reanchor'`` mimics the reference: the last ``window`` frames (the overlap with
    published frames grows). ``mode='pad'`` takes the nominal overlap plus the tail frames and
    lets the model pad the short window to ``4n + 1``.

    :param total: frames pushed in the stream.
    :param window: frames per window.
    :param overlap: frames re-used from the previous window.
    :param mode: ``'reanchor'`` or ``'pad'``.
    :return: :class:`CausalWindow` whose ``[emit_start, end)`` are the tail frames, or ``None``
        when no frame is pending.
    """
    if mode not in ('reanchor', 'pad'):
        raise InputError(f"flush mode must be 'reanchor' or 'pad', got {mode!r}")
    complete = causal_windows(total, window, overlap)
    done = complete[-1].end if complete else 0
    if done == total:
        return None
    if not complete:
        return CausalWindow(0, 0, total, 0)
    start = max(0, total - window) if mode == 'reanchor' else complete[-1].end - overlap
    return CausalWindow(len(complete), start, total, done)
