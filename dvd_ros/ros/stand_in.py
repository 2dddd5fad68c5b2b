"""A fast deterministic stand-in for ``DepthRegressor`` (tests and DDS benchmarks only).

Selected with the node parameter ``backend: stand-in``. It imports no torch, so a node process
using it starts in well under a second; ``delay`` makes each window take a fixed time, to
simulate a model slower than the camera.
"""

import time

import numpy as np

from dvd_ros.errors import InputError


class StandInRegressor:
    """Brightness as disparity: ``(T, H, W, 3) uint8 -> (T, H, W) float32`` in [0, 1].

    Not a depth estimator: bright pixels count as near. Deterministic, pixel-wise, so tests can
    predict every output value.
    """

    backend_name = 'stand-in'
    dtype = 'float32'
    device = 'cpu'

    def __init__(self, delay=0.0):
        if not delay >= 0.0:
            raise InputError(f'stand-in delay must be >= 0 seconds, got {delay!r}')
        self.delay = float(delay)
        self.calls = 0

    def predict(self, frames):
        """Return the per-pixel channel mean / 255 of each frame (after ``delay`` seconds).

        :param frames: (T, H, W, 3) uint8 RGB.
        :return: (T, H, W) float32 in [0, 1].
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise InputError(f'stand-in expects (T, H, W, 3) uint8 frames, got {frames.dtype} '
                             f'{frames.shape}')
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return disparity_of(frames)


def disparity_of(frames):
    """Return what :class:`StandInRegressor` predicts: ``(..., 3) uint8 -> (...) float32``."""
    return frames.astype(np.float32).mean(axis=-1) / np.float32(255.0)
