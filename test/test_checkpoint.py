"""Golden parity and error handling of dvd_ros.model.checkpoint (fixtures from the reference)."""

import json

import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
import torch

from dvd_ros.errors import WeightsError
from dvd_ros.model import checkpoint, presets

TOL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(scope='module')
def dit_file(fixtures):
    return fixtures / 'dvd_tiny_dit.safetensors'


@pytest.fixture(scope='module')
def release_state(dit_file):
    """Every tensor of the tiny release file, in file order."""
    with safe_open(str(dit_file), framework='pt') as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


@pytest.fixture(scope='module')
def models(dit_file):
    return checkpoint.load_models(dit_file)


@pytest.fixture(scope='module')
def dit_io(fixtures):
    return load_file(str(fixtures / 'dvd_tiny_dit_io.safetensors'))


@pytest.fixture(scope='module')
def vae_io(fixtures):
    return load_file(str(fixtures / 'dvd_tiny_vae_io.safetensors'))


@pytest.fixture(scope='module')
def heads(fixture_config):
    """Attention heads of the set's DiT (no tensor shape shows them)."""
    return fixture_config['wan_model_kwargs']['num_heads']


def lora_pairs(config):
    """Return the LoRA pairs of a fixture model: q/k/v/o sit in self- and cross-attention."""
    per_block = sum(2 if t in ('q', 'k', 'v', 'o') else 1
                    for t in config['lora']['target_modules'])
    return config['wan_model_kwargs']['num_layers'] * per_block


