"""Host <-> device transfers of one window: uint8 frames up, float32 depth down.

Frames travel as uint8 (a quarter of float32's bytes); the conversion to float, the
normalisation and the resize to the processing size run on the device afterwards
(``DepthRegressor.predict``). On CUDA both directions go through page-locked (pinned) host
memory with non-blocking copies; the pinned blocks come from torch's caching host allocator,
which reuses a block only once the copies recorded on it have completed, so a window still
being finished on the CPU (``stream.pipeline``) never sees its memory overwritten by the
next one.
"""

import numpy as np
import torch


def upload_frames(frames, device):
    """Copy ``(T, H, W, 3)`` uint8 frames to ``device``, as uint8.

    :param frames: C-contiguous uint8 array; may be read-only (the stream's frame ring).
    :param device: ``torch.device``.
    :return: ``(T, H, W, 3)`` uint8 tensor on ``device`` (on CUDA the copy may still be in
        flight; later work on the current stream is ordered after it).
    """
    if device.type == 'cuda':
        host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
        host.numpy()[...] = frames  # the one host copy, straight into page-locked memory
        return host.to(device, non_blocking=True)
    if not frames.flags.writeable:
        # Frames decoded from ROS messages, or the stream's ring, are read-only views;
        # torch wants memory it may write.
        frames = frames.copy()
    return torch.from_numpy(frames).to(device)


def download(values):
    """Return ``values`` (any float tensor) as a float32 numpy array on the host.

    On CUDA the copy goes into pinned memory, non-blocking, and waits for the current stream
    only once (no pageable bounce buffer). The array owns its memory until dropped.
    """
    values = values.float()
    if values.device.type == 'cuda':
        host = torch.empty(values.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(values, non_blocking=True)
        torch.cuda.current_stream(values.device).synchronize()
        return host.numpy()
    return np.asarray(values.cpu().numpy(), dtype=np.float32)
