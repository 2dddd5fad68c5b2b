"""A camera node without a camera: synthetic rooms (with ground truth) or a video file.

Publishes ``image`` (rgb8), ``camera_info`` and, for the synthetic source,
``ground_truth/depth`` (32FC1 metres, REP 118), all with the same header, at ``rate`` Hz.
Synthetic frames are rendered once at start-up (ray casting is far slower than real time) and
replayed; the stamps keep increasing, so a replayed clip looks like a camera circling its path.

Pacing (``pace_topic``): a real camera runs at its own rate and a slow model drops frames; a
synthetic one can instead wait for the pipeline. With ``pace_topic`` set to an output of the
depth node (``depth/disparity``), a frame is published only while fewer than
``max_in_flight`` published frames have not come back on that topic (matched by header
stamp): credit-based flow control, so the camera runs exactly as fast as the node sustains
and no frame is dropped, whatever the model's speed on this machine. ``rate`` stays the upper
bound. A frame not back within ``pace_timeout`` is given up (counted in ``lost``), so a node
that drops frames slows the camera down but cannot stall it.
"""

import sys
import threading
import time

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from dvd_ros import geometry
from dvd_ros.errors import InputError
from dvd_ros.ros import messages
from dvd_ros.ros.params import ParamSpec, declare_specs
from dvd_ros.ros.shutdown import run_node
from dvd_ros.ros.sync import stamp_ns

CAMERA_PARAMETERS = (
    ParamSpec('source', 'synthetic', '"synthetic" (procedural rooms with ground-truth depth) '
              'or the path of a video file'),
    ParamSpec('rate', 30.0, 'frames published per second', range=(0.1, 1000.0), unit='Hz'),
    ParamSpec('width', 128, 'synthetic render width (before upscale)', range=(8, 4096),
              unit='px'),
    ParamSpec('height', 96, 'synthetic render height (before upscale)', range=(8, 4096),
              unit='px'),
    ParamSpec('upscale', 1, 'integer upscale of every frame (cheap large images for load '
              'tests; K is scaled to match)', range=(1, 16)),
    ParamSpec('num_frames', 24, 'synthetic frames rendered at start-up and replayed',
              range=(1, 100000)),
    ParamSpec('seed', 0, 'synthetic scene seed', range=(0, 2**31 - 1)),
    ParamSpec('loop', True, 'replay the clip / video forever; false = stop after one pass'),
    ParamSpec('hfov_deg', 60.0, 'horizontal field of view of a video source (for CameraInfo)',
              range=(10.0, 170.0), unit='deg'),
    ParamSpec('frame_id', 'camera_optical_frame', 'frame_id of every header (optical frame)'),
    ParamSpec('min_subscribers', 0, 'publish nothing until image (and ground_truth/depth) have '
              'this many subscribers, so no frame is lost while they connect', range=(0, 1000)),
    ParamSpec('pace_topic', '', "sensor_msgs/Image topic of the pipeline's output (e.g. "
              'depth/disparity): publish a frame only while fewer than max_in_flight frames '
              'have not come back on it (no drops, at the rate the pipeline sustains); empty = '
              'fixed rate'),
    ParamSpec('max_in_flight', 8, 'pace_topic: frames published but not yet back (a depth node '
              'needs a window of frames plus the next hop to stay busy)', range=(1, 100000)),
    ParamSpec('pace_timeout', 10.0, 'pace_topic: a frame not back after this many seconds is '
              'given up (counted as lost), so dropped frames cannot stall the camera',
              range=(0.1, 3600.0), unit='s'),
)


class _Clip:
    """Pre-rendered synthetic frames: rgb (H, W, 3) uint8, depth (H, W) float32 m, K."""

    def __init__(self, params):
        from dvd_ros.synthetic import SyntheticScene
        scene = SyntheticScene(params['seed'], height=params['height'], width=params['width'])
        self.frames = [scene.render(i) for i in range(params['num_frames'])]
        self.intrinsics = geometry.PinholeIntrinsics.from_K(
            self.frames[0].K, params['width'], params['height'])

    def __len__(self):
        return len(self.frames)

    def get(self, i):
        frame = self.frames[i % len(self.frames)]
        return frame.rgb, frame.depth.astype(np.float32)