def tensor_counts(config):
    """Return ``(DiT tensors of the release file, VAE tensors)`` built from the set's config."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    preset = presets.preset_from_fixture_config(config)
    with torch.device('meta'):
        dit = len(WanTransformer3DModel(**preset.transformer).state_dict())
        vae = len(AutoencoderKLWan(**preset.vae).state_dict())
    return dit + 2 * lora_pairs(config), vae


def run_dit(transformer, latents, io):
    context = torch.zeros(*io['context_shape'].tolist(), dtype=latents.dtype)
    with torch.inference_mode():
        return transformer(latents, io['timestep'], context, return_dict=False)[0]


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------ DiT parity

def test_dit_output_matches_reference(models, dit_io):
    assert max_err(run_dit(models.transformer, dit_io['latents'], dit_io), dit_io['output']) <= TOL


def test_dit_single_frame_matches_reference(models, dit_io):
    out = run_dit(models.transformer, dit_io['latents_t1'], dit_io)
    assert out.shape == dit_io['output_t1'].shape
    assert max_err(out, dit_io['output_t1']) <= TOL


def test_negative_control_base_only_differs(dit_file, models, dit_io):
    base = checkpoint.load_models(dit_file, merge_lora=False)
    out_base = run_dit(base.transformer, dit_io['latents'], dit_io)
    out = run_dit(models.transformer, dit_io['latents'], dit_io)
    # A loader that forgets the LoRA reproduces this control, not the output.
    assert max_err(out_base, dit_io['output_base_only_no_lora']) <= TOL
    assert max_err(out, out_base) > 100 * TOL
    assert max_err(dit_io['output'], dit_io['output_base_only_no_lora']) > 100 * TOL


def test_loaded_tensors_are_owned_and_64_byte_aligned(models, tmp_path):
    # Views into a file mapping start wherever the file put the data (a misaligned start
    # changes which kernel path MKL takes, and so the last bits of the output); loading copies
    # every tensor into memory the process owns, aligned like any torch allocation.
    converted = tmp_path / 'converted'
    checkpoint.save_converted(models, converted)
    for loaded in (models, checkpoint.load_models(converted)):
        for module in (loaded.transformer, loaded.vae):
            for name, tensor in module.state_dict().items():
                assert tensor.data_ptr() % 64 == 0, name


def test_lora_alpha_override_scales_the_delta(dit_file, models, fixture_config):
    alpha = 2 * fixture_config['lora']['alpha']  # twice the set's own alpha
    doubled = checkpoint.load_models(dit_file, lora_alpha=alpha)
    assert doubled.meta['lora_alpha'] == alpha
    name = 'blocks.0.attn1.to_q.weight'
    base = checkpoint.load_models(dit_file, merge_lora=False).transformer.state_dict()[name]
    merged = models.transformer.state_dict()[name]
    assert torch.allclose(doubled.transformer.state_dict()[name] - base,
                          2 * (merged - base), atol=1e-6)


def test_loaded_meta_describes_the_lora(models, fixture_config):
    assert models.meta['lora_rank'] == fixture_config['lora']['rank']
    assert models.meta['lora_alpha'] == fixture_config['lora']['alpha']
    assert models.meta['lora_merged'] is True


def test_inferred_config_equals_fixture_config(models, fixture_config):
    expected = presets.preset_from_fixture_config(fixture_config).transformer
    config = models.transformer.config
    for key, value in expected.items():
        got = config[key]
        assert (tuple(got) if isinstance(got, list) else got) == (
            tuple(value) if isinstance(value, list) else value), key


def test_bfloat16_load_runs_close(dit_file, dit_io):
    low = checkpoint.load_models(dit_file, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    out = run_dit(low.transformer, dit_io['latents'].bfloat16(), dit_io)
    assert out.dtype == torch.bfloat16
    assert max_err(out, dit_io['output']) < 0.1


# ------------------------------------------------------------------ VAE parity

def normalise(mu, models):
    mean = torch.tensor(models.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(models.latents_std).view(1, -1, 1, 1, 1)
    return (mu - mean) / std, mean, std


@pytest.mark.parametrize('video, latents, decoded', [
    ('video', 'latents', 'decoded'), ('image', 'image_latents', 'image_decoded')])
def test_vae_encode_decode_match_reference(models, vae_io, video, latents, decoded):
    with torch.inference_mode():
        mu = models.vae.encode(vae_io[video]).latent_dist.mode()
        z, mean, std = normalise(mu, models)
        assert max_err(z, vae_io[latents]) <= TOL
        out = models.vae.decode(vae_io[latents] * std + mean).sample.clamp(-1, 1)
    assert max_err(out, vae_io[decoded]) <= TOL


def test_latent_statistics_match_fixture(models, vae_io):
    assert torch.allclose(torch.tensor(models.latents_mean), vae_io['latents_mean'])
    assert torch.allclose(torch.tensor(models.latents_std), vae_io['latents_std'])


# ------------------------------------------------------------------ name mapping

def test_full_1p3b_layout_maps_onto_meta_models(fixtures):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    keys = json.loads((fixtures / 'dvd_1p3b_checkpoint_keys.json').read_text())
    dit = {k.removeprefix('pipe.dit.'): v for k, v in keys['pipe_dit'].items()}
    meta_tensors = {k: torch.empty(v, device='meta') for k, v in dit.items()}
    merged, info = checkpoint.merge_lora((list(dit), meta_tensors.__getitem__))
    assert info['rank'] == keys['lora']['rank']
    assert info['lora_pairs'] == keys['counts']['pipe_dit_lora_tensors'] // 2
    assert {k: list(v.shape) for k, v in merged.items()} == keys['base_wan_dit_without_lora']
    config = checkpoint.infer_dit_config({k: tuple(v.shape) for k, v in merged.items()})
    assert config == {**presets.DIT_1P3B, 'patch_size': tuple(presets.DIT_1P3B['patch_size'])}
    with torch.device('meta'):
        transformer = WanTransformer3DModel(**presets.DIT_1P3B)
        vae = AutoencoderKLWan(**presets.VAE_WAN21)
    want = {k: list(v.shape) for k, v in transformer.state_dict().items()}
    got = {checkpoint.dit_name_to_diffusers(k): list(v.shape) for k, v in merged.items()}
    assert len(got) == len(merged) == len(want) == keys['counts']['base_dit_tensors']
    assert got == want
    assert {checkpoint.dit_name_to_wan(k) for k in want} == set(merged)

    original = {k.removeprefix('pipe.vae.model.'): v for k, v in keys['pipe_vae'].items()}
    vae_config = checkpoint.infer_vae_config({k: tuple(v) for k, v in original.items()})
    assert vae_config == presets.VAE_WAN21
    blocks = vae_config['num_res_blocks']
    want = {k: list(v.shape) for k, v in vae.state_dict().items()}
    got = {checkpoint.vae_name_to_diffusers(k, blocks): v for k, v in original.items()}
    assert len(got) == len(want) == keys['counts']['pipe_vae_tensors']
    assert got == want
    assert {checkpoint.vae_name_to_original(k, blocks) for k in want} == set(original)


def test_mapping_agrees_with_diffusers_converters(release_state, fixture_config):
    from diffusers.loaders.single_file_utils import (
        convert_wan_transformer_to_diffusers,
        convert_wan_vae_to_diffusers,
    )

    dit = {k.removeprefix('pipe.dit.'): v for k, v in release_state.items()
           if k.startswith('pipe.dit.')}
    merged, _ = checkpoint.merge_lora((list(dit), dit.__getitem__))
    theirs = convert_wan_transformer_to_diffusers(dict(merged))
    assert set(theirs) == {checkpoint.dit_name_to_diffusers(k) for k in merged}
    vae = {k.removeprefix('pipe.vae.model.'): v for k, v in release_state.items()
           if k.startswith('pipe.vae.model.')}
    theirs = convert_wan_vae_to_diffusers(dict(vae))
    blocks = fixture_config['vae']['diffusers_AutoencoderKLWan_kwargs']['num_res_blocks']
    mine = {checkpoint.vae_name_to_diffusers(k, blocks): v for k, v in vae.items()}
    assert set(theirs) == set(mine)
    assert all(torch.equal(theirs[k], mine[k]) for k in mine)


# ------------------------------------------------------------------ layouts that load

def test_module_prefixed_copy_loads(tmp_path, release_state, dit_io, heads):
    path = tmp_path / 'model.safetensors'
    save_file({'module.' + k: v for k, v in release_state.items()}, str(path))
    loaded = checkpoint.load_models(path, num_heads=heads)
    assert checkpoint.describe(path)['prefix'] == 'module.'
    assert max_err(run_dit(loaded.transformer, dit_io['latents'], dit_io),
                   dit_io['output']) <= TOL


@pytest.mark.parametrize('vae_format', ['safetensors', 'pth'])
def test_copy_without_vae_loads_with_separate_vae(tmp_path, release_state, fixtures, vae_io,
                                                  vae_format):
    path = tmp_path / 'dvd_1.1.safetensors'
    save_file({k: v for k, v in release_state.items() if k.startswith('pipe.dit.')}, str(path))
    with pytest.raises(WeightsError, match='no VAE copy'):
        checkpoint.load_models(path)
    vae_path = fixtures / 'dvd_tiny_vae.safetensors'
    if vae_format == 'pth':
        vae_path = tmp_path / 'Wan2.1_VAE.pth'
        torch.save(load_file(str(fixtures / 'dvd_tiny_vae.safetensors')), vae_path)
    loaded = checkpoint.load_models(path, vae_path=vae_path)
    with torch.inference_mode():
        mu = loaded.vae.encode(vae_io['image']).latent_dist.mode()
    assert max_err(normalise(mu, loaded)[0], vae_io['image_latents']) <= TOL


def test_convert_then_load_folder_gives_same_outputs(tmp_path, models, dit_io, vae_io):
    folder = checkpoint.save_converted(models, tmp_path / 'converted', meta={'height': 48,
                                                                            'width': 80})
    assert checkpoint.detect_layout(folder) == 'converted'
    again = checkpoint.load_models(folder)
    assert again.meta['height'] == 48 and again.meta['lora_rank'] == models.meta['lora_rank']
    # The weights are bit-equal; the outputs only close: the two load paths place tensors at
    # different memory alignments and MKL's kernels round differently on them (~1e-6).
    for mine, theirs in ((again.transformer, models.transformer), (again.vae, models.vae)):
        want = theirs.state_dict()
        assert all(torch.equal(tensor, want[name]) for name, tensor in mine.state_dict().items())
    assert max_err(run_dit(again.transformer, dit_io['latents'], dit_io),
                   run_dit(models.transformer, dit_io['latents'], dit_io)) <= 1e-5
    with torch.inference_mode():
        assert max_err(again.vae.encode(vae_io['image']).latent_dist.mode(),
                       models.vae.encode(vae_io['image']).latent_dist.mode()) <= 1e-5
    info = checkpoint.describe(folder)
    assert info['dit_tensors'] == len(models.transformer.state_dict())
    assert info['vae_tensors'] == len(models.vae.state_dict())


def test_half_stored_folder_loads_as_the_exact_float32_upcast(tmp_path, models):
    # A folder stored in float16 has half the bytes (on the embedded tiny model its held-out
    # metrics move by < 1e-5; docs/training.md). Loading it in float32 must give exactly the
    # stored halves, upcast.
    single = checkpoint.save_converted(models, tmp_path / 'float32')
    half = checkpoint.load_models(single, dtype=torch.float16)
    folder = checkpoint.save_converted(half, tmp_path / 'float16')
    assert checkpoint.describe(folder)['dtypes'] == ['float16']
    assert sum(f.stat().st_size for f in folder.rglob('*.safetensors')) < 0.6 * sum(
        f.stat().st_size for f in single.rglob('*.safetensors'))
    again = checkpoint.load_models(folder)
    assert again.dtype == torch.float32
    for mine, theirs in ((again.transformer, half.transformer), (again.vae, half.vae)):
        want = theirs.state_dict()
        for name, tensor in mine.state_dict().items():
            assert tensor.dtype == torch.float32, name
            assert torch.equal(tensor, want[name].float()), name


def test_interrupted_reconversion_is_not_taken_for_weights(tmp_path, models, monkeypatch):
    # Converting again into a folder (weights convert --force) must not leave the old
    # dvd_ros.json vouching for a mix of old and new weights when the write stops midway.
    folder = checkpoint.save_converted(models, tmp_path / 'converted')

    def disk_full(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(type(models.vae), 'save_config', disk_full)
    with pytest.raises(OSError):
        checkpoint.save_converted(models, folder)
    with pytest.raises(WeightsError, match='without dvd_ros.json'):
        checkpoint.detect_layout(folder)


# ------------------------------------------------------------------ writing the release layout

def test_write_release_from_state_dict_roundtrips_exactly(tmp_path, release_state):
    dit = {k.removeprefix('pipe.dit.'): v for k, v in release_state.items()
           if k.startswith('pipe.dit.')}
    vae = {k.removeprefix('pipe.vae.model.'): v for k, v in release_state.items()
           if k.startswith('pipe.vae.model.')}
    path = checkpoint.write_release_checkpoint(tmp_path / 'out.safetensors', dit, vae=vae)
    written = load_file(str(path))
    assert set(written) == set(release_state)
    assert all(torch.equal(written[k], release_state[k]) for k in release_state)


def test_bfloat16_release_file_loads(tmp_path, release_state, dit_io, heads):
    dit = {k.removeprefix('pipe.dit.'): v for k, v in release_state.items()
           if k.startswith('pipe.dit.')}
    vae = {k.removeprefix('pipe.vae.model.'): v for k, v in release_state.items()
           if k.startswith('pipe.vae.model.')}
    path = checkpoint.write_release_checkpoint(tmp_path / 'bf16.safetensors', dit, vae=vae,
                                               dtype=torch.bfloat16)
    assert checkpoint.describe(path)['dtypes'] == ['bfloat16']
    loaded = checkpoint.load_models(path, num_heads=heads)  # merged in float64, run in float32
    assert loaded.dtype == torch.float32
    assert max_err(run_dit(loaded.transformer, dit_io['latents'], dit_io), dit_io['output']) < 0.05


@pytest.mark.parametrize('alpha_factor', [1, 2])
def test_write_release_from_peft_transformer_loads_back(tmp_path, dit_file, release_state,
                                                       models, dit_io, fixture_config, heads,
                                                       alpha_factor):
    from peft import LoraConfig

    rank = fixture_config['lora']['rank']
    alpha = alpha_factor * fixture_config['lora']['alpha']
    base = checkpoint.load_models(dit_file, merge_lora=False)
    transformer = base.transformer
    targets = ['to_q', 'to_k', 'to_v', 'to_out.0', 'net.0.proj', 'net.2']
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    state = transformer.state_dict()
    for key, value in release_state.items():
        name = key.removeprefix('pipe.dit.')
        if '.lora_' in name:
            target = checkpoint.dit_name_to_diffusers(name)
            # peft scales by alpha / r; undo it so the merged weights equal the fixture's.
            factor = rank / alpha if '.lora_B.' in name else 1.0
            state[target].copy_(value * factor)
    path = checkpoint.write_release_checkpoint(tmp_path / 'trained.safetensors', transformer,
                                               vae=base.vae)
    assert checkpoint.describe(path)['lora_pairs'] == lora_pairs(fixture_config)
    loaded = checkpoint.load_models(path)  # the written file records the head count
    assert loaded.transformer.config.num_attention_heads == heads
    assert max_err(run_dit(loaded.transformer, dit_io['latents'], dit_io),
                   dit_io['output']) <= TOL
    written = load_file(str(path))
    assert set(written) == set(release_state)


# ------------------------------------------------------------------ errors a user can act on

def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match='not found'):
        checkpoint.load_models(tmp_path / 'model.safetensors')


def test_truncated_safetensors(tmp_path, dit_file):
    path = tmp_path / 'model.safetensors'
    path.write_bytes(dit_file.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match='truncated or corrupt'):
        checkpoint.load_models(path)


def test_unknown_layout(tmp_path):
    path = tmp_path / 'other.safetensors'
    save_file({'some.weight': torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match='unknown checkpoint layout.*some.weight'):
        checkpoint.load_models(path)


def test_folder_without_meta(tmp_path):
    with pytest.raises(WeightsError, match='dvd_ros.json'):
        checkpoint.load_models(tmp_path)


def edited(tmp_path, release_state, drop=(), add=None):
    state = {k: v for k, v in release_state.items() if k not in drop}
    state.update(add or {})
    path = tmp_path / 'edited.safetensors'
    save_file(state, str(path))
    return path


def test_missing_key_is_listed(tmp_path, release_state, fixture_config):
    last = fixture_config['wan_model_kwargs']['num_layers'] - 1
    path = edited(tmp_path, release_state,
                  drop=[f'pipe.dit.blocks.{last}.cross_attn.norm_k.weight'])
    with pytest.raises(WeightsError,
                       match=rf'missing 1 keys: blocks\.{last}\.attn2\.norm_k\.weight'):
        checkpoint.load_models(path)


def test_unexpected_key_is_listed(tmp_path, release_state):
    path = edited(tmp_path, release_state,
                  add={'pipe.dit.blocks.0.self_attn.k_img.weight': torch.zeros(64, 64)})
    with pytest.raises(WeightsError, match=r'unexpected DiT keys.*k_img'):
        checkpoint.load_models(path)


def test_unexpected_vae_key_is_listed(tmp_path, release_state):
    path = edited(tmp_path, release_state,
                  add={'pipe.vae.model.decoder.extra.weight': torch.zeros(3)})
    with pytest.raises(WeightsError, match=r'unexpected VAE keys.*decoder\.extra\.weight'):
        checkpoint.load_models(path)


def test_shape_mismatch(tmp_path, release_state, fixture_config):
    half = fixture_config['wan_model_kwargs']['dim'] // 2
    path = edited(tmp_path, release_state,
                  add={'pipe.dit.blocks.0.self_attn.norm_q.weight': torch.ones(half)})
    with pytest.raises(WeightsError, match=r'shape mismatch.*blocks\.0\.attn1\.norm_q\.weight'):
        checkpoint.load_models(path)


def test_incomplete_lora_pair(tmp_path, release_state):
    path = edited(tmp_path, release_state,
                  drop=['pipe.dit.blocks.0.ffn.0.lora_B.default.weight'])
    with pytest.raises(WeightsError, match='incomplete LoRA pair'):
        checkpoint.load_models(path)


def test_unsafe_pickle_is_refused(tmp_path, release_state):
    path = edited(tmp_path, {k: v for k, v in release_state.items() if 'pipe.dit.' in k})
    unsafe = tmp_path / 'Wan2.1_VAE.pth'
    torch.save({'weight': torch.zeros(1), 'hook': print}, unsafe)
    with pytest.raises(WeightsError, match='unsafe unpickling'):
        checkpoint.load_models(path, vae_path=unsafe)


def test_corrupt_pickle(tmp_path, release_state):
    path = edited(tmp_path, {k: v for k, v in release_state.items() if 'pipe.dit.' in k})
    bad = tmp_path / 'Wan2.1_VAE.pth'
    bad.write_bytes(b'not a pickle at all')
    with pytest.raises(WeightsError, match='truncated or corrupt'):
        checkpoint.load_models(path, vae_path=bad)


def test_converted_folder_rejects_release_options_and_corruption(tmp_path, models):
    folder = checkpoint.save_converted(models, tmp_path / 'converted')
    with pytest.raises(WeightsError, match='converted folder'):
        checkpoint.load_models(folder, lora_alpha=8)
    weights = next((folder / 'transformer').glob('*.safetensors'))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(WeightsError, match='manifest says.*re-run convert'):
        checkpoint.load_models(folder)


def test_vae_file_given_as_checkpoint(fixtures):
    with pytest.raises(WeightsError, match='holds only a VAE'):
        checkpoint.load_models(fixtures / 'dvd_tiny_vae.safetensors')


def test_default_weights_missing_is_clear(tmp_path):
    with pytest.raises(WeightsError, match='not found'):
        checkpoint.load_models(tmp_path / 'assets' / 'tiny')


def test_describe_release(dit_file, fixture_config):
    info = checkpoint.describe(dit_file)
    dit_tensors, vae_tensors = tensor_counts(fixture_config)
    assert info['layout'] == 'release'
    assert info['lora_rank'] == fixture_config['lora']['rank']
    assert info['vae_tensors'] == vae_tensors
    assert info['lora_pairs'] == lora_pairs(fixture_config)
    assert info['dit_tensors'] == dit_tensors


def test_merge_on_an_explicit_device_is_identical(release_state):
    dit = {k.removeprefix('pipe.dit.'): v for k, v in release_state.items()
           if k.startswith('pipe.dit.')}
    plain, _ = checkpoint.merge_lora((list(dit), dit.__getitem__))
    placed, _ = checkpoint.merge_lora((list(dit), dit.__getitem__), device=torch.device('cpu'))
    assert all(torch.equal(plain[k], placed[k]) for k in plain)


def test_recommended_window_from_converted_meta(tmp_path):
    import json

    from dvd_ros.model.checkpoint import DEFAULT_WEIGHTS, META_FILE, recommended_window
    shipped = json.loads((DEFAULT_WEIGHTS / META_FILE).read_text()).get('recommended_window')
    assert recommended_window() == shipped
    (tmp_path / META_FILE).write_text(json.dumps({'recommended_window': 13}))
    assert recommended_window(tmp_path) == 13
    (tmp_path / META_FILE).write_text(json.dumps({'recommended_window': 0}))
    assert recommended_window(tmp_path) is None
    assert recommended_window(tmp_path / 'model.safetensors') is None  # release file: nothing
