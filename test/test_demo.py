"""The demo command end to end: outputs exist and the printed accuracy is reproducible."""

import json

import numpy as np
import pytest

from dvd_ros.cli import demo
from dvd_ros.cli.main import main
from dvd_ros.model.checkpoint import DEFAULT_WEIGHTS
from dvd_ros.offline.writers import read_ply


@pytest.fixture
def weights(tmp_path_factory):
    """Return the embedded tiny model, or the fixture model converted (if the former is absent)."""
    if (DEFAULT_WEIGHTS / 'dvd_ros.json').is_file():
        return ''
    from conftest import fixtures_dir
    src = fixtures_dir() / 'dvd_tiny_dit.safetensors'
    if not src.is_file():
        pytest.skip('neither the embedded tiny model nor the golden fixtures are available')
    dst = tmp_path_factory.mktemp('weights') / 'tiny'
    assert main(['weights', 'convert', str(src), str(dst), '--height', '48', '--width',
                 '64']) == 0
    return str(dst)


def test_demo_outputs_and_recomputed_accuracy(tmp_path, weights, capsys, monkeypatch):
    out = tmp_path / 'demo'
    status = main(['demo', '--out', str(out), '--frames', '10', '--timeout', '120']
                  + (['--weights', weights] if weights else []))
    printed = capsys.readouterr().out
    assert status == 0, printed
    for name in ('demo.png', 'cloud.ply', 'recording.npz', 'metrics.json'):
        assert (out / name).stat().st_size > 0, name

    with np.load(out / 'recording.npz') as data:
        arrays = {k: data[k] for k in data.files}
    assert len(arrays['stamps_ns']) == 10
    assert np.all(np.diff(arrays['stamps_ns']) > 0)
    saved = json.loads((out / 'metrics.json').read_text())
    recomputed = demo.score_recording(arrays, clip=saved['clip'])
    for group in ('per_clip', 'sequence'):
        for arm, scores in recomputed[group].items():
            for key, value in scores.items():
                assert saved[group][arm][key] == pytest.approx(value, rel=1e-9, nan_ok=True), (
                    group, arm, key)
    for key, value in recomputed['online_metric'].items():
        assert saved['online_metric'][key] == pytest.approx(value, rel=1e-9), key
    assert demo.format_metrics(recomputed) in printed

    # Paced by the node: nothing dropped, the scored frames are the first ones in a row, and
    # the stream equals the node's estimator run offline on the same frames.
    run = saved['run']
    assert run['node_frames_dropped'] == 0 and run['camera_lost'] == 0, run
    assert run['scored_consecutive'] and run['node_frames_in'] >= 10, run
    # The frames not yet out are at most what the pacing lets into the node at once.
    assert 0 <= run['node_frames_in_flight'] <= run['node_frames_in'] - run['scored_frames'], run
    assert f'in flight at stop {run["node_frames_in_flight"]}' in printed
    assert 'dropped 0' in printed and 'latency' in printed
    assert saved['live_vs_offline_stream_max_abs'] <= 1e-6, saved

    xyz, rgb = read_ply(out / 'cloud.ply')
    assert len(xyz) > 0 and np.isfinite(xyz).all() and (xyz[:, 2] > 0).all()
    assert saved['diagnostics'], 'no /diagnostics status recorded'
    if not weights:
        # The embedded model, on a held-out scene, must clearly beat a constant prediction.
        live, constant = saved['per_clip']['live'], saved['per_clip']['baseline']
        assert live['abs_rel'] < 0.8 * constant['abs_rel'], saved
        assert live['delta1'] > constant['delta1'] + 0.1, saved


@pytest.mark.slow
def test_two_runs_print_the_same_accuracy(tmp_path, weights, capsys):
    scores = []
    for run in range(2):
        out = tmp_path / f'run{run}'
        status = main(['demo', '--out', str(out), '--frames', '10', '--timeout', '120']
                      + (['--weights', weights] if weights else []))
        assert status == 0, capsys.readouterr().out
        saved = json.loads((out / 'metrics.json').read_text())
        assert saved['run']['node_frames_dropped'] == 0, saved['run']
        scores.append({k: saved[k] for k in ('per_clip', 'sequence')})
    # Same seed, no drops: the same frames meet the same windows, whatever the timing.
    assert scores[0] == scores[1]


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(['demo', '--out', str(tmp_path), '--window', '8']) == 2
    assert '4n+1' in capsys.readouterr().err
    assert main(['demo', '--out', str(tmp_path), '--weights', str(tmp_path / 'nope')]) == 2
    assert 'no such file' in capsys.readouterr().err
