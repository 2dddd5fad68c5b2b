"""The depth node: camera images in, disparity / metric depth / point clouds out.

Callbacks only convert and queue; one worker thread loads the model, then feeds the streaming
pipeline (``stream.pipeline.StreamPipeline``: the model on one thread, alignment and publishing
of the previous window on another), so neither a slow load nor a slow model blocks the executor
(services and /diagnostics answer meanwhile). The input queue is bounded and drops its OLDEST
frame when full: the newest frames are the ones worth computing, and every drop is counted and
reported on /diagnostics. When no frame arrives for ``flush_timeout`` seconds, the frames the
stream still holds are finished and published.
"""

from collections import deque
from dataclasses import dataclass
import math
import os
import sys
import threading
import time

import cv2
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

from dvd_ros import geometry
from dvd_ros.colorize import colorize
from dvd_ros.errors import DvdError, InputError
from dvd_ros.rectify import Rectifier, rectify_pixels
from dvd_ros.ros import diagnostics, image_inputs, messages
from dvd_ros.ros.params import STAND_IN_BACKEND, DepthParameters
from dvd_ros.ros.shutdown import run_node
from dvd_ros.ros.sync import StampBuffer, StampSync, stamp_ns
from dvd_ros.stream.output_check import FiniteOutputGuard

# Seconds between two log lines about the same problem (the count of repeats is kept).
LOG_THROTTLE_S = 10.0
# A stamp this many seconds older than the previous one starts a new stream (bag loop, clock
# reset) instead of being dropped as out of order.
TIME_JUMP_S = 1.0
# Metric hint samples kept per frame: plenty for a 2-parameter robust fit, and it bounds the
# memory of buffered dense hints (a VGA depth image would be 300k samples).
HINT_MAX_SAMPLES = 20_000
# Hint messages kept at least (oldest forgotten first); the node keeps one per frame that can
# still be in the queue or the window, so a long window (81 for DVD) keeps its hints too.
HINT_CAPACITY = 64
# Frames the pipeline holds beyond the queue: its input slots, and a window being finished
# while the next one runs in the model (stream.pipeline.StreamPipeline, input_capacity=2).
PIPELINE_INPUT = 2


def hint_capacity(window, queue_size):
    """Return how many hint messages to keep: one per frame the node may still publish."""
    return max(HINT_CAPACITY, 2 * window + PIPELINE_INPUT + queue_size)
# Seconds the worker may take to finish its current window at shutdown.
JOIN_TIMEOUT_S = 0.5


@dataclass
class FrameRecord:
    """What the node keeps of one input frame while the estimator holds it (``stamp``)."""

    header: object  # std_msgs/Header of the input image, copied to every output
    info: object  # sensor_msgs/CameraInfo with the same stamp, or None
    rgb: np.ndarray  # (H, W, 3) uint8, at the output size
    received: float  # time.monotonic() at reception
    restart: bool = False  # first frame after a backwards time jump: start a new stream


def build_regressor(params):
    """Create the model named by the parameters (imports torch only for real backends).

    :param params: :class:`~dvd_ros.ros.params.DepthParams`.
    :return: an object with ``predict((T, H, W, 3) uint8) -> (T, H, W) float32``.
    """
    if params.backend == STAND_IN_BACKEND:
        from dvd_ros.ros.stand_in import StandInRegressor
        return StandInRegressor(delay=params.stand_in_delay)
    import torch

    from dvd_ros.model.regressor import DepthRegressor
    options = {}
    if params.device.startswith('cpu'):
        # The worker shares the CPU with the executor threads: measured on 2 cores, two torch
        # threads made a window of the tiny model 25x slower than one (onnxruntime likewise).
        threads = params.cpu_threads or max(1, (os.cpu_count() or 2) - 1)
        torch.set_num_threads(threads)
        if params.backend == 'onnxruntime':
            options['threads'] = threads
    if params.precision:
        options['precision'] = params.precision
    if params.fp8_calibration:
        from dvd_ros.model.precision import load_calibration
        options['calibration'] = load_calibration(params.fp8_calibration)
    if params.backend == 'torch':
        options['cuda_graphs'] = params.cuda_graphs
    return DepthRegressor.from_pretrained(
        params.weights or None, device=params.device, dtype=params.dtype,
        height=params.model_height or None, width=params.model_width or None,
        backend=params.backend, **options)


def _thin(n):
    """Return the indices of at most ``HINT_MAX_SAMPLES`` of ``n`` samples, evenly spread."""
    if n <= HINT_MAX_SAMPLES:
        return slice(None)
    return np.linspace(0, n - 1, HINT_MAX_SAMPLES).astype(np.int64)


