"""Parameter declarations, validation, dynamic updates, and the YAML mirror."""

from dataclasses import fields, replace
import inspect
from pathlib import Path
import uuid

import pytest
import yaml

rclpy = pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from dvd_ros.errors import InputError  # noqa: E402
from dvd_ros.ros.params import (  # noqa: E402
    DEPTH_PARAMETERS,
    DYNAMIC,
    SPECS,
    DepthParameters,
    DepthParams,
    yaml_defaults,
)
from dvd_ros.stream.estimator import StreamingDepth  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def context():
    ctx = rclpy.context.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def _node(context, **overrides):
    params = [Parameter(k, value=v) for k, v in overrides.items()]
    return Node(f'params_{uuid.uuid4().hex[:8]}', context=context, parameter_overrides=params)


def test_precision_choices_are_the_model_precisions():
    from dvd_ros.model.precision import PRECISIONS

    assert SPECS['precision'].choices == ('',) + tuple(PRECISIONS)


def test_dataclass_matches_specs():
    assert [f.name for f in fields(DepthParams)] == [s.name for s in DEPTH_PARAMETERS]
    assert DepthParams.defaults().validate() == DepthParams.defaults()


def test_yaml_mirrors_every_parameter():
    doc = yaml.safe_load((REPO / 'config' / 'depth.yaml').read_text())
    values = doc['/**']['ros__parameters']
    assert values == yaml_defaults()


def test_docs_list_every_parameter():
    text = (REPO / 'README.md').read_text()
    missing = [s.name for s in DEPTH_PARAMETERS if f'`{s.name}`' not in text]
    assert not missing
    # The parameter table's type, default and dynamic columns agree with the declarations.
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 6 and cells[0].startswith('`') and cells[0].strip('`') in SPECS:
            rows.setdefault(cells[0].strip('`'), cells)
    for spec in DEPTH_PARAMETERS:
        default = (str(spec.default).lower() if isinstance(spec.default, bool)
                   else repr(spec.default))
        dynamic = 'yes' if spec.dynamic else 'no'
        assert rows[spec.name][1:3] + [rows[spec.name][4]] == [
            spec.type_name, f'`{default}`', dynamic], spec.name


def test_descriptors(context):
    node = _node(context)
    try:
        DepthParameters(node)
        for spec in DEPTH_PARAMETERS:
            desc = node.describe_parameter(spec.name)
            assert desc.description.startswith(spec.description[:20])
            assert desc.read_only == (spec.name not in DYNAMIC)
        window_range = node.describe_parameter('window').integer_range[0]
        assert (window_range.from_value, window_range.to_value) == (0, 161)
        assert node.describe_parameter('max_range').floating_point_range[0].to_value == 1e4
    finally:
        node.destroy_node()


def test_overrides_and_clear_errors(context):
    node = _node(context, window=13, overlap=5, metric_mode='fixed')
    try:
        current = DepthParameters(node).current
        assert (current.window, current.overlap, current.metric_mode) == (13, 5, 'fixed')
    finally:
        node.destroy_node()
    cases = [
        ({'window': 6}, 'window'),
        ({'window': 9, 'overlap': 9}, 'overlap .9. must be smaller than window'),
        ({'window': 7}, 'window .7. must be 4n.1'),
        ({'colormap': 'rainbow'}, 'colormap'),
        ({'backend': 'cuda-magic'}, 'backend'),
        ({'metric_mode': 'fixed', 'metric_a': -1.0, 'metric_b': 0.0}, 'no positive inverse'),
        ({'qos_depth': 'ten'}, 'qos_depth'),
        ({'align_robust': 'trimmed'}, 'align_robust'),
        ({'scale_clip_low': 2.0, 'scale_clip_high': 1.5},
         r'scale_clip_low \(2.0\) must be <= scale_clip_high \(1.5\)'),
        ({'scale_clip_low': 0.0}, 'scale_clip_low'),
        ({'drift_strength': -0.1}, 'drift_strength'),
        ({'confidence_tau': 0.0}, 'confidence_tau'),
        ({'precision': 'int8'}, 'precision'),
        ({'precision': 'fp16'}, "precision .'fp16'. applies to the onnxruntime and tensorrt"),
        ({'backend': 'tensorrt', 'fp8_calibration': 'cal.npy'},
         'fp8_calibration .*needs precision fp8'),
    ]
    for overrides, message in cases:
        node = _node(context, **overrides)
        try:
            with pytest.raises(InputError, match=message):
                DepthParameters(node)
        finally:
            node.destroy_node()


