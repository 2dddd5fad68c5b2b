"""DepthRegressor: golden end-to-end parity, resize/padding rules, input validation."""

import numpy as np
import pytest
from safetensors.torch import load_file
import torch

from dvd_ros.errors import BackendUnavailable, InputError, WeightsError
from dvd_ros.model import checkpoint
from dvd_ros.model.backends import create_backend
from dvd_ros.model.backends.torch_eager import resolve_dtype
from dvd_ros.model.regressor import DepthRegressor, padded_length, processing_size

TOL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def e2e(fixtures):
    return load_file(str(fixtures / 'dvd_tiny_e2e_io.safetensors'))


@pytest.fixture(scope='module', params=[True, False], ids=['folded', 'diffusers-call'])
def regressor(fixtures, e2e, request):
    """Return the torch backend both ways: folded DiT (default) and the reference's call."""
    models = checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    height, width = e2e['frames01'].shape[-2:]
    return DepthRegressor(models, height=height, width=width, fold=request.param)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------ golden parity

def test_end_to_end_matches_reference(regressor, e2e):
    depth, rgb = regressor.predict_window(e2e['frames01'], return_rgb=True)
    assert depth.shape == e2e['depth'].shape and depth.dtype == torch.float32
    assert max_err(depth, e2e['depth']) <= TOL
    assert max_err(rgb, e2e['depth_rgb']) <= TOL


def test_end_to_end_single_frame_matches_reference(regressor, e2e):
    depth, rgb = regressor.predict_window(e2e['frames01_single'], return_rgb=True)
    assert max_err(rgb, e2e['depth_rgb_single']) <= TOL
    assert max_err(depth, e2e['depth_rgb_single'].mean(-1)) <= TOL


def test_backend_stages_match_reference(regressor, e2e):
    backend = regressor.backend
    video = e2e['frames01'][0].permute(1, 0, 2, 3).unsqueeze(0) * 2 - 1
    latents = backend.encode(video)
    assert max_err(latents, e2e['rgb_latents']) <= TOL
    assert max_err(backend.transform(e2e['rgb_latents']), e2e['pred_latents']) <= TOL
    assert max_err(backend.decode(e2e['pred_latents']), e2e['pred_decoded']) <= TOL


def test_zero_context_allocated_once(regressor):
    from dvd_ros.model.backends.torch_eager import TorchBackend

    backend = TorchBackend(regressor.models, fold=False)  # the path that feeds a context
    context = backend.context
    backend.transform(torch.zeros(1, 16, 1, 2, 2))
    assert backend.context is context
    assert context.shape == (1, 512, backend.transformer.config.text_dim)
    assert not context.any()


def test_predict_uint8_matches_predict_window(regressor, e2e):
    frames = (e2e['frames01'][0].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    depth = regressor.predict(frames)
    expected = regressor.predict_window(torch.from_numpy(frames).permute(0, 3, 1, 2)[None] / 255)
    assert np.abs(depth - expected[0].numpy()).max() <= 1e-6
    # 8-bit quantisation of the input is the only difference from the golden depth.
    assert np.abs(depth - e2e['depth'][0].numpy()).max() < 0.05


@pytest.mark.parametrize('count', [1, 2, 3, 4, 5, 6])
def test_predict_any_length_and_odd_size(regressor, count):
    rng = np.random.default_rng(count)
    frames = rng.integers(0, 256, size=(count, 37, 53, 3), dtype=np.uint8)
    depth = regressor.predict(frames)
    assert depth.shape == (count, 37, 53) and depth.dtype == np.float32
    assert depth.min() >= 0.0 and depth.max() <= 1.0
    assert np.array_equal(depth, regressor.predict(frames))  # deterministic


def test_padded_frames_do_not_change_real_outputs(regressor):
    # T = 4 is padded with a copy of frame 3 to 5 frames: same result as passing it twice.
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, size=(4, 48, 80, 3), dtype=np.uint8)
    padded = np.concatenate([frames, frames[-1:]])
    assert np.array_equal(regressor.predict(frames), regressor.predict(padded)[:4])


# ------------------------------------------------------------------ rules

