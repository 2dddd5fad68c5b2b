"""FastWanVAE: the same numbers as diffusers' AutoencoderKLWan, golden fixtures and full size."""

import pytest
from safetensors.torch import load_file
import torch

from dvd_ros.model import checkpoint, presets
from dvd_ros.model.backends.torch_eager import TorchBackend
from dvd_ros.model.fast_vae import FastWanVAE, UnsupportedVAE

EXACT = 1e-5  # float32, ours vs diffusers on the same inputs
GOLDEN = 1e-4  # vs the authors' tensors (diffusers itself is 6e-6 off them)
torch.set_num_threads(1)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(scope='module')
def vae_io(fixtures):
    return load_file(str(fixtures / 'dvd_tiny_vae_io.safetensors'))


@pytest.fixture(scope='module')
def tiny_vae(fixtures):
    return checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors').vae.eval()


@pytest.fixture(scope='module')
def wan21_vae():
    """Return the real Wan2.1 VAE architecture (96 base channels) with random weights."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(**presets.VAE_WAN21).eval()


def stats(vae_io):
    shape = (1, -1, 1, 1, 1)
    return vae_io['latents_mean'].view(shape), vae_io['latents_std'].view(shape)


# ------------------------------------------------------------------ golden fixtures

@pytest.mark.parametrize('temporal', ['taps', 'conv3d'])
@pytest.mark.parametrize('video, latents', [('video', 'latents'), ('image', 'image_latents')])
def test_encode_equals_diffusers_on_golden_fixture(tiny_vae, vae_io, temporal, video, latents):
    fast = FastWanVAE(tiny_vae, temporal=temporal)
    with torch.inference_mode():
        expected = tiny_vae.encode(vae_io[video]).latent_dist.mean
    got = fast.encode(vae_io[video])
    assert got.shape == expected.shape == vae_io[latents].shape
    assert max_err(got, expected) <= EXACT
    mean, std = stats(vae_io)
    assert max_err((got - mean) / std, vae_io[latents]) <= GOLDEN


@pytest.mark.parametrize('temporal', ['taps', 'conv3d'])
@pytest.mark.parametrize('latents, decoded', [('latents', 'decoded'),
                                              ('image_latents', 'image_decoded')])
def test_decode_equals_diffusers_on_golden_fixture(tiny_vae, vae_io, temporal, latents,
                                                   decoded):
    mean, std = stats(vae_io)
    mu = vae_io[latents] * std + mean
    with torch.inference_mode():
        expected = tiny_vae.decode(mu).sample
    got = FastWanVAE(tiny_vae, temporal=temporal).decode(mu)
    assert got.shape == expected.shape == vae_io[decoded].shape
    assert max_err(got, expected) <= EXACT
    assert max_err(got, vae_io[decoded]) <= GOLDEN


def test_folded_latent_normalisation_matches_fixture(tiny_vae, vae_io):
    fast = FastWanVAE(tiny_vae, vae_io['latents_mean'], vae_io['latents_std'])
    mean, std = stats(vae_io)
    with torch.inference_mode():
        expected_latents = (tiny_vae.encode(vae_io['video']).latent_dist.mean - mean) / std
        expected_video = tiny_vae.decode(vae_io['latents'] * std + mean).sample
    assert max_err(fast.encode(vae_io['video']), expected_latents) <= EXACT
    assert max_err(fast.decode(vae_io['latents']), expected_video) <= EXACT
    assert max_err(fast.encode(vae_io['video']), vae_io['latents']) <= GOLDEN
    assert max_err(fast.decode(vae_io['latents']), vae_io['decoded']) <= GOLDEN


def test_float64_shows_the_maths_is_the_same(tiny_vae, vae_io):
    """Float64 leaves no rounding noise: the same maths up to diffusers' own float32 cast.

    What is left in decode is the float32 cast inside diffusers' upsampler (~3e-7), far
    below any structural difference (a wrong tap or frame moves the output by > 1e-2).
    """
    import copy

    vae = copy.deepcopy(tiny_vae).double()
    mean, std = stats(vae_io)
    mu = (vae_io['latents'] * std + mean).double()
    video = vae_io['video'].double()
    with torch.inference_mode():
        expected_mu = vae.encode(video).latent_dist.mean
        expected_video = vae.decode(mu).sample
    fast = FastWanVAE(vae)
    assert fast.encode(video).dtype == torch.float64
    assert max_err(fast.encode(video), expected_mu) <= 1e-9
    assert max_err(fast.decode(mu), expected_video) <= 1e-6


# ------------------------------------------------------------------ full architecture

@pytest.mark.parametrize('frames', [1, 9])
def test_full_size_architecture_equals_diffusers(wan21_vae, frames):
    generator = torch.Generator().manual_seed(frames)
    video = torch.rand(1, 3, frames, 32, 32, generator=generator) * 2 - 1
    fast = FastWanVAE(wan21_vae)
    with torch.inference_mode():
        expected = wan21_vae.encode(video).latent_dist.mean
        latents = torch.randn(expected.shape, generator=generator)
        expected_video = wan21_vae.decode(latents).sample
    got = fast.encode(video)
    assert got.shape == expected.shape == (1, 16, 1 + (frames - 1) // 4, 4, 4)
    assert max_err(got, expected) <= EXACT
    got_video = fast.decode(latents)
    assert got_video.shape == expected_video.shape == (1, 3, frames, 32, 32)
    assert max_err(got_video, expected_video) <= EXACT


def test_ragged_length_is_cut_like_diffusers(tiny_vae):
    video = torch.rand(1, 3, 7, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.inference_mode():
        expected = tiny_vae.encode(video).latent_dist.mean  # frames 5 and 6 are dropped
    got = FastWanVAE(tiny_vae).encode(video)
    assert got.shape == expected.shape == (1, 16, 2, 2, 2)
    assert max_err(got, expected) <= EXACT


def test_bfloat16_error_within_diffusers_own_bfloat16_error(wan21_vae):
    import copy

    generator = torch.Generator().manual_seed(11)
    video = torch.rand(1, 3, 5, 16, 16, generator=generator) * 2 - 1
    half = copy.deepcopy(wan21_vae).to(torch.bfloat16)
    with torch.inference_mode():
        mu32 = wan21_vae.encode(video).latent_dist.mean
        out32 = wan21_vae.decode(mu32).sample
        mu16 = half.encode(video.bfloat16()).latent_dist.mean
        out16 = half.decode(mu16).sample
    fast = FastWanVAE(half)
    assert fast.encode(video).dtype == torch.bfloat16
    ours_mu = fast.encode(video)
    ours_out = fast.decode(ours_mu)
    # Relative error (norm) against float32: ours may be at most 1.5x diffusers' own.
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(ours_mu, mu32) <= 1.5 * rel(mu16, mu32)
    assert rel(ours_out, out32) <= 1.5 * rel(out16, out32)


# ------------------------------------------------------------------ plumbing

def test_flop_count_from_layer_shapes(wan21_vae):
    fast = FastWanVAE(wan21_vae)
    flops = fast.count_flops('decode', (1, 16, 1, 4, 4))
    # The last layer alone: a 3x3 causal conv 96 -> 3 channels at 32x32, one frame, tap 2.
    assert flops > 2 * 32 * 32 * 3 * 96 * 9
    # Doubling the pixels doubles every conv (attention grows faster): at least 2x.
    assert fast.count_flops('decode', (1, 16, 1, 4, 8)) >= 2 * flops
    # Five frames: more than 4x the single-frame cost, less than 9x (taps skip zero frames).
    five = fast.count_flops('encode', (1, 3, 5, 32, 32))
    one = fast.count_flops('encode', (1, 3, 1, 32, 32))
    assert 4 * one < five < 9 * one
    with pytest.raises(ValueError, match='encode'):
        fast.count_flops('forward', (1, 3, 1, 32, 32))


def test_unsupported_layout_is_named(wan21_vae):
    from diffusers import AutoencoderKLWan

    wan22 = AutoencoderKLWan(**{**presets.VAE_WAN21, 'base_dim': 8, 'is_residual': True})
    with pytest.raises(UnsupportedVAE, match='is_residual'):
        FastWanVAE(wan22)
    with pytest.raises(ValueError, match='temporal'):
        FastWanVAE(wan21_vae, temporal='conv2d')
    with pytest.raises(ValueError, match='together'):
        FastWanVAE(wan21_vae, latents_mean=[0.0] * 16)


def test_torch_backend_uses_it_by_default_and_can_keep_diffusers(fixtures, vae_io):
    fast = TorchBackend(checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors'))
    slow = TorchBackend(checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors'),
                        fast_vae=False)
    assert isinstance(fast.fast_vae, FastWanVAE) and slow.fast_vae is None
    latents = fast.encode(vae_io['video'])
    assert max_err(latents, slow.encode(vae_io['video'])) <= EXACT
    assert max_err(fast.decode(vae_io['latents']), slow.decode(vae_io['latents'])) <= EXACT


def test_torch_backend_temporal_mode_option(fixtures, vae_io):
    from dvd_ros.errors import InputError

    load = lambda: checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')  # noqa: E731
    conv3d = TorchBackend(load(), vae_temporal='conv3d')
    assert conv3d.fast_vae.temporal == 'conv3d'
    taps = TorchBackend(load())
    assert taps.fast_vae.temporal == 'taps'
    # Each is within EXACT of diffusers, in its own summation order.
    assert max_err(conv3d.decode(vae_io['latents']), taps.decode(vae_io['latents'])) <= 2 * EXACT
    with pytest.raises(InputError, match='temporal'):
        TorchBackend(load(), vae_temporal='conv2d')
    chunked = TorchBackend(load(), vae_chunk_frames=1)
    assert torch.equal(chunked.decode(vae_io['latents']), taps.decode(vae_io['latents']))


@pytest.mark.parametrize('whole_fits, chunks_fit', [(False, True), (False, False)])
def test_out_of_gpu_memory_runs_in_chunks_then_diffusers(fixtures, vae_io, monkeypatch,
                                                         caplog, whole_fits, chunks_fit):
    backend = TorchBackend(checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors'))
    expected = backend.decode(vae_io['latents'])
    decode, calls = backend.fast_vae.decode, []

    def limited(latents, chunk_frames=None):
        calls.append(chunk_frames)
        if (chunk_frames is None and not whole_fits) or (chunk_frames and not chunks_fit):
            raise torch.OutOfMemoryError('CUDA out of memory (simulated)')
        return decode(latents, chunk_frames=chunk_frames)

    monkeypatch.setattr(backend.fast_vae, 'decode', limited)
    with caplog.at_level('WARNING', logger='dvd_ros.backends.torch'):
        got = backend.decode(vae_io['latents'])
    assert calls == [None, 1]  # whole window, then one latent frame per pass
    assert max_err(got, expected) <= EXACT  # chunks or the diffusers VAE: the same numbers
    assert any('ran out of GPU memory' in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize('chunk', [1, 4, 8])
def test_temporal_chunks_equal_the_whole_window(tiny_vae, vae_io, chunk):
    for temporal in ('taps', 'conv3d'):
        fast = FastWanVAE(tiny_vae, temporal=temporal)
        video, mu = vae_io['video'], vae_io['latents_unnormalised_mu']
        # Per-frame convolutions and the same summation order: bit for bit on CPU.
        assert torch.equal(fast.encode(video, chunk_frames=chunk), fast.encode(video))
        assert torch.equal(fast.decode(mu, chunk_frames=chunk), fast.decode(mu))


def test_temporal_chunks_equal_diffusers_at_full_size(wan21_vae):
    video = torch.rand(1, 3, 13, 16, 16, generator=torch.Generator().manual_seed(13)) * 2 - 1
    fast = FastWanVAE(wan21_vae)
    with torch.inference_mode():
        mu = wan21_vae.encode(video).latent_dist.mean
        out = wan21_vae.decode(mu).sample
    for chunk in (4, 8):  # chunks 1+4+4+4 and 5+8
        assert max_err(fast.encode(video, chunk_frames=chunk), mu) <= EXACT
    for chunk in (1, 2, 3):
        assert max_err(fast.decode(mu, chunk_frames=chunk), out) <= EXACT


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason=f'needs a CUDA GPU; this torch ({torch.__version__}) sees none')
def test_cuda_equals_diffusers(wan21_vae):
    import copy

    generator = torch.Generator().manual_seed(5)
    video = (torch.rand(1, 3, 9, 64, 64, generator=generator) * 2 - 1).cuda()
    vae32 = copy.deepcopy(wan21_vae).cuda()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would round at 1e-3
    try:
        with torch.inference_mode():
            mu32 = vae32.encode(video).latent_dist.mean
            out32 = vae32.decode(mu32).sample
        fast32 = FastWanVAE(vae32)
        assert max_err(fast32.encode(video), mu32) <= 1e-4
        assert max_err(fast32.decode(mu32), out32) <= 1e-4
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    half = copy.deepcopy(vae32).to(torch.bfloat16)
    with torch.inference_mode():
        mu16 = half.encode(video.bfloat16()).latent_dist.mean
        out16 = half.decode(mu32.bfloat16()).sample
    fast16 = FastWanVAE(half)
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(fast16.encode(video), mu32) <= 1.5 * rel(mu16, mu32)
    assert rel(fast16.decode(mu32), out32) <= 1.5 * rel(out16, out32)