def alignment_options(stream):
    """Describe the alignment options a stream runs with, as diagnostics ``{key: text}``.

    Read from the stream itself (not the parameters), so it shows what is really in force.
    """
    clip = stream.scale_clip
    drift = 'off'
    if stream.drift_strength > 0:
        horizon = 'all' if stream.drift_horizon is None else f'{stream.drift_horizon}'
        drift = f'strength {stream.drift_strength:g}, horizon {horizon} windows'
    return {
        'policy': stream.policy,
        'alignment robust': {False: 'none', None: 'none', True: 'huber'}.get(stream.robust,
                                                                           stream.robust),
        'alignment scale fit': 'symmetric' if stream.symmetric else 'least squares',
        'alignment scale clip': 'off' if clip is None else f'[{clip[0]:g}, {clip[1]:g}]',
        'alignment drift prior': drift,
        'flush mode': stream.flush_mode,
        'confidence tau': f'{stream.confidence_tau:g}',
    }


class DepthNode(Node):
    """ROS 2 node running DVD on one camera (see docs/ros.md for topics and parameters).

    :param regressor: the model; None builds it from the parameters (``weights``, ``backend``).
        Tests inject a stand-in here.
    :param node_name: node name.
    :param kwargs: passed to :class:`rclpy.node.Node` (``namespace``, ``context``,
        ``parameter_overrides``, ...).
    """

    def __init__(self, regressor=None, node_name='depth_node', **kwargs):
        super().__init__(node_name, **kwargs)
        self._worker = None
        try:
            self._setup(regressor, node_name)
        except BaseException:
            # A half-built node would stay registered in the context and break its shutdown.
            super().destroy_node()
            raise

    def _setup(self, regressor, node_name):
        self.parameters = DepthParameters(self)
        p = self.parameters.current
        self.stats = diagnostics.NodeStats()
        self._log_times = {}
        self._log_counts = {}
        self._lock = threading.Lock()
        self._intake = threading.Lock()  # taking pairs from the sync into the queue
        # The model, its (window, overlap) and the stream: set by _attach, at once for an
        # injected model, else by the worker once the model is loaded.
        self.regressor = self.window = self._stream = self._pipeline = None
        self._node_name = node_name
        self.load_error = None
        self._loaded = threading.Event()
        self._last_arrival = time.monotonic()
        # When the pipeline last finished a window (or failed one): an idle pause counts from
        # the later of the two, so a model busy with earlier frames is not a stopped camera.
        self._last_output = self._last_arrival
        self._idle_flushed = None  # the _last_arrival the last idle flush came after
        if regressor is not None:
            self._attach(regressor, p)
        self._size = None
        self._fit = None  # anchored mode: the last geometry.MetricFit
        self._last_stamp = None

        self._sync = self._new_sync(p)
        self._hints = self._new_hints(p)
        self._queue = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()

        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=p.qos_depth,
            reliability=(ReliabilityPolicy.RELIABLE if p.qos_reliability == 'reliable'
                         else ReliabilityPolicy.BEST_EFFORT))
        self.pub_disparity = self.create_publisher(Image, 'depth/disparity', qos)
        self.pub_depth = self.create_publisher(Image, 'depth/image', qos)
        self.pub_info = self.create_publisher(CameraInfo, 'depth/camera_info', qos)
        self.pub_points = (self.create_publisher(PointCloud2, 'depth/points', qos)
                           if p.publish_points else None)
        self.pub_colorized = (self.create_publisher(Image, 'depth/colorized', qos)
                              if p.publish_colorized else None)
        self.pub_confidence = (self.create_publisher(Image, 'depth/confidence', qos)
                               if p.publish_confidence else None)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

        self._subscribe_inputs(p)
        self.create_timer(0.05, self._poll_sync)
        self.create_timer(p.diagnostics_period, self._publish_diagnostics)

        if p.metric_mode == 'none' and p.publish_points:
            self.get_logger().info('metric_mode is none: depth/image and depth/points stay '
                                   'silent; set metric_mode fixed or anchored for metres')
        self._worker = threading.Thread(target=self._run, name=f'{node_name}_worker',
                                        daemon=True)
        self._worker.start()
        if self._stream is not None:
            self._log_ready()
        else:
            self.get_logger().info(f'loading the model (backend {p.backend}); images on '
                                   f'{self.resolve_topic_name("image")} queue meanwhile')

    def _log_ready(self):
        p = self.parameters.current
        self.get_logger().info(
            f'depth node ready: backend {self._backend_name()}, window {self.window[0]}, overlap '
            f'{self.window[1]}, metric {p.metric_mode}, subscribed to {self._image_topic} '
            f'({p.image_transport}) and {self._info_topic}')

    def _attach(self, regressor, p):
        """Use ``regressor``: resolve the window, make the stream (raises InputError)."""
        # (window, overlap) in frames: the parameters, or what the weights recommend.
        window = p.resolved_window(getattr(regressor, 'recommended_window', None))
        self.regressor, self.window = regressor, window
        self._stream = self._make_stream(p)
        from dvd_ros.stream.pipeline import StreamPipeline
        # The model runs window k+1 while window k is aligned and published (_deliver).
        self._pipeline = StreamPipeline(self._stream, self._deliver, on_error=self._stream_error,
                                        input_capacity=PIPELINE_INPUT, name=self._node_name)
        with self._lock:
            # Hints are kept for every frame the queue and the pipeline can hold.
            capacity = hint_capacity(self._stream.window, p.queue_size)
            for buffer in (getattr(self, '_hints', None), getattr(self, '_remapped', None)):
                if buffer is not None:
                    buffer.capacity = max(buffer.capacity, capacity)
        # Frames the queue dropped while the model loaded do not make the running node WARN.
        self.stats.restart_horizon()
        self._loaded.set()

    def _load(self):
        """Build the model from the parameters (worker thread); return True when it is ready."""
        p = self.parameters.current
        start = time.monotonic()
        try:
            self._attach(build_regressor(p), p)
        except Exception as exc:  # noqa: BLE001 - any load failure ends the node, said once
            self.load_error = str(exc) if isinstance(exc, DvdError) else (
                f'loading the model failed: {type(exc).__name__}: {exc}')
            self.get_logger().error(self.load_error)
            self._loaded.set()  # the load has ended: wait_ready answers False at once
            return False
        self.get_logger().info(f'model loaded in {time.monotonic() - start:.1f} s')
        self._log_ready()
        return True

    @property
    def fatal_error(self):
        """Return why the node cannot work (the model failed to load), or None."""
        return self.load_error

    def wait_ready(self, timeout=None):
        """Wait for the model load to end; return True when loaded (False: timeout or error)."""
        return self._loaded.wait(timeout) and self.load_error is None

    # ----------------------------------------------------------------------------- helpers
    def _new_sync(self, p):
        return StampSync(tolerance_ns=int(p.sync_tolerance * 1e9), timeout_s=p.sync_timeout,
                         max_pending=max(8, p.queue_size))

    def _new_hints(self, p):
        window = self._stream.window if self._stream is not None else 0
        return StampBuffer(hint_capacity(window, p.queue_size),
                           tolerance_ns=int(p.sync_tolerance * 1e9))

    def _make_stream(self, p):
        from dvd_ros.stream.estimator import StreamingDepth
        self._guard = FiniteOutputGuard(self.regressor)
        return StreamingDepth(self._guard, *self.window, **p.stream_options())

    def _backend_name(self):
        if self.regressor is None:
            return self.parameters.current.backend
        return str(getattr(self.regressor, 'backend_name', type(self.regressor).__name__))

    def report(self, cause, message, drop=True):
        """Count a problem and log it, at most once per ``LOG_THROTTLE_S`` per cause."""
        if drop:
            self.stats.drop(cause)
        now = time.monotonic()
        with self._lock:
            self._log_counts[cause] = self._log_counts.get(cause, 0) + 1
            last = self._log_times.get(cause)
            if last is not None and now - last < LOG_THROTTLE_S:
                return
            repeats = self._log_counts[cause] - 1
            self._log_counts[cause] = 0
            self._log_times[cause] = now
        more = f' ({repeats} more since the last report)' if repeats else ''
        self.get_logger().warning(f'{message}{more}')

    @property
    def worker_alive(self):
        """Return True while the worker thread runs."""
        return self._worker.is_alive()

    @property
    def queue_length(self):
        """Return the number of frames waiting for the worker."""
        with self._cond:
            return len(self._queue)

    # ----------------------------------------------------------------------------- callbacks
    def _subscribe_inputs(self, p):
        # image_transport's conventions: the compressed stream is <image>/compressed and the
        # CameraInfo the sibling <image dirname>/camera_info, unless camera_info is remapped.
        self._image_topic = self.resolve_topic_name('image')
        remapped = self.resolve_topic_name('camera_info')
        if remapped != self.resolve_topic_name('camera_info', only_expand=True):
            self._info_topic = remapped
        else:
            self._info_topic = self._image_topic.rsplit('/', 1)[0] + '/camera_info'
        self._topic_rectified = 'rect' in self._image_topic.rsplit('/', 1)[-1]
        self._rectifier = Rectifier()
        # The raw models of remapped frames, for their hints: frames in the queue or a window
        # (the stream may not exist yet while the model loads; 161 is the longest window).
        self._remapped = StampBuffer(161 + p.queue_size)
        self._warned = set()
        self._hint_rejected = 0
        self._points_silent = ('metric_mode is none: depth/image and depth/points are off; set '
                               'metric_mode fixed or anchored' if p.metric_mode == 'none'
                               and p.publish_points else None)
        self._decoder = None
        if p.image_transport == 'compressed':
            self._decoder = image_inputs.BackgroundDecoder(
                self._decoded, capacity=min(p.queue_size, 4), name='image_decoder',
                on_error=lambda exc: self.report('internal_error', 'decoding an image failed: '
                                                 f'{type(exc).__name__}: {exc}'))
            self.create_subscription(CompressedImage, self._image_topic + '/compressed',
                                     self._on_image, qos_profile_sensor_data)
        else:
            self.create_subscription(Image, 'image', self._on_image, qos_profile_sensor_data)
        self.create_subscription(CameraInfo, self._info_topic, self._on_info,
                                 qos_profile_sensor_data)
        if p.metric_mode == 'anchored':
            if p.hint_transport == 'compressedDepth':
                hint_type, hint_topic = CompressedImage, (self.resolve_topic_name('metric_hint')
                                                          + '/compressedDepth')
            else:
                hint_type = Image if p.hint_type == 'image' else PointCloud2
                hint_topic = 'metric_hint'
            self.create_subscription(hint_type, hint_topic, self._on_hint,
                                     qos_profile_sensor_data)

    def warn_once(self, key, message):
        """Log ``message`` the first time ``key`` is seen (assumptions, conventions)."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self.get_logger().warning(message)

    def _on_image(self, msg):
        now = time.monotonic()
        with self.stats.lock:
            self.stats.input_rate.tick(now)
        if self._decoder is not None:
            # A JPEG/PNG decode takes milliseconds: off the executor thread, bounded, in order.
            if self._decoder.submit((msg, now)):
                self.report('decode_queue_full', 'decoding slower than the camera: dropped the '
                            'oldest compressed image waiting to be decoded')
            return
        self._decoded((msg, now))

    def _decoded(self, item):
        msg, now = item
        try:
            if isinstance(msg, CompressedImage):
                rgb = image_inputs.compressed_to_rgb(msg)
            else:
                rgb = image_inputs.camera_to_rgb(
                    msg, warn=lambda text: self.warn_once(f'encoding {msg.encoding}', text))
        except messages.ImageError as exc:
            self.report(exc.cause, f'dropping image: {exc}')
            return
        msg.header = self._output_header(msg.header)
        # Pairs leave the sync and join the queue in one step: the decoder thread and the
        # executor (_on_info, _poll_sync) both release pairs, and frames keep their order.
        with self._intake:
            stamp = stamp_ns(msg.header.stamp)
            restart = False
            with self._lock:
                late = None if self._last_stamp is None else (self._last_stamp - stamp) / 1e9
                if late is not None and late > TIME_JUMP_S:
                    # A clock reset or a looping bag: a new stream, not a late frame. Pending
                    # images and infos belong to the old time line.
                    restart = True
                    self.stats.drop('time_jump', self._sync.pending)
                    # This image's CameraInfo may have come first, into the old time line's sync.
                    info = self._sync.infos.find(stamp)
                    self._sync = self._new_sync(self.parameters.current)
                    if info is not None:
                        self._sync.infos.add(stamp_ns(info.header.stamp), info)
                    self._hints = self._new_hints(self.parameters.current)
                if late is None or late < 0 or restart:
                    self._last_stamp = stamp
                    ready = self._sync.add_image(stamp, (msg.header, rgb, now, restart))
            if restart:
                self.report('time_jump', f'image stamp jumped {late:.3f} s back (clock reset or '
                            'bag loop): restarting the stream', drop=False)
            elif late is not None and late >= 0:
                self.report('out_of_order', f'dropping image stamped {late:.3f} s before (or at) '
                            'the previous one: stamps must increase')
                return
            self._enqueue(ready)

    def _output_header(self, header):
        frame_id = self.parameters.current.frame_id
        if frame_id:
            header = Header(stamp=header.stamp, frame_id=frame_id)
        if not geometry.looks_optical(header.frame_id):
            self.warn_once(f'frame {header.frame_id}', f'frame_id {header.frame_id!r} does not '
                           'look like an optical frame (REP 103: z forward, x right, y down; '
                           'names end in _optical_frame): a cloud in a body frame shows '
                           'rotated; set the frame_id parameter to the camera optical frame')
        return header

    def _rectified(self, item, info):
        """Return ``(item, info)`` in the rectified geometry (``rectify`` parameter)."""
        mode = self.parameters.current.rectify
        if info is None or mode == 'off':
            return item, info
        header, rgb, received, restart = item
        try:
            model = messages.camera_model(info, rgb.shape[1], rgb.shape[0])
            if model.is_rectified:
                return item, info
            try:
                geometry.check_plausible(geometry.PinholeIntrinsics.from_K(
                    model.K, model.width, model.height))
            except InputError:
                return item, info  # no points: reported once where they are made (_camera)
            model.check_rectifiable()
            if mode == 'on' or not self._topic_rectified:
                rgb = self._rectifier.remap(rgb, model)
                with self._lock:
                    self._remapped.add(stamp_ns(header.stamp), model)
        except InputError as exc:
            self.report('rectify', f'cannot rectify, the image and CameraInfo are used as they '
                        f'are: {exc}', drop=False)
            return item, info
        return (header, rgb, received, restart), messages.camera_info_of_model(
            model.rectified(), info)

    def _on_info(self, msg):
        with self._intake:
            with self._lock:
                ready = self._sync.add_info(stamp_ns(msg.header.stamp), msg)
            self._enqueue(ready)

    def _on_hint(self, msg):
        p = self.parameters.current
        try:
            if isinstance(msg, (Image, CompressedImage)):
                depth = (messages.image_to_depth(msg) if isinstance(msg, Image)
                         else image_inputs.compressed_depth_to_metres(msg))
                depth = self._plausible_hint(depth, p)
                v, u = np.nonzero(np.isfinite(depth))
                keep = _thin(v.size)
                v, u = v[keep].astype(np.int32), u[keep].astype(np.int32)
                hint = ('image', (depth.shape, v, u, depth[v, u]))
            else:
                xyz = messages.cloud_to_xyz(msg)
                xyz = xyz[np.isfinite(xyz).all(axis=1) & (xyz[:, 2] > 0)]
                xyz = xyz[np.isfinite(self._plausible_hint(xyz[:, 2], p))]
                hint = ('points', xyz[_thin(len(xyz))])
        except messages.ImageError as exc:
            self.report(f'hint_{exc.cause}', f'ignoring metric_hint: {exc}', drop=False)
            return
        with self._lock:
            self._hints.add(stamp_ns(msg.header.stamp), hint)

    def _plausible_hint(self, depth, p):
        """Return ``depth`` (metres) with samples outside the hint range set to NaN."""
        with np.errstate(invalid='ignore'):
            out = (depth < p.hint_min_depth) | (depth > p.hint_max_depth)
        n = int(np.count_nonzero(out))
        if not n:
            return depth
        with self._lock:
            self._hint_rejected += n
        self.report('hint_range', f'rejected {n} metric_hint samples outside [{p.hint_min_depth:g}'
                    f', {p.hint_max_depth:g}] m (hint_min_depth / hint_max_depth): check the '
                    'sensor and its units', drop=False)
        return np.where(out, np.float32(np.nan), depth).astype(np.float32)

    def _poll_sync(self):
        with self._intake:
            with self._lock:
                ready = self._sync.poll()
            self._enqueue(ready)

    def _enqueue(self, pairs):
        if not pairs:
            return
        pairs = [self._rectified(item, info) for item, info in pairs]
        dropped = 0
        with self._cond:
            self._last_arrival = time.monotonic()
            for (header, rgb, received, restart), info in pairs:
                self._queue.append(FrameRecord(header, info, rgb, received, restart))
                if len(self._queue) > self.parameters.current.queue_size:
                    lost = self._queue.popleft()
                    dropped += 1
                    if lost.restart:
                        # The time line changed all the same: the next frame starts the stream.
                        self._queue[0].restart = True
            self._cond.notify()
        if dropped:
            self.report('queue_full', 'model slower than the camera: dropped the oldest queued '
                        f'frame(s) (queue_size {self.parameters.current.queue_size})')
            if dropped > 1:
                self.stats.drop('queue_full', dropped - 1)

    # ----------------------------------------------------------------------------- worker
    def _run(self):
        if self._stream is None and not self._load():
            return
        if self._stop.is_set():
            # stop() came while the model loaded: it found no pipeline to cancel.
            self._pipeline.cancel(timeout=0.0)
            return
        while not self._stop.is_set():
            with self._cond:
                idle = False
                while not self._queue and not self._stop.is_set():
                    wait, idle = self._idle_wait()
                    if idle:
                        break
                    self._cond.wait(wait)
                if self._stop.is_set():
                    return
                record = None if idle else self._queue.popleft()
            try:
                if record is None:
                    self._flush_if_idle()
                    continue
                self._process(record)
            except Exception as exc:  # noqa: BLE001 - a dead worker would silence the node
                self.report('internal_error', f'processing a frame failed, it is dropped and '
                            f'the node goes on: {type(exc).__name__}: {exc}')

    def _idle_wait(self):
        """Return (seconds to wait for a frame, whether the stream is due for an idle flush)."""
        timeout = self.parameters.current.flush_timeout
        # One flush per pause: frames the stream lost uncounted would otherwise stay pending
        # and the worker would flush again and again.
        if (timeout <= 0 or self._stream.stats.pending == 0
                or self._idle_flushed == self._last_arrival):
            return 0.2, False
        left = max(self._last_arrival, self._last_output) + timeout - time.monotonic()
        return min(0.2, max(left, 0.0)), left <= 0

    def _flush_if_idle(self):
        # The model may still be on earlier frames (a slow window, or a camera paced by our
        # output waiting for it): wait for them, then ask again, since they may have brought
        # new frames or finished the stream's pending ones.
        self._pipeline.drain()
        with self._cond:
            if self._queue or self._stop.is_set() or not self._idle_wait()[1]:
                return
            self._idle_flushed = self._last_arrival
        self._flush_idle()

    def _flush_idle(self):
        # The camera stopped (or paused): the frames waiting for their window would otherwise
        # never be published. The next frame starts a new stream.
        held = self._stream.stats.pending
        self._restart_stream()
        self.get_logger().info(
            f'no image for {self.parameters.current.flush_timeout:g} s: finished the stream '
            f'({held} held frame(s) published); the next image starts a new one')

    def _process(self, record):
        p = self.parameters.current
        rgb = record.rgb
        if p.output_scale != 1.0:
            h, w = rgb.shape[:2]
            size = (max(1, round(w * p.output_scale)), max(1, round(h * p.output_scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            record.rgb = rgb
        if record.restart:
            self._restart_stream()
        elif self._size is not None and rgb.shape[:2] != self._size:
            self.report('resolution_change', f'image size changed from {self._size[1]}x'
                        f'{self._size[0]} to {rgb.shape[1]}x{rgb.shape[0]}: finishing the '
                        'current window and restarting the stream', drop=False)
            self._restart_stream()
        self._size = rgb.shape[:2]
        try:
            self._pipeline.push(rgb, record, arrival=record.received)
        except InputError as exc:
            # The stream counts the frame (reason invalid).
            self.report('model_error', f'frame rejected by the stream: {exc}', drop=False)

    def _restart_stream(self):
        # The tail goes through _deliver like any window; a model failure reaches
        # _stream_error (the stream counts the frames it lost and starts over anyway).
        self._pipeline.flush(wait=True)
        self._fit = None

    def _deliver(self, frames):
        """Publish the frames one window made final (the pipeline's finishing thread)."""
        stream_stats = self._stream.stats
        with self.stats.lock:
            if stream_stats.windows != self.stats.windows:
                self.stats.windows = stream_stats.windows
                self.stats.model_s.add(stream_stats.last_model_seconds)
        self._publish_all(frames)
        self._last_output = time.monotonic()

    def _stream_error(self, exc, stage):
        self._last_output = time.monotonic()
        if stage == 'model':
            # The stream counts the frames it lost (reason model_error / size_mismatch).
            self.report('model_error', f'model window failed, its frames are dropped and the '
                        f'stream restarts: {type(exc).__name__}: {exc}', drop=False)
        else:
            self.report('internal_error', f'finishing a window failed ({stage}), its frames '
                        f'are lost and the node goes on: {type(exc).__name__}: {exc}')

    def _publish_all(self, frames):
        if not frames:
            return
        p = self.parameters.current
        if p.metric_mode == 'anchored':
            try:
                self._update_fit(frames, p)
            except Exception as exc:  # noqa: BLE001 - the frames still publish (previous fit)
                self.report('hint_fit', f'metric fit failed, keeping the previous one: '
                            f'{type(exc).__name__}: {exc}', drop=False)
        for frame in frames:
            try:
                self._publish(frame, p)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not stop the worker
                self.report('publish_error', f'could not publish a depth frame: '
                            f'{type(exc).__name__}: {exc}')

    # ----------------------------------------------------------------------------- outputs
    def _intrinsics(self, record, width, height, p):
        return self._camera(record, width, height, p)[0]

    def _camera(self, record, width, height, p):
        """Return ``(intrinsics, CameraInfo to publish)`` of a frame; both None or both set.

        The published CameraInfo is always the model the points use: the (rescaled) input
        calibration, or the ``fov_fallback_deg`` pinhole when it is missing or implausible.
        """
        info = record.info
        if info is not None:
            iw = info.width or width
            ih = info.height or height
            try:
                intr = geometry.PinholeIntrinsics.from_K(messages.camera_info_matrix(info),
                                                         iw, ih)
                geometry.check_plausible(intr)
            except InputError as exc:
                then = ('using fov_fallback_deg' if p.fov_fallback_deg > 0
                        else 'no points for this frame')
                self.report('bad_camera_info', f'CameraInfo unusable, {then}: {exc}',
                            drop=False)
            else:
                intr = intr if (iw, ih) == (width, height) else intr.scaled(width, height)
                return intr, messages.restamp_camera_info(info, record.header, intr)
        if p.fov_fallback_deg > 0:
            intr = geometry.PinholeIntrinsics.from_fov(width, height, p.fov_fallback_deg)
            return intr, messages.camera_info_from_intrinsics(intr, record.header)
        return None, None

    def _metric(self, p):
        if p.metric_mode == 'fixed':
            return p.metric_a, p.metric_b
        fit = self._fit  # read once: a restart on the worker resets it meanwhile
        if p.metric_mode == 'anchored' and fit is not None:
            return fit.a, fit.b
        return None

    def _publish(self, frame, p):
        record = frame.stamp
        header = record.header
        disparity = np.ascontiguousarray(frame.disparity, dtype=np.float32)
        height, width = disparity.shape
        self.pub_disparity.publish(messages.array_to_image(disparity, '32FC1', header))
        if self.pub_confidence is not None:
            self.pub_confidence.publish(messages.array_to_image(
                np.ascontiguousarray(frame.confidence, dtype=np.float32), '32FC1', header))
        if self.pub_colorized is not None:
            self.pub_colorized.publish(messages.array_to_image(
                colorize(disparity, colormap=p.colormap), 'rgb8', header))
        intrinsics, info = self._camera(record, width, height, p)
        if info is not None:
            self.pub_info.publish(info)
        metric = self._metric(p)
        if metric is not None:
            depth = geometry.disparity_to_depth(disparity, *metric)
            self.pub_depth.publish(messages.array_to_image(depth, '32FC1', header))
            if self.pub_points is not None:
                self._publish_points(depth, record, intrinsics, header, p)
        elif p.metric_mode == 'anchored':
            self.report('no_metric_fit', 'anchored mode: no metric fit yet (no usable '
                        'metric_hint), depth/image and depth/points wait for one', drop=False)
        self._points_silent = self._why_no_points(metric, intrinsics, p)
        now_ns = self.get_clock().now().nanoseconds
        with self.stats.lock:
            self.stats.output_rate.tick()
            self.stats.latency_s.add((now_ns - stamp_ns(header.stamp)) / 1e9)

    def _why_no_points(self, metric, intrinsics, p):
        if not p.publish_points:
            return None
        if metric is None:
            return ('metric_mode is none: depth/image and depth/points are off; set metric_mode '
                    'fixed or anchored' if p.metric_mode == 'none' else
                    'anchored: no metric fit yet (no usable metric_hint samples)')
        if intrinsics is None:
            return (f'no usable CameraInfo on {self._info_topic} for the image stamps: publish '
                    'it (or remap camera_info) or set fov_fallback_deg')
        return None

    def _publish_points(self, depth, record, intrinsics, header, p):
        if intrinsics is None:
            self.report('no_intrinsics', 'depth/points needs intrinsics: no valid CameraInfo '
                        'with the image stamp; publish camera_info or set fov_fallback_deg',
                        drop=False)
            return
        stride = p.point_stride
        max_range = p.max_range if p.max_range > 0 else math.inf
        points = geometry.depth_to_points(depth, intrinsics, stride=stride, max_range=max_range)
        rgb = record.rgb[::stride, ::stride] if p.points_rgb else None
        if not p.points_organized:
            valid = np.isfinite(points[..., 2])
            points = points[valid]
            rgb = rgb[valid] if rgb is not None else None
        self.pub_points.publish(messages.cloud_message(geometry.pack_points(points, rgb),
                                                       header))

    def _update_fit(self, frames, p):
        disparity, depth = [], []
        with self._lock:
            hints = [self._hints.find(stamp_ns(f.stamp.header.stamp)) for f in frames]
        for frame, hint in zip(frames, hints):
            if hint is None:
                continue
            samples = self._hint_samples(frame, hint, p)
            if samples is not None:
                disparity.append(samples[0])
                depth.append(samples[1])
        if not disparity:
            return
        d = np.concatenate(disparity)
        z = np.concatenate(depth)
        if d.size < p.hint_min_samples:
            self.report('hint_sparse', f'metric_hint gave {d.size} valid samples for this '
                        f'window, fewer than hint_min_samples={p.hint_min_samples}; keeping '
                        'the previous fit', drop=False)
            return
        try:
            self._fit = geometry.fit_metric(d, z, robust=True, min_samples=p.hint_min_samples)
        except InputError as exc:
            self.report('hint_fit', f'metric fit failed, keeping the previous one: {exc}',
                        drop=False)

    def _hint_samples(self, frame, hint, p):
        kind, data = hint
        disparity = frame.disparity
        height, width = disparity.shape
        if kind == 'image':
            (hh, hw), v, u, z = data
            with self._lock:
                raw = self._remapped.find(stamp_ns(frame.stamp.header.stamp))
            if raw is not None:
                # The hint is registered to the raw image: move its samples as the pixels moved.
                ur, vr = rectify_pixels((u + 0.5) * raw.width / hw - 0.5,
                                        (v + 0.5) * raw.height / hh - 0.5, raw)
                cols = np.round((ur + 0.5) * width / raw.width - 0.5).astype(np.int64)
                rows = np.round((vr + 0.5) * height / raw.height - 0.5).astype(np.int64)
                inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
                return disparity[rows[inside], cols[inside]], z[inside]
            # A hint image of another size covers the same field of view.
            rows = np.minimum((v * height) // hh, height - 1)
            cols = np.minimum((u * width) // hw, width - 1)
        else:
            intrinsics = self._intrinsics(frame.stamp, width, height, p)
            if intrinsics is None:
                self.report('no_intrinsics_hint', 'metric_hint points need intrinsics to '
                            'project them: publish camera_info or set fov_fallback_deg',
                            drop=False)
                return None
            pts = data
            z = pts[:, 2]
            cols = np.round(intrinsics.fx * pts[:, 0] / z + intrinsics.cx).astype(np.int64)
            rows = np.round(intrinsics.fy * pts[:, 1] / z + intrinsics.cy).astype(np.int64)
            inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
            rows, cols, z = rows[inside], cols[inside], z[inside]
        return disparity[rows, cols], z

    # ----------------------------------------------------------------------------- status
    def _publish_diagnostics(self):
        p = self.parameters.current
        fit = self._fit
        metric = self._metric(p)
        stream = self._stream  # None while the model loads
        stream_stats = stream.stats if stream is not None else None
        loaded = self.regressor is not None
        failed = 'n/a (the model failed to load)' if self.load_error else None
        extra = {
            'backend': self._backend_name(),
            'dtype': str(getattr(self.regressor, 'dtype', 'unknown') if loaded else p.dtype),
            'device': str(getattr(self.regressor, 'device', 'unknown') if loaded else p.device),
            'window / overlap': (f'{self.window[0]} / {stream_stats.overlap}'
                                 if stream is not None else failed
                                 or 'from the weights (loading)'),
            'overlap mode': ((failed or 'loading') if stream is None else 'fixed'
                             if stream.controller is None else
                             f'auto in [{stream.controller.overlap_min}, {stream.window - 1}]'),
            'metric mode': p.metric_mode,
            'metric scale a (1/m)': 'n/a' if metric is None else f'{metric[0]:.6g}',
            'metric shift b (1/m)': 'n/a' if metric is None else f'{metric[1]:.6g}',
        }
        if fit is not None:
            extra['metric fit residual (1/m)'] = f'{fit.residual:.4g}'
            extra['metric fit inliers'] = f'{fit.inlier_fraction:.2f} of {fit.n}'
        if stream is not None:
            extra.update(alignment_options(stream))
        extra.update(self._input_diagnostics(p))
        if stream_stats is not None and stream_stats.windows:
            extra['window alignment scale / shift'] = (
                f'{stream_stats.last_scale:.4g} / {stream_stats.last_shift:.4g}')
            extra['window alignment residual'] = f'{stream_stats.last_residual:.4g}'
            extra['window alignment scale clipped'] = str(stream_stats.last_clipped).lower()
            extra['window alignment inliers'] = f'{stream_stats.last_inlier_fraction:.2f}'
        status = diagnostics.status(
            self.get_fully_qualified_name(), self._hardware_id(), self.stats, extra,
            self.queue_length, p.queue_size,
            more_dropped=stream_stats.dropped if stream_stats is not None else None,
            loading=stream is None and self.load_error is None, error=self.load_error)
        # While the model loads the status says so (OK, as documented); the 'depth/points'
        # value still tells why no cloud will come.
        if self._points_silent and status.level == DiagnosticStatus.OK and stream is not None:
            status.level, status.message = DiagnosticStatus.WARN, self._points_silent
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(msg)

    def _input_diagnostics(self, p):
        if p.rectify == 'off':
            rectify = 'off'
        elif p.rectify == 'auto' and self._topic_rectified:
            rectify = 'auto: rectified topic, CameraInfo P used'
        else:
            rectify = f'{p.rectify}: {self._rectifier.builds} calibration(s) rectified'
        with self._lock:
            rejected = self._hint_rejected
        guard = getattr(self, '_guard', None)  # made with the stream, once the model is loaded
        return {
            'image topic': f'{self._image_topic} ({p.image_transport})',
            'camera_info topic': self._info_topic,
            'rectify': rectify,
            'frame_id override': p.frame_id or 'none',
            'metric hint samples rejected (out of range)': rejected,
            'model windows non-finite (rejected / partial)': (
                'n/a' if guard is None else f'{guard.rejected} / {guard.partial}'),
            'depth/points': self._points_silent or 'publishing',
        }

    def _hardware_id(self):
        return self.get_namespace().strip('/') or 'camera'

    # ----------------------------------------------------------------------------- shutdown
    def stop(self, timeout=JOIN_TIMEOUT_S):
        """Stop the worker; return True when it ended within ``timeout`` seconds."""
        if self._worker is None:
            return True
        self._stop.set()
        if self._decoder is not None:
            self._decoder.stop(timeout)
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        pipeline = self._pipeline  # None until the model is loaded
        if pipeline is not None:
            # Wakes a worker waiting to push; a window already in the model still ends first.
            pipeline.cancel(timeout=0.0)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        pipeline = self._pipeline  # the load may have ended meanwhile
        pipeline_ended = (pipeline is None
                          or pipeline.join(max(0.0, deadline - time.monotonic())))
        return pipeline_ended and not self._worker.is_alive()

    def destroy_node(self):
        """Stop the worker, then destroy the node."""
        self.stop()
        super().destroy_node()


def main(argv=None):
    """Run one depth node (``ros2 run dvd_ros depth_node``); returns the exit status."""
    return run_node(DepthNode, 'depth_node', argv)


if __name__ == '__main__':
    sys.exit(main())