class _Video:
    """Frames of a video file read on demand (RGB), optionally restarted at the end."""

    def __init__(self, path, hfov_deg):
        self.path = path
        self.capture = cv2.VideoCapture(path)
        if not self.capture.isOpened():
            raise InputError(f'cannot open video {path!r}: check the path and that OpenCV can '
                             'decode it (e.g. an .mp4/.avi file)')
        ok, first = self.capture.read()
        if not ok:
            raise InputError(f'video {path!r} has no frames')
        self.first = first
        height, width = first.shape[:2]
        self.intrinsics = geometry.PinholeIntrinsics.from_fov(width, height, hfov_deg)

    def next(self, loop):
        if self.first is not None:
            frame, self.first = self.first, None
        else:
            ok, frame = self.capture.read()
            if not ok:
                if not loop:
                    return None
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.capture.read()
                if not ok:
                    return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class SyntheticCamera(Node):
    """Publish a synthetic or recorded camera stream (see module docstring).

    :param node_name: node name.
    :param kwargs: passed to :class:`rclpy.node.Node` (``namespace``, ``context``, ...).
    """

    def __init__(self, node_name='synthetic_camera', **kwargs):
        super().__init__(node_name, **kwargs)
        self.params = declare_specs(self, CAMERA_PARAMETERS)
        p = self.params
        self.pub_image = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data)
        self.pub_truth = None
        if p['source'] == 'synthetic':
            self.source = _Clip(p)
            self.pub_truth = self.create_publisher(Image, 'ground_truth/depth',
                                                   qos_profile_sensor_data)
        else:
            self.source = _Video(p['source'], p['hfov_deg'])
        intr = self.source.intrinsics
        self.intrinsics = intr.scaled(intr.width * p['upscale'], intr.height * p['upscale'])
        self.index = 0
        self.finished = False
        self._waiting = p['min_subscribers'] > 0
        self.lost = 0  # paced frames given up after pace_timeout
        self.returned = 0  # paced frames that came back on pace_topic
        self._in_flight = {}  # stamp (ns) -> time.monotonic() at publication
        self._pace_lock = threading.Lock()
        if p['pace_topic']:
            # Best effort matches a reliable or a best-effort publisher; a lost message only
            # costs pace_timeout.
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                             reliability=ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(Image, p['pace_topic'], self._on_done, qos)
        self.create_timer(1.0 / p['rate'], self._tick)
        paced = (f', paced by {self.resolve_topic_name(p["pace_topic"])} (at most '
                 f'{p["max_in_flight"]} frames in flight)' if p['pace_topic'] else '')
        self.get_logger().info(
            f'publishing {p["source"]} at {"up to " if paced else ""}{p["rate"]:g} Hz, '
            f'{self.intrinsics.width}x{self.intrinsics.height}, on '
            f'{self.resolve_topic_name("image")}{paced}')

    def stop_publishing(self):
        """Publish no more frames (the node keeps running; e.g. a recording is complete)."""
        self.finished = True

    @property
    def in_flight(self):
        """Return how many paced frames are published and not yet back."""
        with self._pace_lock:
            return len(self._in_flight)

    def _on_done(self, msg):
        with self._pace_lock:
            if self._in_flight.pop(stamp_ns(msg.header.stamp), None) is not None:
                self.returned += 1

    def _has_room(self):
        """Return True when a paced camera may publish (always for a fixed-rate one)."""
        p = self.params
        if not p['pace_topic']:
            return True
        now = time.monotonic()
        with self._pace_lock:
            expired = [s for s, t in self._in_flight.items() if now - t > p['pace_timeout']]
            for stamp in expired:
                del self._in_flight[stamp]
            self.lost += len(expired)
            return len(self._in_flight) < p['max_in_flight']

    def _next(self):
        p = self.params
        if isinstance(self.source, _Clip):
            if not p['loop'] and self.index >= len(self.source):
                return None, None
            return self.source.get(self.index)
        return self.source.next(p['loop']), None

    def _connected(self):
        """Return True once every output has ``min_subscribers`` subscribers (then stays so)."""
        if not self._waiting:
            return True
        need = self.params['min_subscribers']
        publishers = [self.pub_image] + ([self.pub_truth] if self.pub_truth else [])
        self._waiting = any(pub.get_subscription_count() < need for pub in publishers)
        return not self._waiting

    def _tick(self):
        if self.finished or not self._connected() or not self._has_room():
            return
        rgb, depth = self._next()
        if rgb is None:
            self.finished = True
            self.get_logger().info(f'end of {self.params["source"]} after {self.index} frames')
            return
        up = self.params['upscale']
        if up > 1:
            size = (rgb.shape[1] * up, rgb.shape[0] * up)
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
            if depth is not None:
                depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
        header = Header(frame_id=self.params['frame_id'])
        header.stamp = self.get_clock().now().to_msg()
        if self.params['pace_topic']:
            with self._pace_lock:
                self._in_flight[stamp_ns(header.stamp)] = time.monotonic()
        self.pub_info.publish(messages.camera_info_from_intrinsics(self.intrinsics, header))
        if self.pub_truth is not None and depth is not None:
            self.pub_truth.publish(messages.array_to_image(depth, '32FC1', header))
        self.pub_image.publish(messages.array_to_image(rgb, 'rgb8', header))
        self.index += 1


def main(argv=None):
    """Run the synthetic camera (``ros2 run dvd_ros synthetic_camera``); returns exit status."""
    return run_node(SyntheticCamera, 'synthetic_camera', argv)


if __name__ == '__main__':
    sys.exit(main())