def test_dynamic_changes_validated(context):
    node = _node(context, metric_mode='fixed', metric_a=1.0, metric_b=0.0)
    try:
        params = DepthParameters(node)
        seen = []
        params.listeners.append(lambda cur, names: seen.append((cur.colormap, names)))
        result = node.set_parameters([Parameter('colormap', value='jet')])[0]
        assert result.successful and params.current.colormap == 'jet'
        assert seen == [('jet', frozenset({'colormap'}))]
        for name, value, why in [('colormap', 'rainbow', 'colormap'),
                                 ('point_stride', 0, 'point_stride'),
                                 ('metric_a', -2.0, 'inverse depth'),
                                 ('max_range', -1.0, 'max_range')]:
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert not result.successful and why in result.reason, (name, result.reason)
        assert params.current.point_stride == 1 and params.current.metric_a == 1.0
        assert node.set_parameters([Parameter('max_range', value=5.0)])[0].successful
        assert params.current.max_range == 5.0
        # Restart-only parameters are read-only.
        assert not node.set_parameters([Parameter('window', value=13)])[0].successful
        assert params.current.window == 0
    finally:
        node.destroy_node()


def test_spec_check_messages():
    assert SPECS['window'].check(5) is None
    assert 'in [0, 161]' in SPECS['window'].check(165)


def test_window_follows_the_weights_unless_set():
    defaults = DepthParams.defaults()
    assert defaults.resolved_window(5) == (5, 2)  # the embedded model's recommendation
    assert defaults.resolved_window(None) == (9, 4)  # weights that recommend nothing
    assert replace(defaults, window=25).resolved_window(5) == (25, 12)
    assert replace(defaults, window=25, overlap=3).resolved_window(5) == (25, 3)
    with pytest.raises(InputError, match=r'overlap \(9\) must be smaller than window \(5\)'):
        replace(defaults, overlap=9).resolved_window(5)
    auto = replace(defaults, overlap_mode='auto', overlap_min=6)
    assert auto.resolved_window(None) == (9, 6)  # -1 starts at overlap_min when above (W-1)/2
    assert replace(auto, overlap_min=2).resolved_window(None) == (9, 4)
    with pytest.raises(InputError, match=r'overlap \(3\).*below overlap_min \(6\)'):
        replace(auto, overlap=3).resolved_window(None)
    with pytest.raises(InputError, match=r'overlap_min \(9\) must be smaller than window'):
        replace(auto, overlap_min=9).resolved_window(None)
    assert 'must be one of' in SPECS['overlap_mode'].check('adaptive')
    assert 'must be a double' in SPECS['max_range'].check('far')
    assert 'finite' in SPECS['metric_a'].check(float('nan'))


def test_stream_options_map_to_streaming_depth():
    defaults = DepthParams.defaults().stream_options()
    signature = inspect.signature(StreamingDepth).parameters
    # The node's defaults are the streaming core's (only window/overlap differ).
    for name, value in defaults.items():
        assert signature[name].default == value, name
    custom = replace(DepthParams.defaults(), align_robust='tukey', align_symmetric=False,
                     scale_clip_low=0.5, scale_clip_high=2.0, drift_strength=0.01,
                     drift_horizon=3, flush_mode='pad', confidence_tau=0.1,
                     policy='blend').validate()
    assert custom.stream_options() == {
        'policy': 'blend', 'scale_clip': (0.5, 2.0), 'robust': 'tukey', 'symmetric': False,
        'flush_mode': 'pad', 'drift_strength': 0.01, 'drift_horizon': 3,
        'confidence_tau': 0.1, 'overlap_mode': 'fixed', 'overlap_min': 1}
    stream = StreamingDepth(_Predictor(), 5, 2, **custom.stream_options())
    assert (stream.robust, stream.scale_clip, stream.drift_horizon) == ('tukey', (0.5, 2.0), 3)


class _Predictor:
    def predict(self, frames):
        return frames[..., 0].astype('float32') / 255
