"""Real processes over DDS on loopback: camera -> depth node -> listener, and clean exits."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('rclpy')
from ros_harness import PROFILE, REPO, domain_id  # noqa: E402

pytestmark = pytest.mark.slow
WIDTH, HEIGHT, UPSCALE = 640, 480, 5
LISTEN_S = 8.0


@pytest.fixture(scope='module')
def env():
    out = dict(os.environ)
    out.update(ROS_DOMAIN_ID=str(domain_id()), FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE),
               PYTHONUNBUFFERED='1',
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    # LOCALHOST would add rmw_fastrtps' own UDP transport, bound to 0.0.0.0 and the host.
    out.pop('ROS_AUTOMATIC_DISCOVERY_RANGE', None)
    return out


def _start(env, *args):
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc, *signums, gap=0.05):
    """Send the signals, wait; return (exit status, seconds to exit, stderr)."""
    start = time.monotonic()
    for n, signum in enumerate(signums):
        if n:
            time.sleep(gap)
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, 10.0, err
    return proc.returncode, time.monotonic() - start, err


def _udp_sockets(pid):
    """Return the local (ip hex, port) of every UDP socket of the process (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f'/proc/{pid}/fd').iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    found = []
    for table in ('/proc/net/udp', '/proc/net/udp6'):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in inodes:
                ip_hex, port_hex = cols[1].split(':')
                found.append((ip_hex, int(port_hex, 16)))
    return found


def test_camera_to_depth_to_listener(env):
    domain = int(env['ROS_DOMAIN_ID'])
    camera = _start(env, '-m', 'dvd_ros.ros.synthetic_camera', '--ros-args',
                    '-p', f'upscale:={UPSCALE}', '-p', 'num_frames:=6', '-p', 'rate:=30.0',
                    '-p', 'frame_id:=cam_optical')
    node = _start(env, '-m', 'dvd_ros.ros.depth_node', '--ros-args', '-p', 'backend:=stand-in',
                  '-p', 'metric_mode:=fixed', '-p', 'window:=5', '-p', 'overlap:=2',
                  '-p', 'queue_size:=8')
    try:
        time.sleep(2.0)
        assert camera.poll() is None and node.poll() is None
        # Every UDP socket the processes bind is on 127.0.0.1, the domain's ports among them
        # (the XML profile is in force; nothing on 0.0.0.0 or the host's address).
        base = 7400 + 250 * domain  # RTPS well-known ports of this domain
        for proc in (camera, node):
            sockets = _udp_sockets(proc.pid)
            assert any(base <= port < base + 250 for _, port in sockets), sockets
            assert all(ip == '0100007F' for ip, _ in sockets), sockets
        listener = subprocess.run(
            [sys.executable, str(REPO / 'test' / 'ros_listener.py'), str(LISTEN_S)], cwd=REPO,
            env=env, capture_output=True, text=True, timeout=LISTEN_S + 30)
        assert listener.returncode == 0, listener.stderr
    finally:
        cam_rc, cam_s, cam_err = _stop(camera, signal.SIGINT)
        node_rc, node_s, node_err = _stop(node, signal.SIGTERM)
    got = json.loads(listener.stdout.strip().splitlines()[-1])
    counts = {topic: len(msgs) for topic, msgs in got.items()}
    common = set(got['depth/image']) & set(got['depth/camera_info']) & set(got['depth/points'])
    # Even a loaded 2-core CI box gets a few frames per second through at VGA.
    assert len(common) >= 10, counts
    for stamp in common:
        width, height, encoding, _ = got['depth/image'][stamp]
        assert (width, height, encoding) == (WIDTH, HEIGHT, '32FC1')
        width, height, (point_step, fields), _ = got['depth/points'][stamp]
        assert (width, height, point_step, fields) == (WIDTH, HEIGHT, 16, ['x', 'y', 'z', 'rgb'])
        width, height, k, _ = got['depth/camera_info'][stamp]
        assert (width, height) == (WIDTH, HEIGHT) and k[0] > 0 and k[8] == 1.0
    # The camera stamps with the same host clock: latency stamp -> listener is bounded by the
    # queue (8 frames) plus a window, generously for a shared CI machine.
    latencies = [v[3] / 1e9 for v in got['depth/image'].values()]
    assert max(latencies) < 5.0
    assert (cam_rc, node_rc) == (0, 0), (cam_err, node_err)
    assert cam_s < 2.0 and node_s < 2.0
    assert 'Traceback' not in cam_err + node_err


