"""Parameters of the depth node: declared once with descriptors, frozen into a dataclass.

:data:`DEPTH_PARAMETERS` is the single list: the node declares it, ``config/depth.yaml`` and
``docs/ros.md`` mirror it (a test checks the YAML). Parameters with ``dynamic=True`` may change
while the node runs (validated by an on-set callback); every other one is ``read_only`` because
it shapes the model, the stream or the publishers and needs a restart.
"""

from dataclasses import dataclass, replace
import math
import threading

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterAlreadyDeclaredException,
)

from dvd_ros.colorize import COLORMAPS
from dvd_ros.errors import InputError
from dvd_ros.model.backends import BACKENDS
from dvd_ros.stream.align import ROBUST_METHODS
from dvd_ros.stream.estimator import FLUSH_MODES, OVERLAP_MODES

# The stand-in model: deterministic, no torch, optional delay; for tests and DDS benchmarks.
STAND_IN_BACKEND = 'stand-in'
METRIC_MODES = ('none', 'fixed', 'anchored')
HINT_TYPES = ('image', 'points')
POLICIES = ('immediate', 'blend')
RELIABILITIES = ('reliable', 'best_effort')
DTYPES = ('auto', 'float32', 'float16', 'bfloat16')
# The graph precisions of dvd_ros.model.precision (not imported here: no torch at start-up).
PRECISION_NAMES = ('fp32', 'fp16', 'bf16', 'fp8')
# 'none' stands for the reference plain least squares (robust=False of StreamingDepth).
ALIGN_ROBUST = ('none',) + ROBUST_METHODS
# Camera input (image_inputs, rectify): image_transport's plugin names.
IMAGE_TRANSPORTS = ('raw', 'compressed')
HINT_TRANSPORTS = ('raw', 'compressedDepth')
RECTIFY_MODES = ('auto', 'on', 'off')


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (which fixes its type), description, range or choices."""

    name: str
    default: object
    description: str
    range: tuple | None = None  # (low, high) or (low, high, step), both ends inclusive
    choices: tuple | None = None
    dynamic: bool = False
    unit: str = ''

    @property
    def type_name(self):
        """Return the ROS parameter type name (bool, int, double, string)."""
        return {bool: 'bool', int: 'int', float: 'double', str: 'string'}[type(self.default)]

    def descriptor(self):
        """Build the rcl_interfaces/ParameterDescriptor for this parameter."""
        kind = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                float: ParameterType.PARAMETER_DOUBLE,
                str: ParameterType.PARAMETER_STRING}[type(self.default)]
        text = self.description + (f' [{self.unit}]' if self.unit else '')
        desc = ParameterDescriptor(name=self.name, type=kind, description=text,
                                   read_only=not self.dynamic)
        if self.choices:
            desc.additional_constraints = 'one of: ' + ', '.join(self.choices)
        if self.range is not None:
            low, high = self.range[0], self.range[1]
            step = self.range[2] if len(self.range) > 2 else 0
            if isinstance(self.default, int):
                desc.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                   step=int(step))]
            else:
                desc.floating_point_range = [FloatingPointRange(
                    from_value=float(low), to_value=float(high), step=float(step))]
        return desc

    def check(self, value):
        """Return why ``value`` is not acceptable, or None when it is."""
        expected = type(self.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            return (f'{self.name} must be a {self.type_name}, got {type(value).__name__} '
                    f'{value!r}')
        if expected is float and not math.isfinite(value):
            return f'{self.name} must be finite, got {value!r}'
        if self.choices and value not in self.choices:
            return f'{self.name} must be one of {", ".join(self.choices)}, got {value!r}'
        if self.range is not None:
            low, high = self.range[0], self.range[1]
            step = self.range[2] if len(self.range) > 2 else 0
            if not low <= value <= high or (step and (value - low) % step):
                rule = f'in [{low}, {high}]' + (f' in steps of {step} from {low}' if step
                                                else '')
                return f'{self.name} must be {rule}, got {value!r}'
        return None


def _p(*args, **kwargs):
    return ParamSpec(*args, **kwargs)


# Window (frames) when neither the parameter nor the weights name one.
DEFAULT_WINDOW = 9

DEPTH_PARAMETERS = (
    # Model
    _p('weights', '', 'DVD weights: an official release .safetensors file or a converted '
       'folder; empty = the embedded tiny model'),
    _p('backend', 'torch', 'execution backend; "stand-in" is a fast deterministic test '
       'model (no torch), for tests and DDS benchmarks only',
       choices=tuple(BACKENDS) + (STAND_IN_BACKEND,)),
    _p('device', 'cpu', 'torch device, e.g. cpu or cuda:0'),
    _p('dtype', 'auto', 'model compute dtype; auto = bfloat16 where the device runs it '
       'natively (CUDA, CPUs with AMX / AVX-512-BF16), else float32; a dtype the device '
       'would only emulate is refused', choices=DTYPES),
    _p('precision', '', 'onnxruntime / tensorrt: what the graphs compute in; empty = from '
       'dtype; fp8 = FP8 DiT linears (tensorrt on sm 8.9+), fp16 elsewhere; backend torch: '
       'empty or fp8 (the DiT linears through torch._scaled_mm, Hopper/Ada)',
       choices=('',) + PRECISION_NAMES),
    _p('fp8_calibration', '', 'precision fp8: .npy of (T, H, W, 3) uint8 RGB frames of your '
       'scene for the FP8 scales (`dvd-ros engine build --calibration` writes one); empty = '
       'a rendered synthetic room'),
    _p('cuda_graphs', True, 'backend torch on CUDA: capture each model stage once per window '
       'shape as a CUDA graph and replay it (less launch overhead); ignored on CPU'),
    _p('model_height', 0, 'processing height target of the model (frames are resized to '
       'cover it, aspect kept, and back); 0 = what the weights recommend (480 for DVD)',
       range=(0, 2048, 16), unit='px'),
    _p('model_width', 0, 'processing width target; 0 = what the weights recommend (640 for '
       'DVD)', range=(0, 4096, 16), unit='px'),
    _p('cpu_threads', 0, 'CPU threads of the model (torch, onnxruntime; device cpu); 0 = one '
       'fewer than the CPU cores, so ROS callbacks keep a core (busy intra-op threads that lose '
       'their core stall every op)', range=(0, 1024)),
    _p('stand_in_delay', 0.0, 'stand-in backend only: seconds each window takes, to '
       'simulate a slow model', range=(0.0, 60.0), unit='s'),
    # Streaming
    _p('window', 0, 'frames per model window (4n+1); 0 = what the weights recommend (5 for '
       'the embedded tiny model), else 9', range=(0, 161), unit='frames'),
    _p('overlap', -1, 'frames shared by consecutive windows (for scale/shift alignment); '
       'must be < window; -1 = (window - 1) / 2', range=(-1, 160), unit='frames'),
    _p('overlap_mode', 'fixed', 'fixed: every window shares overlap frames; auto: before each '
       'window, the largest overlap in [overlap_min, window - 1] that keeps up with the '
       'measured camera rate and window time (starts at overlap; -1 = max((window - 1) / 2, '
       'overlap_min)); the overlap in force is on /diagnostics', choices=OVERLAP_MODES),
    _p('overlap_min', 1, 'overlap_mode auto: smallest overlap it may choose (fewer shared '
       'frames align windows less well); must be < window', range=(0, 160), unit='frames'),
    _p('policy', 'immediate', 'window seam handling: immediate (no hold back) or blend '
       '(hold back and cross-fade, costs latency)', choices=POLICIES),
    _p('queue_size', 32, 'input frames buffered for the worker; when full the OLDEST is '
       'dropped (counted in diagnostics)', range=(1, 1000), unit='frames'),
    _p('output_scale', 1.0, 'resize factor of the outputs relative to the input image '
       '(CameraInfo K is scaled to match)', range=(0.05, 1.0)),
    # Window alignment (StreamingDepth options; docs/streaming.md has the measurements)
    _p('align_robust', 'none', 'robust loss of the window-to-window scale/shift fit, for '
       'moving objects two windows disagree on: none (least squares, the reference), huber, '
       'tukey, or trim (drop the worst fifth of the pixels and refit)', choices=ALIGN_ROBUST),
    _p('align_symmetric', True, 'geometric-mean scale fit (less drift towards flat depth); '
       'false = ordinary least squares, the reference'),
    _p('scale_clip_low', 0.7, 'smallest window-to-window alignment scale (reference 0.7); '
       'must be <= scale_clip_high', range=(0.001, 1000.0)),
    _p('scale_clip_high', 1.5, 'largest alignment scale (reference 1.5); 0.001 and 1000 '
       'practically disable the clip, equal bounds fix the scale', range=(0.001, 1000.0)),
    _p('drift_strength', 0.0, 'weight of the percentile drift prior relative to the overlap '
       'data; 0 = off (it biases the fit when the scene depth range changes)',
       range=(0.0, 100.0)),
    _p('drift_horizon', 0, 'windows averaged into the drift prior reference (exponential '
       'mean); 0 = all', range=(0, 1_000_000), unit='windows'),
    _p('flush_mode', 'reanchor', 'how the stream tail is finished when the stream restarts '
       '(resolution change, time jump): reanchor (rerun the last window frames, the '
       'reference) or pad (overlap + tail, padded by the model)', choices=FLUSH_MODES),
    _p('confidence_tau', 0.05, 'window disagreement (disparity units) at which '
       'depth/confidence is 1/e', range=(0.0001, 10.0)),
    # Metric depth
    _p('metric_mode', 'fixed', 'how relative disparity becomes metres: none (publish '
       'disparity only), fixed (metric_a, metric_b; the defaults are a room-scale guess), '
       'anchored (fit to metric_hint per window)', choices=METRIC_MODES),
    _p('metric_a', 1.9, 'fixed mode: inverse depth = metric_a * disparity + metric_b; the '
       'defaults put disparity 1 (near) at 0.5 m and 0 (far) at 10 m',
       range=(-1.0e6, 1.0e6), dynamic=True, unit='1/m'),
    _p('metric_b', 0.1, 'fixed mode: offset of the inverse depth', range=(-1.0e6, 1.0e6),
       dynamic=True, unit='1/m'),
    _p('hint_type', 'image', 'message type of metric_hint: image (32FC1 m / 16UC1 mm, '
       'sparse, 0/NaN = none) or points (PointCloud2 in the camera optical frame)',
       choices=HINT_TYPES),
    _p('hint_min_samples', 20, 'anchored mode: fewest valid hint pixels for a new fit '
       '(otherwise the previous fit is kept)', range=(2, 10_000_000)),
    _p('hint_min_depth', 0.05, 'metric_hint samples nearer than this are rejected (counted '
       'on /diagnostics)', range=(0.0, 1.0e4), unit='m'),
    _p('hint_max_depth', 300.0, 'metric_hint samples farther than this are rejected '
       '(counted on /diagnostics); must be > hint_min_depth', range=(0.001, 1.0e6), unit='m'),
    # Outputs
    _p('max_range', 0.0, 'points farther than this are NaN; 0 = no limit', range=(0.0, 1.0e4),
       dynamic=True, unit='m'),
    _p('point_stride', 1, 'publish every n-th pixel in x and y', range=(1, 64), dynamic=True),
    _p('points_rgb', True, 'add the rgb field (PCL float packing) to depth/points',
       dynamic=True),
    _p('points_organized', True, 'organized cloud (height x width, NaN kept); false = flat '
       'cloud of valid points only', dynamic=True),
    _p('publish_points', True, 'publish depth/points (needs metric depth and intrinsics)'),
    _p('publish_colorized', True, 'publish depth/colorized'),
    _p('publish_confidence', True, 'publish depth/confidence'),
    _p('colormap', 'turbo', 'colormap of depth/colorized (drawn from disparity, near = hot)',
       choices=tuple(COLORMAPS), dynamic=True),
    _p('fov_fallback_deg', 0.0, 'horizontal field of view assumed for points when no valid '
       'CameraInfo arrives; 0 = off (no points without CameraInfo)', range=(0.0, 179.0),
       dynamic=True, unit='deg'),
    # Camera input (docs/ros.md: compressed input, rectification, frames)
    _p('image_transport', 'raw', 'raw (sensor_msgs/Image on image) or compressed '
       '(CompressedImage JPEG/PNG on <image>/compressed, decoded off the executor thread)',
       choices=IMAGE_TRANSPORTS),
    _p('hint_transport', 'raw', 'metric_hint image transport: raw or compressedDepth '
       '(<metric_hint>/compressedDepth, 16UC1 mm or 32FC1 m)', choices=HINT_TRANSPORTS),
    _p('rectify', 'auto', 'lens distortion: auto (rectify when CameraInfo has distortion and '
       'the image topic is not a *rect* topic), on (always resample to P), off (use the image '
       'and K as they are); outputs are in the rectified geometry', choices=RECTIFY_MODES),
    _p('frame_id', '', 'frame_id of every output (the camera optical frame, REP 103); empty '
       "= the input image's frame_id"),
    # Transport
    _p('qos_reliability', 'reliable', 'reliability of the published topics',
       choices=RELIABILITIES),
    _p('qos_depth', 5, 'history depth of the published topics', range=(1, 1000)),
    _p('sync_tolerance', 0.0, 'largest stamp difference for an image/CameraInfo (or hint) '
       'pair; 0 = exact stamps', range=(0.0, 1.0), unit='s'),
    _p('sync_timeout', 0.1, 'how long an image waits for its CameraInfo before it goes on '
       'without one', range=(0.0, 10.0), unit='s'),
    _p('diagnostics_period', 1.0, 'period of /diagnostics messages', range=(0.1, 60.0),
       unit='s'),
    # Liveness
    _p('flush_timeout', 1.0, 'when no image arrives for this long, the frames the stream '
       'still holds (up to a window) are finished and published, and the next image starts '
       'a new stream; keep it above the camera frame period; 0 = never', range=(0.0, 3600.0),
       dynamic=True, unit='s'),
)

SPECS = {spec.name: spec for spec in DEPTH_PARAMETERS}
DYNAMIC = frozenset(spec.name for spec in DEPTH_PARAMETERS if spec.dynamic)


@dataclass(frozen=True)
class DepthParams:
    """The depth node's configuration; one immutable snapshot per parameter change."""

    weights: str
    backend: str
    device: str
    dtype: str
    precision: str
    fp8_calibration: str
    cuda_graphs: bool
    model_height: int
    model_width: int
    cpu_threads: int
    stand_in_delay: float
    window: int
    overlap: int
    overlap_mode: str
    overlap_min: int
    policy: str
    queue_size: int
    output_scale: float
    align_robust: str
    align_symmetric: bool
    scale_clip_low: float
    scale_clip_high: float
    drift_strength: float
    drift_horizon: int
    flush_mode: str
    confidence_tau: float
    metric_mode: str
    metric_a: float
    metric_b: float
    hint_type: str
    hint_min_samples: int
    hint_min_depth: float
    hint_max_depth: float
    max_range: float
    point_stride: int
    points_rgb: bool
    points_organized: bool
    publish_points: bool
    publish_colorized: bool
    publish_confidence: bool
    colormap: str
    fov_fallback_deg: float
    image_transport: str
    hint_transport: str
    rectify: str
    frame_id: str
    qos_reliability: str
    qos_depth: int
    sync_tolerance: float
    sync_timeout: float
    diagnostics_period: float
    flush_timeout: float

    @classmethod
    def defaults(cls):
        """Return the configuration made of every default."""
        return cls(**{spec.name: spec.default for spec in DEPTH_PARAMETERS})

    def validate(self):
        """Check every value and the rules between them.

        :raises InputError: naming the parameter, the value and what is allowed.
        """
        for spec in DEPTH_PARAMETERS:
            reason = spec.check(getattr(self, spec.name))
            if reason:
                raise InputError(f'parameter {reason}')
        if self.window and self.window % 4 != 1:
            raise InputError(f'parameter window ({self.window}) must be 4n+1 (e.g. 5, 9, 25, '
                             '45, 81) or 0 for what the weights recommend')
        if self.window:
            self.resolved_window(None)
        if self.precision and self.backend not in ('onnxruntime', 'tensorrt'):
            raise InputError(f'parameter precision ({self.precision!r}) applies to the '
                             f'onnxruntime and tensorrt backends, not {self.backend!r}; set '
                             "dtype for torch, or precision ''")
        if self.fp8_calibration and self.precision != 'fp8':
            raise InputError(f'parameter fp8_calibration ({self.fp8_calibration!r}) needs '
                             f'precision fp8 (got {self.precision!r}); clear it or set '
                             'precision fp8')
        if self.scale_clip_low > self.scale_clip_high:
            raise InputError(f'parameter scale_clip_low ({self.scale_clip_low}) must be <= '
                             f'scale_clip_high ({self.scale_clip_high}); e.g. 0.7 and 1.5')
        if self.metric_mode == 'fixed':
            _check_fixed(self.metric_a, self.metric_b)
        if self.hint_transport == 'compressedDepth' and self.hint_type != 'image':
            raise InputError('parameter hint_transport compressedDepth carries depth images: it '
                             f'needs hint_type image (got {self.hint_type!r})')
        if self.hint_min_depth >= self.hint_max_depth:
            raise InputError(f'parameter hint_min_depth ({self.hint_min_depth}) must be < '
                             f'hint_max_depth ({self.hint_max_depth}); e.g. 0.05 and 300')
        return self

    def resolved_window(self, recommended):
        """Return ``(window, overlap)`` in frames, with the automatic values filled in.

        :param recommended: the window the weights recommend, or None (then 9).
        :raises InputError: overlap not smaller than the window.
        """
        window = self.window or recommended or DEFAULT_WINDOW
        overlap = self.overlap if self.overlap >= 0 else (window - 1) // 2
        if overlap >= window:
            raise InputError(f'parameter overlap ({overlap}) must be smaller than window '
                             f'({window}); e.g. window 9, overlap 4')
        if self.overlap_mode == 'auto':
            if self.overlap_min >= window:
                raise InputError(f'parameter overlap_min ({self.overlap_min}) must be smaller '
                                 f'than window ({window}); e.g. 1')
            if self.overlap < 0:
                overlap = max(overlap, self.overlap_min)
            elif overlap < self.overlap_min:
                raise InputError(f'parameter overlap ({overlap}), the starting overlap of '
                                 f'overlap_mode auto, is below overlap_min ({self.overlap_min})'
                                 '; raise it, set -1, or lower overlap_min')
        return window, overlap

    def stream_options(self):
        """Return the keyword arguments of :class:`~dvd_ros.stream.estimator.StreamingDepth`.

        :return: ``{name: value}`` for every option except ``regressor``, ``window``, ``overlap``.
        """
        return {
            'policy': self.policy,
            'scale_clip': (self.scale_clip_low, self.scale_clip_high),
            'robust': False if self.align_robust == 'none' else self.align_robust,
            'symmetric': self.align_symmetric,
            'flush_mode': self.flush_mode,
            'drift_strength': self.drift_strength,
            'drift_horizon': self.drift_horizon or None,
            'confidence_tau': self.confidence_tau,
            'overlap_mode': self.overlap_mode,
            'overlap_min': self.overlap_min,
        }


