"""Over loopback DDS, real processes: a distorted camera sending JPEG reaches a depth node.

The camera publishes ``/cam/image_raw/compressed`` and ``/cam/camera_info``; the node, with
``image`` remapped to ``/cam/image_raw`` and ``image_transport: compressed``, finds both by
image_transport's conventions, rectifies and publishes the cloud of an undistorted camera.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')
import ros_camera_inputs as cam  # noqa: E402
from ros_harness import PROFILE, REPO, domain_id  # noqa: E402

pytestmark = pytest.mark.slow
FRAMES, RATE, WINDOW = 12, 8.0, 5


@pytest.fixture(scope='module')
def env():
    out = dict(os.environ)
    out.update(ROS_DOMAIN_ID=str(domain_id()), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               FASTDDS_DEFAULT_PROFILES_FILE=str(PROFILE), PYTHONUNBUFFERED='1',
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return out


def test_compressed_distorted_camera_end_to_end(env):
    node = subprocess.Popen(
        [sys.executable, '-m', 'dvd_ros.ros.depth_node', '--ros-args', '-r',
         'image:=/cam/image_raw', '-p', 'image_transport:=compressed', '-p', 'backend:=stand-in',
         '-p', f'window:={WINDOW}', '-p', 'overlap:=2'],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        camera = subprocess.run(
            [sys.executable, str(REPO / 'test' / 'ros_camera_inputs.py'), str(FRAMES),
             str(RATE)], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
        assert camera.returncode == 0, camera.stderr
    finally:
        node.send_signal(signal.SIGINT)
        _, err = node.communicate(timeout=10)
    assert node.returncode == 0 and 'Traceback' not in err, err
    assert 'subscribed to /cam/image_raw (compressed) and /cam/camera_info' in err
    got = json.loads(camera.stdout.strip().splitlines()[-1])
    sent = set(got['sent'])
    points = {int(k): v for k, v in got['depth/points'].items()}
    infos = {int(k): v for k, v in got['depth/camera_info'].items()}
    # Every frame but the unfinished tail of the stream (at most window - 1) is out.
    assert set(points) <= sent and len(points) >= FRAMES - (WINDOW - 1), (len(points), err)
    assert set(points) <= set(infos)
    p = np.reshape(cam.P, (3, 4))
    for info in infos.values():
        assert info['frame_id'] == 'cam_optical_frame' and info['size'] == [cam.WIDTH,
                                                                          cam.HEIGHT]
        assert info['d'] == [0.0] * 5  # rectified: no distortion left, K from P
        np.testing.assert_allclose(np.reshape(info['k'], (3, 3)), p[:, :3])
    first = min(points)
    assert points[first]['fields'] == ['x', 'y', 'z', 'rgb']
    xyz = np.array(points[first]['xyz'], np.float64)
    # The cloud of an undistorted camera with projection P, depth from the default metric
    # (1/z = 1.9 d + 0.1) of the stand-in's brightness.
    v, u = np.mgrid[0:cam.HEIGHT, 0:cam.WIDTH].astype(np.float64)
    x, y = (u - p[0, 2]) / p[0, 0], (v - p[1, 2]) / p[1, 1]
    disparity = np.clip(128 + 60 * np.sin(3 * x) * np.cos(2 * y) + 30 * x, 0, 255) / 255.0
    z = 1.0 / (1.9 * disparity + 0.1)
    expected = np.stack([x * z, y * z, z], axis=-1)
    inner = (slice(15, -15), slice(20, -20))
    np.testing.assert_allclose(xyz[inner], expected[inner], rtol=0.05, atol=5e-3)
