"""`dvd-ros run`: argument handling and clear errors (the full run is in test_multiprocess)."""

import signal

import pytest

pytest.importorskip('rclpy')
import ros_harness  # noqa: E402, F401 - loopback DDS environment for the run below

from dvd_ros.cli import main as cli  # noqa: E402
from dvd_ros.cli.run import parse_sets  # noqa: E402


@pytest.fixture
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_parse_sets_types_values():
    assert parse_sets(['window=13', 'metric_a=0.5', 'points_rgb=false', 'colormap=jet',
                       'weights=']) == {'window': 13, 'metric_a': 0.5, 'points_rgb': False,
                                        'colormap': 'jet', 'weights': ''}
    with pytest.raises(cli.CliError, match='NAME=VALUE'):
        parse_sets(['window'])


def test_missing_params_file(capsys, keep_signal_handlers):
    assert cli.main(['run', '--params-file', '/nope/depth.yaml']) == 2
    assert "parameter file '/nope/depth.yaml' not found" in capsys.readouterr().err


@pytest.mark.parametrize('sets, message', [
    (['window=5', 'overlap=5'], 'parameter overlap (5) must be smaller'),
    (['align_robust=trimmed'], 'parameter align_robust must be one of none, huber, tukey'),
])
def test_bad_parameter_is_one_line_error(capsys, keep_signal_handlers, sets, message):
    args = ['run', '--backend', 'stand-in', '--duration', '0.1']
    for item in sets:
        args += ['-p', item]
    status = cli.main(args)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f'dvd-ros run: error: {message}')
    assert len(err.strip().splitlines()) == 1


def test_short_run_exits_zero(keep_signal_handlers):
    assert cli.main(['run', '--backend', 'stand-in', '-n', 'cam_a', '--duration', '0.3']) == 0
