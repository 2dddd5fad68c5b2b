"""In-process helpers for the ROS tests: a context on a private domain, a probe node, frames."""

import os
from pathlib import Path
import threading
import time
import uuid

import numpy as np

from dvd_ros.ros.domain import confine_to_loopback, pick_domain

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / 'config' / 'fastdds_localhost.xml'

# One private domain per test run (random among those no process on this host uses), so
# concurrent runs (other suites, other users) never meet; DVD_TEST_DOMAIN_ID pins it.
DOMAIN_ID = int(os.environ.get('DVD_TEST_DOMAIN_ID') or pick_domain())
# Before any participant exists: traffic stays on loopback, profile with the big SHM segment;
# the environment is inherited by every process a test starts.
confine_to_loopback(PROFILE, force=True)
os.environ['ROS_DOMAIN_ID'] = str(DOMAIN_ID)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
import rclpy  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

OUTPUTS = {
    'depth/disparity': Image, 'depth/image': Image, 'depth/camera_info': CameraInfo,
    'depth/points': PointCloud2, 'depth/colorized': Image, 'depth/confidence': Image,
}


def domain_id():
    """Return this test run's ROS domain id (private, fixed for the run)."""
    return DOMAIN_ID


def make_context():
    """Create and init an rclpy context on the test domain."""
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx, domain_id=domain_id())
    return ctx


def frame(index, height=24, width=32):
    """Return a deterministic ``(H, W, 3) uint8`` frame that changes with ``index``."""
    y, x = np.mgrid[0:height, 0:width]
    base = (40 + 3 * x + 2 * y + 5 * index) % 200 + 20
    return np.stack([base, (base + 10) % 256, (base + 20) % 256], axis=2).astype(np.uint8)


def header(index, frame_id='cam_optical', period_ns=33_333_333, t0=1_000_000_000):
    """Return the Header of frame ``index`` (stamps increase by ``period_ns``)."""
    h = Header(frame_id=frame_id)
    t = t0 + index * period_ns
    h.stamp.sec, h.stamp.nanosec = t // 1_000_000_000, t % 1_000_000_000
    return h


def camera_info(hdr, width=32, height=24, f=30.0):
    """Return a CameraInfo with focal length ``f`` px and a centred principal point."""
    info = CameraInfo(header=hdr, width=width, height=height, distortion_model='plumb_bob')
    info.k = [f, 0.0, (width - 1) / 2, 0.0, f * 1.1, (height - 1) / 2, 0.0, 0.0, 1.0]
    info.p = [f, 0.0, (width - 1) / 2, 0.0, 0.0, f * 1.1, (height - 1) / 2, 0.0,
              0.0, 0.0, 1.0, 0.0]
    info.d = [0.0] * 5
    info.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    return info


def image_msg(rgb, hdr, encoding='rgb8'):
    """Build an Image message from ``(H, W, 3) uint8`` RGB."""
    msg = Image(header=hdr, height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
                step=rgb.shape[1] * 3)
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


class Probe(Node):
    """Publishes camera input and records every output of one depth node namespace."""

    def __init__(self, context, namespace='', hint_type=None):
        super().__init__(f'probe_{uuid.uuid4().hex[:8]}', namespace=namespace,
                         context=context)
        self.pub_image = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
        if hint_type is not None:
            self.pub_hint = self.create_publisher(hint_type, 'metric_hint',
                                                  qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.received = {topic: [] for topic in OUTPUTS}
        self.received['/diagnostics'] = []
        for topic, kind in OUTPUTS.items():
            self.create_subscription(kind, topic, self._recorder(topic), 50)
        self.create_subscription(DiagnosticArray, '/diagnostics',
                                 self._recorder('/diagnostics'), 10)

    def _recorder(self, topic):
        def record(msg):
            with self.lock:
                self.received[topic].append(msg)
        return record

    def count(self, topic):
        """Return how many messages arrived on ``topic``."""
        with self.lock:
            return len(self.received[topic])

    def by_stamp(self, topic):
        """Return ``{(sec, nanosec): msg}`` of ``topic``."""
        with self.lock:
            return {(m.header.stamp.sec, m.header.stamp.nanosec): m
                    for m in self.received[topic]}


class Spinner:
    """Spin an executor in a background thread (the depth node's worker publishes meanwhile)."""

    def __init__(self, context, *nodes):
        self.executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def stop(self):
        """Stop spinning and wait for the thread."""
        self._stop.set()
        self._thread.join(2.0)
        self.executor.shutdown(timeout_sec=0.5)


def wait_for(condition, timeout=10.0, period=0.02):
    """Poll ``condition()`` until true or ``timeout`` seconds; return its last value."""
    end = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < end:
        time.sleep(period)
        value = condition()
    return value


def overrides(**values):
    """Return rclpy Parameters for ``parameter_overrides``."""
    return [Parameter(k, value=v) for k, v in values.items()]


def wait_matched(probe, node, timeout=5.0):
    """Wait until the probe's publishers and subscriptions see the depth node."""
    return wait_for(lambda: probe.pub_image.get_subscription_count() > 0
                    and probe.pub_info.get_subscription_count() > 0
                    and node.pub_disparity.get_subscription_count() > 0, timeout)
