"""The launch files under the real ``launch`` / ``launch_ros``: a failing node stops the launch.

Skips where launch / launch_ros are not importable (the PyPI ROS wheels have neither) or
dvd_ros is not installed with its ``lib/dvd_ros`` executables (``pip install .``).
"""

import importlib.util
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('rclpy')
from ros_harness import PROFILE, REPO  # noqa: E402

pytestmark = pytest.mark.slow
RUNNER = REPO / 'test' / 'launch_runner.py'


def _installed():
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = Path(get_package_prefix('dvd_ros'))
    except Exception:  # noqa: BLE001 - no ament index or not installed
        return False
    return (prefix / 'lib' / 'dvd_ros' / 'depth_node').is_file()


if not (importlib.util.find_spec('launch') and importlib.util.find_spec('launch_ros')):
    pytest.skip('launch / launch_ros not installed (the PyPI ROS wheels have neither); '
                'test_launch_files.py checks the launch files against fakes',
                allow_module_level=True)
if not _installed():
    pytest.skip('dvd_ros is not installed with lib/dvd_ros executables (pip install .)',
                allow_module_level=True)


@pytest.fixture(scope='module')
def env():
    out = dict(os.environ)
    out.update(FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE), PYTHONUNBUFFERED='1',
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
    return out


def _launch(env, name, *arguments):
    return subprocess.Popen([sys.executable, str(RUNNER), str(REPO / 'launch' / name),
                             *arguments], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_line(proc, text, timeout=60):
    """Read output until a line contains ``text``; return everything read."""
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            break
    return ''.join(seen)


def test_bad_weights_stop_the_launch_with_status_1(env):
    proc = _launch(env, 'depth.launch.py', 'backend:=torch', 'weights:=/nope/dvd')
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert 'weights not found: /nope/dvd' in out  # the node's own error line
    assert 'stopped on its configuration (exit status 2' in out


def test_misspelt_parameter_stops_the_launch(env):
    proc = _launch(env, 'depth.launch.py', 'backend:=stand-in', 'model_hieght:=64')
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    assert "'model_hieght': did you mean model_height?" in out
    assert 'process started' not in out  # no node was started


def test_crashed_node_stops_the_launch_and_rviz_is_optional(env):
    from dvd_ros.ros.launch_support import rviz_available

    proc = _launch(env, 'depth.launch.py', 'backend:=stand-in', 'use_rviz:=true',
                   'use_sim_time:=true')
    try:
        out = _wait_for_line(proc, 'depth node ready')
        assert 'depth node ready' in out, out
        if not rviz_available():
            assert 'rviz2 is not installed' in out
        pid = int(out.split('process started with pid [')[1].split(']')[0])
        os.kill(pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + rest
    assert 'died (exit status -9): the launch stops' in rest


def test_sigint_ends_the_launch_cleanly(env):
    proc = _launch(env, 'depth.launch.py', 'backend:=stand-in')
    out = _wait_for_line(proc, 'depth node ready')
    assert 'depth node ready' in out, out
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out + rest
    assert 'died' not in rest