def _check_fixed(a, b):
    # Inverse depth a*d + b must be positive for some disparity d in (0, 1], or every pixel is
    # invalid.
    if max(a + b, b) <= 0:
        raise InputError(f'metric_a={a}, metric_b={b} give no positive inverse depth for any '
                         'disparity in [0, 1]; use metric_a > 0 (e.g. 1.0) and metric_b >= 0')


def declare_specs(node, specs):
    """Declare ``specs`` on ``node`` and return ``{name: value}`` (overrides applied).

    :raises InputError: an override has the wrong type or is out of range.
    """
    values = {}
    for spec in specs:
        try:
            param = node.declare_parameter(spec.name, spec.default, spec.descriptor())
        except ParameterAlreadyDeclaredException:
            param = node.get_parameter(spec.name)
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            raise InputError(f'parameter {spec.name}: {exc}; expected {spec.type_name}'
                             f'{_rule(spec)}: {spec.description}') from None
        value = param.value
        if spec.type_name == 'double' and isinstance(value, int):
            value = float(value)
        reason = spec.check(value)
        if reason:
            raise InputError(f'parameter {reason}')
        values[spec.name] = value
    return values


def _rule(spec):
    if spec.choices:
        return f' (one of {", ".join(spec.choices)})'
    if spec.range:
        return f' in [{spec.range[0]}, {spec.range[1]}]'
    return ''