@pytest.mark.parametrize('signums', [(signal.SIGINT,), (signal.SIGTERM,),
                                     (signal.SIGINT, signal.SIGINT)])
def test_depth_node_exits_cleanly_on_signals(env, signums):
    node = _start(env, '-m', 'dvd_ros.ros.depth_node', '--ros-args', '-p', 'backend:=stand-in')
    time.sleep(3.0)  # imports done, spinning (a signal during start-up also ends it cleanly)
    assert node.poll() is None
    rc, seconds, err = _stop(node, *signums)
    assert rc == 0 and seconds < 2.0, (rc, seconds, err)
    assert 'Traceback' not in err and 'depth node ready' in err


def test_bad_parameter_exits_with_clear_error(env):
    node = _start(env, '-m', 'dvd_ros.ros.depth_node', '--ros-args', '-p', 'backend:=stand-in',
                  '-p', 'window:=5', '-p', 'overlap:=7')
    _, err = node.communicate(timeout=30)
    assert node.returncode == 2
    assert 'overlap (7) must be smaller than window (5)' in err and 'Traceback' not in err


def test_dvd_ros_run_two_cameras(env):
    code = ('import sys; from dvd_ros.cli.main import main; sys.exit(main(sys.argv[1:]))')
    proc = _start(env, '-c', code, 'run', '--backend', 'stand-in', '-n', 'cam_left', '-n',
                  'cam_right', '--with-synthetic-camera', '--camera-rate', '15',
                  '--anchor-ground-truth', '-p', 'window=5', '-p', 'overlap=2',
                  '--params-file', str(REPO / 'config' / 'depth.yaml'), '--duration', '18')
    time.sleep(4.0)
    # Listen long enough for a loaded CI machine: the listeners' own start-up and discovery
    # took most of a 4 s window there (3 messages seen).
    listeners = {ns: subprocess.Popen(
        [sys.executable, str(REPO / 'test' / 'ros_listener.py'), '9', ns], cwd=REPO, env=env,
        stdout=subprocess.PIPE, text=True) for ns in ('cam_left', 'cam_right')}
    got = {ns: json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
           for ns, p in listeners.items()}
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for ns in ('cam_left', 'cam_right'):
        assert f'subscribed to /{ns}/image' in err
        assert f'on /{ns}/image' in err  # its synthetic camera
        assert len(got[ns]['depth/camera_info']) >= 5, {k: len(v) for k, v in got[ns].items()}
        assert all(v[:2] == [128, 96] for v in got[ns]['depth/camera_info'].values())
        # The ground truth reaches the node as metric_hint (remapped). The stand-in's
        # brightness is no inverse depth, so the fit is refused (a <= 0) and said so.
        assert f'[{ns}.depth_node]: metric fit failed' in err
    assert 'Traceback' not in err


def test_shutdown_while_model_busy(env):
    """A model call cannot be interrupted: the process still exits within 2 s, status 0."""
    code = ('import sys; from dvd_ros.cli.main import main; sys.exit(main(sys.argv[1:]))')
    proc = _start(env, '-c', code, 'run', '--backend', 'stand-in', '--with-synthetic-camera',
                  '--camera-rate', '20', '-p', 'window=1', '-p', 'overlap=0',
                  '-p', 'stand_in_delay=30.0')
    time.sleep(5.0)  # camera rendered, first frame inside the 30 s "model" call
    assert proc.poll() is None
    rc, seconds, err = _stop(proc, signal.SIGINT, signal.SIGINT, gap=0.2)
    assert rc == 0 and seconds < 2.0, (rc, seconds, err)
    assert 'Traceback' not in err
