"""Launch files, RViz config: they parse, and run against a recording stand-in of launch_ros.

`launch` / `launch_ros` are not installed here, so `generate_launch_description()` runs against
small fakes that record what the launch file asks for; the launch-time functions (the
OpaqueFunction that builds the nodes, the exit handler) run on a fake context.
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
              'device', 'dtype', 'precision', 'use_rviz', 'rviz_frame', 'use_sim_time',
              'respawn', 'respawn_delay'}


class Recorded:
    """Any launch object: keeps its positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


class DeclareLaunchArgument(Recorded):
    @property
    def name(self):
        return self.args[0]


class Node(Recorded):
    pass


class ParameterValue(Recorded):
    pass


class OpaqueFunction(Recorded):
    def run(self, context):
        return self.kwargs['function'](context, *self.kwargs.get('args', ()))


class LogInfo(Recorded):
    pass


class Shutdown(Recorded):
    pass


class RegisterEventHandler(Recorded):
    pass


class OnProcessExit(Recorded):
    pass


class PackageNotFoundError(KeyError):
    pass


class Context:
    """The launch context an OpaqueFunction and an event handler see."""

    def __init__(self, configurations, is_shutdown=False):
        self.launch_configurations = dict(configurations)
        self.is_shutdown = is_shutdown


class Exited:
    """A launch.events.process.ProcessExited."""

    def __init__(self, returncode, process_name='depth_node-1'):
        self.returncode = returncode
        self.process_name = process_name


@pytest.fixture
def rviz_installed():
    return {'value': False}