@pytest.mark.parametrize('size, expected', [
    ((480, 640), (480, 640)), ((600, 800), (480, 640)), ((768, 1024), (480, 640)),
    ((240, 320), (480, 640)), ((720, 1280), (480, 864)), ((1080, 1920), (480, 864)),
    ((360, 640), (480, 864)), ((1024, 1280), (512, 640)), ((375, 1242), (480, 1600)),
])
def test_processing_size_matches_spec_examples(size, expected):
    assert processing_size(*size) == expected


def test_processing_size_follows_custom_target():
    assert processing_size(37, 53, 48, 80) == (64, 80)
    assert processing_size(48, 80, 48, 80) == (48, 80)


@pytest.mark.parametrize('count, expected', [(1, 1), (2, 5), (3, 5), (4, 5), (5, 5), (6, 9),
                                             (8, 9), (9, 9), (12, 13), (13, 13)])
def test_padded_length(count, expected):
    assert padded_length(count) == expected


def test_padding_table_matches_golden(fixtures):
    import json

    golden = json.loads((fixtures / 'dvd_sliding_window_golden.json').read_text())
    table = golden['pad_to_4n_plus_1']
    assert table
    for count, padded in table.items():
        assert padded_length(int(count)) == padded


# ------------------------------------------------------------------ validation and options

@pytest.mark.parametrize('frames, message', [
    (np.zeros((2, 32, 32, 3), np.float32), 'uint8'),
    (np.zeros((32, 32, 3), np.uint8), 'one image'),
    (np.zeros((2, 32, 32), np.uint8), r'\(T, H, W, 3\)'),
    (np.zeros((2, 32, 32, 4), np.uint8), r'\(T, H, W, 3\)'),
    (np.zeros((0, 32, 32, 3), np.uint8), 'T = 0'),
    (np.zeros((1, 8, 32, 3), np.uint8), '>= 16'),
    ([], 'no frames'),
    ('frames', 'numpy'),
])
def test_bad_frames_raise_input_error(regressor, frames, message):
    with pytest.raises(InputError, match=message):
        regressor.predict(frames)


def test_predict_window_rejects_unpadded_sizes(regressor):
    with pytest.raises(InputError, match='multiples of 16'):
        regressor.predict_window(torch.zeros(1, 1, 3, 40, 80))


def test_list_of_frames_is_accepted(regressor):
    frames = [np.full((20, 30, 3), 128, np.uint8)] * 2
    assert regressor.predict(frames).shape == (2, 20, 30)


def test_options_and_attributes(fixtures):
    models = checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    reg = DepthRegressor(models, dtype='bfloat16', height=48, width=80)
    assert reg.dtype == torch.bfloat16 and reg.device == torch.device('cpu')
    assert reg.backend_name == 'torch'
    depth = reg.predict(np.full((1, 48, 80, 3), 100, np.uint8))
    assert depth.dtype == np.float32 and 0 <= depth.min() <= depth.max() <= 1
    # RoPE tables stay float32 when the weights are cast.
    assert models.transformer.rope.freqs_cos.dtype != torch.bfloat16


def test_bad_options(fixtures):
    models = checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    with pytest.raises(InputError, match='dtype'):
        resolve_dtype('int8')
    with pytest.raises(InputError, match='backend'):
        DepthRegressor(models, backend='nope')
    with pytest.raises(InputError, match='>= 16'):
        DepthRegressor(models, height=8)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match='CUDA'):
            DepthRegressor(models, device='cuda')


def test_from_pretrained_folder_uses_meta_size(tmp_path, fixtures, e2e):
    models = checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    folder = checkpoint.save_converted(models, tmp_path / 'tiny', meta={'height': 48,
                                                                       'width': 80})
    reg = DepthRegressor.from_pretrained(folder, dtype='float32')
    assert (reg.height, reg.width) == (48, 80)
    assert max_err(reg.predict_window(e2e['frames01']), e2e['depth']) <= TOL


def test_from_pretrained_none_uses_default_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, 'DEFAULT_WEIGHTS', tmp_path / 'absent')
    with pytest.raises(WeightsError, match='embedded tiny model'):
        DepthRegressor.from_pretrained(None)


def test_create_backend_by_name(fixtures):
    models = checkpoint.load_models(fixtures / 'dvd_tiny_dit.safetensors')
    backend = create_backend('torch', models, device='cpu', dtype=torch.float32)
    assert backend.name == 'torch'
