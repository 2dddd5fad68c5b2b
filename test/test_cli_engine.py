"""`dvd-ros engine build|list` in-process on the golden tiny checkpoint."""

import json

import pytest
import torch

from dvd_ros.cli.main import main


@pytest.fixture(scope='module')
def weights(fixtures):
    return str(fixtures / 'dvd_tiny_dit.safetensors')


def test_build_then_list(weights, tmp_path, capsys):
    torch.set_num_threads(1)
    cache = str(tmp_path / 'engines')
    status = main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                   '--window', '1', '--height', '16', '--width', '32', '--stages', 'dit,decoder',
                   '--cache-dir', cache, '--check'])
    out = capsys.readouterr().out
    assert status == 0
    assert '[1/2] dit ready' in out and '[2/2] decoder ready' in out
    diffs = [float(line.split('=')[1].split()[0]) for line in out.splitlines()
             if 'check:' in line]
    assert len(diffs) == 2 and max(diffs) < 1e-3
    assert main(['engine', 'list', '--cache-dir', cache, '--json']) == 0
    entries = json.loads(capsys.readouterr().out)
    assert sorted(e['slot'] for e in entries) == ['onnx-decoder-t1_16x32-fp32',
                                                  'onnx-dit-t1_16x32-fp32']
    # A second build is a cache hit: no export line.
    assert main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                 '--window', '1', '--height', '16', '--width', '32', '--stages', 'dit',
                 '--cache-dir', cache]) == 0
    assert 'exporting' not in capsys.readouterr().out
    assert main(['engine', 'list', '--cache-dir', cache]) == 0
    assert 'onnx-dit-t1_16x32-fp32' in capsys.readouterr().out


@pytest.mark.parametrize('argv,message', [
    (['--window', '8'], 'use 9'),
    (['--height', '50', '--width', '32'], 'multiple of 16'),
    (['--stages', 'dit,vae'], 'unknown stage'),
])
def test_bad_arguments_exit_2_with_the_fix(weights, tmp_path, capsys, argv, message):
    status = main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                   '--cache-dir', str(tmp_path), *argv])
    assert status == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal without CUDA')
def test_tensorrt_without_cuda_is_one_clear_line(weights, tmp_path, capsys):
    status = main(['engine', 'build', '--weights', weights, '--backend', 'tensorrt',
                   '--cache-dir', str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert 'no CUDA GPU' in err and len(err.strip().splitlines()) == 1


def test_list_of_an_empty_cache(tmp_path, capsys):
    assert main(['engine', 'list', '--cache-dir', str(tmp_path)]) == 0
    assert 'is empty' in capsys.readouterr().out


def test_fp8_build_with_calibration_frames_for_the_node(weights, tmp_path, capsys):
    import cv2
    import numpy as np

    from dvd_ros.model.precision import calibration_id, load_calibration

    torch.set_num_threads(1)
    folder = tmp_path / 'scene'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        cv2.imwrite(str(folder / f'{i:03d}.png'),
                    rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    cache = tmp_path / 'engines'
    status = main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                   '--precision', 'fp8', '--calibration', str(folder), '--window', '5',
                   '--height', '16', '--width', '32', '--stages', 'dit',
                   '--cache-dir', str(cache)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert 'calibrating FP8 on 5 frames' in out
    saved = [line for line in out.splitlines() if 'fp8_calibration:=' in line]
    assert len(saved) == 1
    path = saved[0].split('fp8_calibration:=')[1].split()[0]
    frames = load_calibration(path)
    assert frames.shape == (5, 24, 40, 3)
    entries = json.loads((main(['engine', 'list', '--cache-dir', str(cache), '--json']),
                          capsys.readouterr().out)[1])
    assert [e['key']['calibration'] for e in entries] == [calibration_id(frames)]
    assert entries[0]['slot'] == 'onnx-dit-t5_16x32-fp8'


def test_calibration_needs_fp8(weights, tmp_path, capsys):
    status = main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                   '--calibration', str(tmp_path), '--cache-dir', str(tmp_path)])
    assert status == 2
    assert '--precision fp8' in capsys.readouterr().err


def test_bf16_on_the_cpu_provider_is_refused_before_loading(weights, tmp_path, capsys):
    status = main(['engine', 'build', '--weights', weights, '--backend', 'onnxruntime',
                   '--precision', 'bf16', '--cache-dir', str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 2
    assert 'no bfloat16 kernels' in captured.err
    assert 'loading weights' not in captured.out