@pytest.fixture
def fake_launch(monkeypatch, rviz_installed):
    def prefix(name):
        if name == 'rviz2' and rviz_installed['value']:
            return '/opt/ros/kilted'
        raise PackageNotFoundError(name)

    modules = {
        'launch': {'LaunchDescription': Recorded},
        'launch.actions': {'DeclareLaunchArgument': DeclareLaunchArgument,
                           'OpaqueFunction': OpaqueFunction, 'LogInfo': LogInfo,
                           'Shutdown': Shutdown, 'RegisterEventHandler': RegisterEventHandler},
        'launch.event_handlers': {'OnProcessExit': OnProcessExit},
        'launch.substitutions': {'LaunchConfiguration': LaunchConfiguration},
        'launch_ros': {},
        'launch_ros.actions': {'Node': Node},
        'launch_ros.parameter_descriptions': {'ParameterValue': ParameterValue},
        'ament_index_python': {},
        'ament_index_python.packages': {'get_package_share_directory': lambda name: str(REPO),
                                        'get_package_prefix': prefix,
                                        'PackageNotFoundError': PackageNotFoundError},
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


def _declared(actions):
    return {a.name: a.kwargs for a in actions if isinstance(a, DeclareLaunchArgument)}


def _launch(name, **given):
    """Load launch file ``name``, run its OpaqueFunction with the defaults + ``given``.

    :return: (declared {name: kwargs}, actions it returned).
    """
    actions = _load(LAUNCH[name]).args[0]
    declared = _declared(actions)
    context = Context({k: kw['default_value'] for k, kw in declared.items()} | given)
    [make] = [a for a in actions if isinstance(a, OpaqueFunction)]
    return declared, make.run(context)


def _nodes(actions):
    return {a.kwargs['executable']: a for a in actions if isinstance(a, Node)}


def _values(entry):
    """Return {name: plain value} of a launch_ros parameter dict (ParameterValue unwrapped)."""
    return {k: (v.args[0] if isinstance(v, ParameterValue) else v) for k, v in entry.items()}


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
    declared, actions = _launch('depth')
    assert set(declared) == DEPTH_ARGS
    assert all(kw.get('description') for kw in declared.values())
    assert declared['params_file']['default_value'] == str(REPO / 'config' / 'depth.yaml')
    depth = _nodes(actions)['depth_node']
    assert depth.kwargs['package'] == 'dvd_ros'
    assert depth.kwargs['executable'] in _executables()
    assert dict(depth.kwargs['remappings']) == {'image': 'image', 'camera_info': 'camera_info'}
    # Defaults: the parameter file, then only use_sim_time (model arguments only when given).
    file_entry, overrides = depth.kwargs['parameters']
    assert file_entry.args[0] == 'params_file'
    assert overrides == {'use_sim_time': False}
    assert (depth.kwargs['respawn'], depth.kwargs['respawn_delay']) == (False, 2.0)
    _, actions = _launch('depth', weights='/models/1.1', device='cuda')
    overrides = _nodes(actions)['depth_node'].kwargs['parameters'][1]
    # Strings stay strings: launch_ros would YAML-parse '1.1' into a float.
    assert {k: (v.args[0], v.kwargs['value_type']) for k, v in overrides.items()
            if isinstance(v, ParameterValue)} == {'weights': ('/models/1.1', str),
                                                  'device': ('cuda', str)}
    from dvd_ros.ros.launch_support import MODEL_ARGUMENTS
    from dvd_ros.ros.params import SPECS
    assert set(MODEL_ARGUMENTS) <= set(SPECS)


def test_parameters_pass_through_and_typos_fail(fake_launch):
    from dvd_ros.ros.launch_support import LaunchFailure

    _, actions = _launch('depth', metric_mode='fixed', model_height='64', metric_b='1',
                         robot_namespace='r2')
    overrides = _values(_nodes(actions)['depth_node'].kwargs['parameters'][1])
    assert overrides == {'metric_mode': 'fixed', 'model_height': 64, 'metric_b': 1.0,
                         'use_sim_time': False}
    # A name of an including launch file is not ours: said once, not fatal.
    [note] = [a.kwargs['msg'] for a in actions if isinstance(a, LogInfo)]
    assert 'ignoring robot_namespace' in note
    with pytest.raises(LaunchFailure, match="'model_hieght': did you mean model_height"):
        _launch('depth', model_hieght='64')
    with pytest.raises(LaunchFailure, match="'use_rivz': did you mean use_rviz"):
        _launch('demo', use_rivz='false')
    with pytest.raises(LaunchFailure, match='parameter window must be an integer'):
        _launch('depth', window='nine')
    with pytest.raises(LaunchFailure, match='parameter metric_mode must be one of'):
        _launch('demo', metric_mode='metres')
    with pytest.raises(LaunchFailure, match="use_sim_time:='maybe': use true or false"):
        _launch('depth', use_sim_time='maybe')


def test_use_sim_time_reaches_every_node(fake_launch, rviz_installed):
    rviz_installed['value'] = True
    for name in LAUNCH:
        _, actions = _launch(name, use_sim_time='true', use_rviz='true')
        nodes = _nodes(actions)
        assert 'rviz2' in nodes and len(nodes) == (2 if name == 'depth' else 3)
        for node in nodes.values():
            flags = [e['use_sim_time'] for e in node.kwargs['parameters'] if isinstance(e, dict)]
            assert flags == [True], (name, node.kwargs['executable'])


def test_node_death_stops_the_launch(fake_launch):
    """Each dvd_ros node has an OnProcessExit handler; respawn:=true restarts the depth node."""
    from dvd_ros.ros.launch_support import LaunchFailure

    for name, supervised in (('depth', {'depth_node'}),
                             ('demo', {'depth_node', 'synthetic_camera'})):
        _, actions = _launch(name)
        handlers = [a.args[0] for a in actions if isinstance(a, RegisterEventHandler)]
        assert all(isinstance(h, OnProcessExit) for h in handlers)
        assert {h.kwargs['target_action'].kwargs['executable'] for h in handlers} == supervised
    _, actions = _launch('depth')
    [handler] = [a.args[0] for a in actions if isinstance(a, RegisterEventHandler)]
    on_exit = handler.kwargs['on_exit']
    [stop] = on_exit(Exited(0), Context({}))
    assert isinstance(stop, Shutdown) and 'depth_node-1 exited' in stop.kwargs['reason']
    with pytest.raises(LaunchFailure, match=r'died \(exit status -11\).*respawn:=true'):
        on_exit(Exited(-11), Context({}))
    with pytest.raises(LaunchFailure, match='stopped on its configuration'):
        on_exit(Exited(2), Context({}))
    assert on_exit(Exited(-2), Context({}, is_shutdown=True)) is None  # Ctrl-C

    _, actions = _launch('depth', respawn='true', respawn_delay='0.5')
    depth = _nodes(actions)['depth_node']
    assert (depth.kwargs['respawn'], depth.kwargs['respawn_delay']) == (True, 0.5)
    [handler] = [a.args[0] for a in actions if isinstance(a, RegisterEventHandler)]
    on_exit = handler.kwargs['on_exit']
    assert on_exit(Exited(1), Context({})) is None  # launch_ros restarts it
    with pytest.raises(LaunchFailure, match='stopped on its configuration'):
        on_exit(Exited(2), Context({}))  # restarting cannot fix a bad parameter
    with pytest.raises(LaunchFailure, match="respawn:='sometimes'"):
        _launch('depth', respawn='sometimes')


def test_rviz_only_when_installed(fake_launch, rviz_installed):
    _, actions = _launch('demo')  # use_rviz defaults to true for the demo
    assert 'rviz2' not in _nodes(actions)
    [note] = [a.kwargs['msg'] for a in actions if isinstance(a, LogInfo)]
    assert 'rviz2 is not installed' in note and 'use_rviz:=false' in note
    assert {'depth_node', 'synthetic_camera'} == set(_nodes(actions))
    _, actions = _launch('depth')  # off by default for a robot
    assert 'rviz2' not in _nodes(actions)
    assert not [a for a in actions if isinstance(a, LogInfo)]

    rviz_installed['value'] = True
    _, actions = _launch('depth', use_rviz='true', namespace='front',
                         image='/front/color/image_raw', rviz_frame='front_optical')
    rviz = _nodes(actions)['rviz2']
    assert rviz.kwargs['namespace'] == 'front'
    flag, path = rviz.kwargs['arguments']
    config = yaml.safe_load(Path(path).read_text())
    Path(path).unlink()
    topics = {d['Name']: d['Topic']['Value'] for d in config['Visualization Manager']['Displays']
              if 'Topic' in d}
    assert flag == '-d' and topics == {'Colorized depth': '/front/depth/colorized',
                                       'Camera image': '/front/color/image_raw',
                                       'Depth cloud': '/front/depth/points'}
    assert config['Visualization Manager']['Global Options']['Fixed Frame'] == 'front_optical'


def test_rviz_config_for_namespace_and_frame():
    from dvd_ros.ros.launch_support import absolute_topic, rviz_config_text

    template = (REPO / 'rviz' / 'depth.rviz').read_text()
    for namespace, prefix in (('', ''), ('/robot/cam', '/robot/cam'), ('cam/', '/cam')):
        config = yaml.safe_load(rviz_config_text(template, namespace, 'f',
                                                 absolute_topic(namespace, 'image')))
        topics = sorted(d['Topic']['Value'] for d in config['Visualization Manager']['Displays']
                        if 'Topic' in d)
        assert topics == [f'{prefix}/depth/colorized', f'{prefix}/depth/points',
                          f'{prefix}/image']
        # Everything else of the template is kept.
        original = yaml.safe_load(template)
        assert config['Window Geometry'] == original['Window Geometry']
        assert config['Visualization Manager']['Views'] == \
            original['Visualization Manager']['Views']


def test_exit_policy_table():
    from dvd_ros.ros.launch_support import exit_policy

    assert exit_policy(False, 0, False) == 'shutdown'
    assert 'died' in exit_policy(False, 1, False)
    assert exit_policy(True, 1, False) is None
    assert exit_policy(True, 0, False) is None
    assert 'configuration' in exit_policy(True, 2, False)
    assert exit_policy(False, 1, True) is None


def test_demo_launch(fake_launch):
    declared, actions = _launch('demo')
    depth = _nodes(actions)['depth_node']
    assert _values(depth.kwargs['parameters'][1]) == {
        'metric_mode': 'anchored', 'hint_type': 'image', 'use_sim_time': False}
    _, actions = _launch('demo', backend='onnxruntime', source='123')
    nodes = _nodes(actions)
    assert _values(nodes['depth_node'].kwargs['parameters'][1])['backend'] == 'onnxruntime'
    camera = _values(nodes['synthetic_camera'].kwargs['parameters'][0])
    assert camera['source'] == '123' and camera['rate'] == 10.0
    assert {'synthetic_camera', 'depth_node'} <= _executables()
    assert {'params_file', 'weights', 'backend', 'device', 'dtype', 'precision', 'use_rviz',
            'namespace', 'use_sim_time', 'respawn'} <= set(declared)
    # Every parameter name a launch file sets is a real parameter of its node.
    from dvd_ros.ros.param_args import BUILTIN_PARAMETERS
    from dvd_ros.ros.params import SPECS
    from dvd_ros.ros.synthetic_camera import CAMERA_PARAMETERS
    camera_names = {p.name for p in CAMERA_PARAMETERS} | set(BUILTIN_PARAMETERS)
    for node in (a for a in nodes.values() if a.kwargs['package'] == 'dvd_ros'):
        names = set()
        for entry in node.kwargs['parameters']:
            if isinstance(entry, dict):
                names |= set(entry)
        known = (set(SPECS) | set(BUILTIN_PARAMETERS) if node.kwargs['executable'] ==
                 'depth_node' else camera_names)
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
