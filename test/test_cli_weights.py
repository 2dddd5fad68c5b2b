"""`dvd-ros weights`: help text, convert -> load, info, user errors."""

import json

import pytest
from safetensors.torch import load_file
import torch

from dvd_ros.cli.main import main
from dvd_ros.model import checkpoint

torch.set_num_threads(1)


def test_bare_command_says_where_weights_are(capsys):
    assert main(['weights']) == 0
    out = capsys.readouterr().out
    for needle in ('FayeHongfeiZhang/DVD', 'model.safetensors', 'dvd_1.1.safetensors',
                   'Wan2.1_VAE.pth', 'Wan-AI/Wan2.1-T2V-1.3B', 'CC BY-NC 4.0',
                   'NON-COMMERCIAL', 'Nothing is downloaded automatically'):
        assert needle in out


def test_help_mentions_licence(capsys):
    with pytest.raises(SystemExit):
        main(['weights', '--help'])
    assert 'CC BY-NC 4.0' in capsys.readouterr().out


def test_convert_then_load_gives_reference_outputs(tmp_path, fixtures, fixture_config, capsys):
    rank = fixture_config['lora']['rank']
    dst = tmp_path / 'tiny'
    status = main(['weights', 'convert', str(fixtures / 'dvd_tiny_dit.safetensors'), str(dst),
                   '--dtype', 'float32', '--height', '48', '--width', '80'])
    assert status == 0
    assert f'LoRA rank {rank},' in capsys.readouterr().out
    meta = json.loads((dst / checkpoint.META_FILE).read_text())
    assert (meta['height'], meta['width'], meta['dtype']) == (48, 80, 'float32')
    models = checkpoint.load_models(dst)
    io = load_file(str(fixtures / 'dvd_tiny_dit_io.safetensors'))
    context = torch.zeros(*io['context_shape'].tolist())
    with torch.inference_mode():
        out = models.transformer(io['latents'], io['timestep'], context, return_dict=False)[0]
    assert (out - io['output']).abs().max().item() <= 1e-4

    assert main(['weights', 'info', str(dst), '--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['layout'] == 'converted' and info['lora_rank'] == rank


def test_convert_without_vae_needs_vae_option(tmp_path, fixtures, capsys):
    from safetensors.torch import save_file

    state = load_file(str(fixtures / 'dvd_tiny_dit.safetensors'))
    src = tmp_path / 'dvd_1.1.safetensors'
    save_file({k: v for k, v in state.items() if k.startswith('pipe.dit.')}, str(src))
    assert main(['weights', 'convert', str(src), str(tmp_path / 'a')]) == 2
    assert '--vae' in capsys.readouterr().err
    status = main(['weights', 'convert', str(src), str(tmp_path / 'b'), '--vae',
                   str(fixtures / 'dvd_tiny_vae.safetensors'), '--alpha', '8'])
    assert status == 0
    meta = json.loads((tmp_path / 'b' / checkpoint.META_FILE).read_text())
    assert meta['lora_alpha'] == 8 and meta['dtype'] == 'bfloat16'


def test_info_on_release_file(fixtures, fixture_config, capsys):
    assert main(['weights', 'info', str(fixtures / 'dvd_tiny_dit.safetensors')]) == 0
    out = capsys.readouterr().out
    assert 'release' in out and f'lora_rank: {fixture_config["lora"]["rank"]}\n' in out
    assert "['float32']" in out


@pytest.mark.parametrize('argv, message', [
    (['weights', 'info', '/nonexistent/model.safetensors'], 'not found'),
    (['weights', 'convert', '/nonexistent/model.safetensors', 'OUT'], 'not found'),
])
def test_user_errors_exit_2(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a == 'OUT' else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_convert_refuses_non_empty_destination(tmp_path, fixtures, capsys):
    (tmp_path / 'keep.txt').write_text('x')
    assert main(['weights', 'convert', str(fixtures / 'dvd_tiny_dit.safetensors'),
                 str(tmp_path)]) == 2
    assert 'not empty' in capsys.readouterr().err


def test_convert_refuses_a_vae_file(tmp_path, fixtures, capsys):
    assert main(['weights', 'convert', str(fixtures / 'dvd_tiny_vae.safetensors'),
                 str(tmp_path / 'out')]) == 2
    assert 'not an official DVD file' in capsys.readouterr().err


def test_convert_into_unwritable_destination_is_one_line_error(tmp_path, fixtures, capsys):
    (tmp_path / 'a_file').write_text('x')
    status = main(['weights', 'convert', str(fixtures / 'dvd_tiny_dit.safetensors'),
                   str(tmp_path / 'a_file' / 'out'), '--dtype', 'float32'])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith('dvd-ros weights: error: ') and 'a_file' in err
