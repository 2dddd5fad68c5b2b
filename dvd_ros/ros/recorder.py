"""Record a camera and the depth node's outputs by stamp (for the demo and end-to-end checks).

Runs the synthetic camera, a depth node and a recorder in one process on one executor. The
topics still travel through DDS (intra-process communication is off), on loopback.
"""

from dataclasses import dataclass, field
from pathlib import Path
import time

import numpy as np


def use_loopback_dds():
    """Keep DDS on this machine unless the user configured it: call before ``rclpy.init``.

    Our Fast DDS profile (shared memory + UDPv4 on 127.0.0.1) when no profile is set, else
    ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` (:func:`~dvd_ros.ros.domain.confine_to_loopback`).
    """
    from dvd_ros.ros.domain import confine_to_loopback

    confine_to_loopback(shipped_config('fastdds_localhost.xml'))


def shipped_config(name):
    """Return the path of ``config/<name>`` (installed share/ or source tree), or None."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory('dvd_ros')) / 'config' / name)
    except Exception:  # noqa: BLE001 - no ament index (AMENT_PREFIX_PATH unset): source tree
        pass
    candidates.append(Path(__file__).resolve().parents[2] / 'config' / name)
    return next((path for path in candidates if path.is_file()), None)


@dataclass
class Recording:
    """Everything recorded, keyed by header stamp in nanoseconds."""

    rgb: dict = field(default_factory=dict)  # stamp -> (H, W, 3) uint8
    truth: dict = field(default_factory=dict)  # stamp -> (H, W) float32 metres
    disparity: dict = field(default_factory=dict)  # stamp -> (H, W) float32 relative
    depth: dict = field(default_factory=dict)  # stamp -> (H, W) float32 metres, NaN invalid
    confidence: dict = field(default_factory=dict)  # stamp -> (H, W) float32 in [0, 1]
    points: dict = field(default_factory=dict)  # stamp -> (N, 3) float32 (NaN rows kept)
    info: dict = field(default_factory=dict)  # stamp -> (3, 3) K of depth/camera_info
    diagnostics: list = field(default_factory=list)  # [(key, value), ...] of the last status
    camera: dict = field(default_factory=dict)  # the camera's counts: published, returned, lost
    latency_s: dict = field(default_factory=dict)  # stamp -> seconds from stamp to disparity

    def complete_stamps(self):
        """Return sorted stamps that have an input image, ground truth and a disparity."""
        return sorted(set(self.disparity) & set(self.rgb) & set(self.truth))


def record_demo(camera_params, depth_params, frames, timeout, regressor=None, log=print,
                domain_id=None):
    """Run camera -> depth node -> recorder until ``frames`` disparities arrived.

    :param camera_params: parameter overrides of the synthetic camera (dict).
    :param depth_params: parameter overrides of the depth node (dict).
    :param frames: number of complete frames (image, truth, disparity) to record.
    :param timeout: give up after this many seconds (returns what was recorded).
    :param regressor: optional model object injected into the depth node.
    :param log: callable for progress lines.
    :param domain_id: ROS domain of the run; None = a private one no process on this host
        uses (:func:`~dvd_ros.ros.domain.pick_domain`): the run is self-contained, and a
        camera of another run must not reach its node.
    :return: :class:`Recording`.
    """
    use_loopback_dds()
    from dvd_ros.ros.domain import pick_domain

    domain_id = pick_domain() if domain_id is None else int(domain_id)
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from dvd_ros.errors import DvdError
    from dvd_ros.ros.depth_node import DepthNode
    from dvd_ros.ros.shutdown import finish
    from dvd_ros.ros.synthetic_camera import SyntheticCamera

    def overrides(values):
        return [Parameter(name, value=value) for name, value in values.items()]

    context = rclpy.context.Context()
    rclpy.init(args=[], context=context, domain_id=domain_id)
    log(f'demo: ROS domain {domain_id}')
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    nodes = []
    recording = Recording()
    try:
        # The depth node first: loading a model takes a while and frames sent before its
        # subscription exists would simply be missed.
        depth = DepthNode(regressor=regressor, context=context,
                          parameter_overrides=overrides(depth_params),
                          cli_args=['--ros-args', '-r', 'metric_hint:=ground_truth/depth'])
        nodes.append(depth)
        recorder = _make_recorder(context, recording)
        nodes.append(recorder)
        for node in nodes:
            executor.add_node(node)
        # The camera starts once the model is loaded (in the node's worker): no frame waits.
        start = time.monotonic()
        while not depth.wait_ready(0) and time.monotonic() - start < timeout:
            if depth.fatal_error:
                raise DvdError(depth.fatal_error)
            executor.spin_once(timeout_sec=0.05)
        camera = SyntheticCamera(context=context, parameter_overrides=overrides(camera_params))
        nodes.append(camera)
        executor.add_node(camera)
        start = time.monotonic()
        last_report = start
        while len(recording.complete_stamps()) < frames:
            if time.monotonic() - start > timeout:
                log(f'demo: timeout after {timeout:.0f} s with '
                    f'{len(recording.complete_stamps())} of {frames} frames')
                break
            executor.spin_once(timeout_sec=0.05)
            if time.monotonic() - last_report > 2.0:
                last_report = time.monotonic()
                log(f'demo: {len(recording.complete_stamps())}/{frames} frames')
        # One more diagnostics period, so the recorded status covers the whole run (and no
        # frame the status does not count yet).
        camera.stop_publishing()
        end = time.monotonic() + 1.2
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        recording.camera = {'published': camera.index, 'returned': camera.returned,
                            'lost': camera.lost}
    finally:
        finish(nodes, executor, context)
    return recording


def _disparity(msg):
    from dvd_ros.ros import messages
    return np.array(messages.image_to_array(msg, ('32FC1',)), dtype=np.float32)


def _make_recorder(context, recording):
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from dvd_ros.ros import messages
    from dvd_ros.ros.sync import stamp_ns

    node = Node('demo_recorder', context=context)

    def keep(store, convert):
        def callback(msg):
            store[stamp_ns(msg.header.stamp)] = convert(msg)
        return callback

    def keep_status(msg):
        for status in msg.status:
            if 'depth' in status.name:
                recording.diagnostics = [(kv.key, kv.value) for kv in status.values]

    sensor = qos_profile_sensor_data
    node.create_subscription(Image, 'image', keep(recording.rgb, messages.image_to_rgb), sensor)
    node.create_subscription(Image, 'ground_truth/depth',
                             keep(recording.truth, messages.image_to_depth), sensor)
    # Disparity 0 is valid (the far end), unlike depth 0: read it as is, not as REP 118 depth.
    def keep_disparity(msg):
        stamp = stamp_ns(msg.header.stamp)
        recording.latency_s[stamp] = node.get_clock().now().nanoseconds * 1e-9 - stamp * 1e-9
        recording.disparity[stamp] = _disparity(msg)

    node.create_subscription(Image, 'depth/disparity', keep_disparity, 50)
    node.create_subscription(Image, 'depth/confidence',
                             keep(recording.confidence, _disparity), 50)
    node.create_subscription(Image, 'depth/image',
                             keep(recording.depth, messages.image_to_depth), 50)
    node.create_subscription(PointCloud2, 'depth/points',
                             keep(recording.points, messages.cloud_to_xyz), 50)
    node.create_subscription(CameraInfo, 'depth/camera_info',
                             keep(recording.info, messages.camera_info_matrix), 50)
    node.create_subscription(DiagnosticArray, '/diagnostics', keep_status, 10)
    return node
