"""`dvd-ros run`: argument handling and clear errors (the full run is in test_multiprocess)."""

import signal

import pytest

pytest.importorskip('rclpy')
import ros_harness  # noqa: E402 - loopback DDS environment for the runs below

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
    # The ROS syntax, an int for a double, a string parameter keeps the text as typed.
    assert parse_sets(['model_height:=64', 'metric_b:=1', 'weights:=1.1',
                       'use_sim_time:=true']) == {
        'model_height': 64, 'metric_b': 1.0, 'weights': '1.1', 'use_sim_time': True}
    with pytest.raises(cli.CliError, match='NAME:=VALUE or NAME=VALUE'):
        parse_sets(['window'])
    with pytest.raises(cli.CliError, match='parameter window must be an integer'):
        parse_sets(['window:=abc'])


@pytest.mark.parametrize('item, message', [
    ('model_hieght:=64', "unknown depth node parameter 'model_hieght': did you mean "
                         'model_height'),
    ('height=64', "unknown depth node parameter 'height': did you mean model_height"),
    ('bogus_param=1', "unknown depth node parameter 'bogus_param'"),
])
def test_unknown_parameter_fails_with_close_matches(capsys, keep_signal_handlers, item,
                                                    message):
    assert cli.main(['run', '--backend', 'stand-in', '--duration', '0.1', '-p', item]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'dvd-ros run: error: {message}'), err
    assert len(err.strip().splitlines()) == 1


def test_ros_syntax_reaches_the_node():
    from dvd_ros.cli.run import build_nodes

    args = cli.build_parser(['run']).parse_args(
        ['run', '--backend', 'stand-in', '-p', 'queue_size:=7', '-p', 'weights:=1.1',
         '-p', 'metric_mode=fixed', '-p', 'use_sim_time:=true'])
    context = ros_harness.make_context()
    try:
        [node] = build_nodes(args, context)
        try:
            assert node.parameters.current.queue_size == 7
            assert node.get_parameter('weights').value == '1.1'
            assert node.parameters.current.metric_mode == 'fixed'
            assert node.get_parameter('use_sim_time').value is True
        finally:
            node.destroy_node()
    finally:
        context.try_shutdown()


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


def test_model_load_failure_ends_the_run(capsys, keep_signal_handlers, monkeypatch):
    """The model loads in the node's worker; its failure still ends `dvd-ros run` with 2."""
    from dvd_ros.errors import WeightsError
    from dvd_ros.ros import depth_node

    def broken(params):
        raise WeightsError('no DVD weights at /nope: see `dvd-ros weights`')

    monkeypatch.setattr(depth_node, 'build_regressor', broken)
    assert cli.main(['run', '--backend', 'torch', '--duration', '20']) == 2
    err = capsys.readouterr().err
    assert 'dvd-ros run: error: no DVD weights at /nope' in err
