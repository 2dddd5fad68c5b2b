"""Window transfers: uint8 frames up, float32 depth down (pinned + non-blocking on CUDA)."""

import numpy as np
import pytest
import torch

from dvd_ros.model.transfer import download, upload_frames

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')


def frames(seed=0, shape=(5, 20, 24, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def read_only(array):
    """Return ``array`` as a read-only slice of a doubled ring, like the stream's."""
    ring = np.concatenate([array, array])
    view = ring[len(array):2 * len(array)]
    view.flags.writeable = False
    return view


def test_cpu_upload_keeps_uint8_and_accepts_read_only_frames():
    src = frames()
    view = read_only(src)
    out = upload_frames(view, torch.device('cpu'))
    assert out.dtype == torch.uint8 and tuple(out.shape) == src.shape
    np.testing.assert_array_equal(out.numpy(), src)
    assert not np.shares_memory(out.numpy(), view)  # torch never writes into the ring


def test_cpu_download_is_float32_numpy():
    values = torch.linspace(0, 1, 60, dtype=torch.bfloat16).reshape(3, 4, 5)
    out = download(values)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, values.float().numpy())


@CUDA
def test_cuda_round_trip_through_pinned_memory():
    device = torch.device('cuda')
    src = frames(1, (9, 48, 64, 3))
    up = upload_frames(read_only(src), device)
    assert up.device.type == 'cuda' and up.dtype == torch.uint8
    values = up.float().mean(dim=-1) / 255.0
    out = download(values)
    np.testing.assert_allclose(out, src.astype(np.float32).mean(axis=-1) / 255.0, atol=1e-6)
    first = out.copy()
    # The next window may reuse pinned blocks; an array still held keeps its values.
    for seed in range(2, 5):
        download(upload_frames(frames(seed, src.shape), device).float())
    np.testing.assert_array_equal(out, first)