class DepthParameters:
    """Declares the depth node's parameters and keeps the current :class:`DepthParams`.

    Dynamic parameters are validated by an on-set callback (a rejected change leaves the node
    unchanged and returns the reason to ``ros2 param set``); accepted ones replace
    :attr:`current` atomically.
    """

    def __init__(self, node):
        self._lock = threading.Lock()
        self._current = DepthParams(**declare_specs(node, DEPTH_PARAMETERS)).validate()
        self.listeners = []
        node.add_on_set_parameters_callback(self._on_set)
        node.add_post_set_parameters_callback(self._on_post_set)

    @property
    def current(self):
        """Return the current configuration snapshot."""
        with self._lock:
            return self._current

    def _on_set(self, parameters):
        with self._lock:
            changes = {}
            for param in parameters:
                spec = SPECS.get(param.name)
                if spec is None:
                    continue
                reason = spec.check(param.value)
                if reason:
                    return SetParametersResult(successful=False, reason=reason)
                changes[param.name] = param.value
            candidate = replace(self._current, **_as_types(changes))
        if candidate.metric_mode == 'fixed':
            try:
                _check_fixed(candidate.metric_a, candidate.metric_b)
            except InputError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_post_set(self, parameters):
        changes = {p.name: p.value for p in parameters if p.name in SPECS}
        if not changes:
            return
        with self._lock:
            self._current = replace(self._current, **_as_types(changes))
            current = self._current
        for listener in self.listeners:
            listener(current, frozenset(changes))


def _as_types(changes):
    out = {}
    for name, value in changes.items():
        if SPECS[name].type_name == 'double' and isinstance(value, int):
            value = float(value)
        out[name] = value
    return out


def yaml_defaults():
    """Return ``{name: default}`` in declaration order (what config/depth.yaml mirrors)."""
    return {spec.name: spec.default for spec in DEPTH_PARAMETERS}

