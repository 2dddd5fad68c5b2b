"""Launch files, RViz config: they parse, and run against a recording stand-in of launch_ros.

`launch` / `launch_ros` are not installed here, so `generate_launch_description()` runs against
small fakes that record what the launch file asks for.
"""

import ast
import importlib.util
from pathlib import Path
import py_compile
import sys
import types

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = {'depth': REPO / 'launch' / 'depth.launch.py', 'demo': REPO / 'launch' / 'demo.launch.py'}
DEPTH_ARGS = {'image', 'camera_info', 'namespace', 'params_file', 'weights', 'backend',
              'device', 'dtype', 'precision', 'use_rviz'}


class Recorded:
    """Any launch object: keeps its positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context):
        return context[self.args[0]]


class DeclareLaunchArgument(Recorded):
    pass


class Node(Recorded):
    pass


class ParameterValue(Recorded):
    pass


@pytest.fixture
def fake_launch(monkeypatch, tmp_path):
    modules = {
        'launch': {'LaunchDescription': Recorded},
        'launch.actions': {'DeclareLaunchArgument': DeclareLaunchArgument,
                           'OpaqueFunction': Recorded},
        'launch.conditions': {'IfCondition': Recorded},
        'launch.substitutions': {'LaunchConfiguration': LaunchConfiguration,
                                 'PathJoinSubstitution': Recorded},
        'launch_ros': {},
        'launch_ros.actions': {'Node': Node},
        'launch_ros.parameter_descriptions': {'ParameterValue': ParameterValue},
        'ament_index_python': {},
        'ament_index_python.packages': {'get_package_share_directory': lambda name: str(REPO)},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


def _executables():
    tree = ast.parse((REPO / 'setup.py').read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'NODES':
            return set(ast.literal_eval(node.value))
    raise AssertionError('NODES not found in setup.py')


@pytest.mark.parametrize('name', sorted(LAUNCH))
def test_compiles(name, tmp_path):
    py_compile.compile(str(LAUNCH[name]), cfile=str(tmp_path / 'x.pyc'), doraise=True)


def test_depth_launch_arguments_and_node(fake_launch):
    description = _load(LAUNCH['depth'])
    actions = description.args[0]
    declared = {a.args[0]: a.kwargs for a in actions if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) == DEPTH_ARGS
    assert all(kw.get('description') for kw in declared.values())
    assert declared['params_file']['default_value'] == str(REPO / 'config' / 'depth.yaml')
    # The depth node is built when the arguments are known: only given (non-empty) model
    # arguments override the parameter file.
    make_node = next(a for a in actions if isinstance(a, Recorded)
                     and 'function' in a.kwargs).kwargs['function']
    given = {name: declared[name]['default_value'] for name in declared}
    [depth] = make_node(given)
    assert depth.kwargs['package'] == 'dvd_ros'
    assert depth.kwargs['executable'] in _executables()
    remapped = {src: dst.args[0] for src, dst in depth.kwargs['remappings']}
    assert remapped == {'image': 'image', 'camera_info': 'camera_info'}
    assert len(depth.kwargs['parameters']) == 1  # defaults: the parameter file alone
    [depth] = make_node(given | {'weights': '/models/1.1', 'device': 'cuda'})
    overrides = depth.kwargs['parameters'][1]
    assert {k: (v.args[0], v.kwargs['value_type']) for k, v in overrides.items()} == {
        'weights': ('/models/1.1', str), 'device': ('cuda', str)}
    from dvd_ros.ros.launch_support import MODEL_ARGUMENTS
    from dvd_ros.ros.params import SPECS
    assert set(MODEL_ARGUMENTS) <= set(SPECS)
    nodes = [a for a in actions if isinstance(a, Node)]
    rviz = next(n for n in nodes if n.kwargs['executable'] == 'rviz2')
    assert rviz.kwargs['condition'].args[0].args[0] == 'use_rviz'


def test_demo_launch(fake_launch):
    actions = _load(LAUNCH['demo']).args[0]
    declared = {a.args[0]: a.kwargs for a in actions if isinstance(a, DeclareLaunchArgument)}
    # The depth node is built when the arguments are known (model arguments only when given).
    make_node = next(a for a in actions if isinstance(a, Recorded)
                     and 'function' in a.kwargs).kwargs['function']
    given = {name: kw['default_value'] for name, kw in declared.items()}
    [depth] = make_node(given)
    assert depth.kwargs['parameters'][1] == {'metric_mode': 'anchored', 'hint_type': 'image'}
    [depth] = make_node(given | {'backend': 'onnxruntime'})
    assert depth.kwargs['parameters'][1]['backend'].args[0] == 'onnxruntime'
    actions = list(actions) + [depth]
    executables = {a.kwargs['executable'] for a in actions if isinstance(a, Node)}
    assert {'synthetic_camera', 'depth_node', 'rviz2'} == executables
    assert {'synthetic_camera', 'depth_node'} <= _executables()
    assert {'params_file', 'weights', 'backend', 'device', 'dtype', 'precision', 'use_rviz',
            'namespace'} <= set(declared)
    # Every parameter name a launch file sets is a real parameter of its node.
    from dvd_ros.ros.params import SPECS
    from dvd_ros.ros.synthetic_camera import CAMERA_PARAMETERS
    camera_names = {p.name for p in CAMERA_PARAMETERS}
    for node in (a for a in actions if isinstance(a, Node) and a.kwargs['package'] == 'dvd_ros'):
        names = set()
        for entry in node.kwargs['parameters']:
            if isinstance(entry, dict):
                names |= set(entry)
        known = set(SPECS) if node.kwargs['executable'] == 'depth_node' else camera_names
        assert names <= known, names - known


def test_rviz_config_shows_cloud_and_colorized_depth():
    config = yaml.safe_load((REPO / 'rviz' / 'depth.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    by_class = {d['Class']: d for d in displays if d.get('Enabled')}
    cloud = by_class['rviz_default_plugins/PointCloud2']
    assert cloud['Topic']['Value'].endswith('/depth/points')
    assert cloud['Color Transformer'] == 'RGB8'
    image = by_class['rviz_default_plugins/Image']
    assert image['Topic']['Value'].endswith('/depth/colorized')
    assert config['Visualization Manager']['Global Options']['Fixed Frame'] == \
        'camera_optical_frame'
