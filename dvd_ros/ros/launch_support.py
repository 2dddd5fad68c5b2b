"""What the launch files share: arguments, parameter pass-through, exit handling, RViz.

Imported only by ``launch/*.launch.py``; ``launch`` / ``launch_ros`` are imported inside the
functions that build launch objects, so the rest (typing, the RViz config, the exit policy)
runs and is tested without them.
"""

import os
from pathlib import Path
import tempfile

from dvd_ros.errors import InputError

# Launch arguments that override the parameter file only when given (non-empty), so a
# params_file that sets weights or device is not silently overridden by a launch default.
MODEL_ARGUMENTS = ('weights', 'backend', 'device', 'dtype', 'precision')

MODEL_ARGUMENT_HELP = {
    'weights': 'DVD weights file or folder (empty: the params_file value, whose default is the '
               'embedded tiny model)',
    'backend': 'torch, torch-compile, onnxruntime, tensorrt or stand-in (empty: the '
               'params_file value)',
    'device': 'torch device, e.g. cuda or cpu (empty: the params_file value)',
    'dtype': 'float32, bfloat16 or float16 (empty: the params_file value)',
    'precision': 'onnxruntime / tensorrt graph precision: fp32, fp16, bf16 or fp8 (empty: the '
                 'params_file value, whose default follows dtype)',
}

# Arguments every launch file declares besides the model ones: name -> (default, help).
COMMON_ARGUMENTS = {
    'use_sim_time': ('false', 'use the /clock topic (bag replay with --clock) in every node'),
    'respawn': ('false', 'restart the depth node when it dies (after respawn_delay s); '
                         'false: the whole launch stops, with a non-zero exit status when the '
                         'node failed'),
    'respawn_delay': ('2.0', 'seconds before the depth node is restarted (respawn:=true)'),
}

# Exit status of a node that stopped on its configuration (bad parameter, missing weights):
# restarting it cannot help, so even respawn:=true stops the launch.
CONFIG_ERROR_STATUS = 2


class LaunchFailure(RuntimeError):
    """A node of the launch failed: raised inside launch, which then stops with status 1."""


def model_arguments():
    """Return the DeclareLaunchArgument actions of :data:`MODEL_ARGUMENTS` (default empty)."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value='', description=MODEL_ARGUMENT_HELP[name])
            for name in MODEL_ARGUMENTS]


def common_arguments():
    """Return the DeclareLaunchArgument actions of :data:`COMMON_ARGUMENTS`."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in COMMON_ARGUMENTS.items()]


def flag(context, name):
    """Return the boolean launch argument ``name`` (true/false, yes/no, 1/0).

    :raises LaunchFailure: any other text, naming the argument.
    """
    text = context.launch_configurations[name].strip().lower()
    if text in ('true', 'yes', '1', 'on'):
        return True
    if text in ('false', 'no', '0', 'off', ''):
        return False
    raise LaunchFailure(f'launch argument {name}:={text!r}: use true or false')


def number(context, name, low=0.0):
    """Return the launch argument ``name`` as a float >= ``low``.

    :raises LaunchFailure: not a number or below ``low``.
    """
    text = context.launch_configurations[name]
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not value >= low:
        raise LaunchFailure(f'launch argument {name}:={text!r}: use a number >= {low:g}')
    return value


def node_overrides(context, declared, log=None):
    """Return the depth node parameters given on the launch command line: ``{name: value}``.

    The model arguments when non-empty, ``use_sim_time``, and every other ``name:=value`` that
    names a depth node parameter (passed through, so ``metric_mode:=fixed`` is never dropped),
    each typed and checked as the node declares it.

    :param context: the launch context (``launch_configurations``: every ``name:=value`` given,
        declared or not, plus the declared defaults).
    :param declared: the names the launch file declares.
    :param log: callable for one line about names that are neither (they may belong to an
        including launch file, whose configurations are visible here).
    :raises LaunchFailure: a bad value, or an unknown name that looks like a parameter or
        argument (a typo: ``model_hieght``), listing the close matches.
    """
    from dvd_ros.ros.param_args import close_matches, typed_value
    from dvd_ros.ros.params import SPECS

    given = dict(context.launch_configurations)
    out = {}
    try:
        for name in MODEL_ARGUMENTS:
            if given.get(name):
                out[name] = typed_value(name, given[name])
        out['use_sim_time'] = flag(context, 'use_sim_time')
        ignored = []
        for name, text in given.items():
            if name in declared:
                continue
            if name in SPECS:
                out[name] = typed_value(name, text)
                continue
            # Only clear typos fail: an including launch file's own arguments are visible
            # here too (``robot_namespace`` must not stop this launch).
            matches = close_matches(name, set(SPECS) | set(declared), cutoff=0.8,
                                    parts=False)
            if matches:
                raise LaunchFailure(f'unknown launch argument or depth node parameter '
                                    f'{name!r}: did you mean {", ".join(matches)}?')
            ignored.append(name)
    except InputError as exc:
        raise LaunchFailure(str(exc)) from None
    if ignored and log is not None:
        log(f'ignoring {", ".join(sorted(ignored))}: neither an argument of this launch file '
            'nor a depth node parameter')
    return out


def launch_parameters(values):
    """Return ``values`` as launch_ros parameters: strings wrapped so they stay strings.

    launch_ros YAML-parses plain strings (a weights path ``1.1`` would become a float).
    """
    from launch_ros.parameter_descriptions import ParameterValue

    return {name: ParameterValue(value, value_type=str) if isinstance(value, str) else value
            for name, value in values.items()}


def model_overrides(context):
    """Return {name: ParameterValue} of the model launch arguments that were given."""
    values = {name: context.launch_configurations.get(name, '') for name in MODEL_ARGUMENTS}
    return launch_parameters({name: value for name, value in values.items() if value})


def exit_policy(respawn, returncode, shutting_down, name='depth_node'):
    """Decide what the launch does when a node exits.

    :param respawn: the node restarts itself (launch_ros ``respawn``).
    :param returncode: its exit status.
    :param shutting_down: the launch is stopping anyway (Ctrl-C): nothing to do.
    :return: ``None`` (nothing), ``'shutdown'`` (stop the launch, status 0) or the message of
        a failure (stop the launch, status 1).
    """
    if shutting_down:
        return None
    if returncode == CONFIG_ERROR_STATUS:
        return (f'{name} stopped on its configuration (exit status {returncode}; the error '
                'line above says what to fix): the launch stops')
    if respawn:
        return None
    if returncode:
        return (f'{name} died (exit status {returncode}): the launch stops; respawn:=true '
                'restarts the node instead')
    return 'shutdown'


def on_exit_handler(respawn):
    """Return the ``on_exit`` callable of OnProcessExit for :func:`exit_policy`."""
    def on_exit(event, context):
        from launch.actions import Shutdown

        name = getattr(event, 'process_name', 'node')
        decision = exit_policy(respawn, event.returncode, context.is_shutdown, name)
        if decision is None:
            return None
        if decision == 'shutdown':
            return [Shutdown(reason=f'{name} exited')]
        # An exception in an event handler makes launch log it, shut down, and exit 1.
        raise LaunchFailure(decision)
    return on_exit


def supervised(node, respawn):
    """Return ``[node, its exit handler]``: the launch stops (or not) as :func:`exit_policy`."""
    from launch.actions import RegisterEventHandler
    from launch.event_handlers import OnProcessExit

    return [node, RegisterEventHandler(OnProcessExit(target_action=node,
                                                     on_exit=on_exit_handler(respawn)))]


def rviz_available():
    """Return True when the rviz2 package is installed (found in the ament index)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        return False
    return True


def absolute_topic(namespace, topic):
    """Return ``topic`` resolved in ``namespace``; an absolute topic stays as it is.

    ``('front', 'depth/points')`` -> ``'/front/depth/points'``.
    """
    if topic.startswith('/'):
        return topic
    parts = [p for p in namespace.strip('/').split('/') if p] + [topic.strip('/')]
    return '/' + '/'.join(parts)


def rviz_config_text(template, namespace, frame, image_topic='image'):
    """Return the RViz config ``template`` (YAML text) for one camera's namespace and frame.

    Every display topic ``/camera/<rest>`` of the template becomes ``/<namespace>/<rest>``; the
    camera image display shows ``image_topic``; the fixed frame is ``frame``.
    """
    import yaml

    config = yaml.safe_load(template)
    manager = config['Visualization Manager']
    for display in manager['Displays']:
        topic = display.get('Topic')
        if not isinstance(topic, dict) or 'Value' not in topic:
            continue
        rest = topic['Value'].split('/', 2)[-1]  # '/camera/depth/points' -> 'depth/points'
        topic['Value'] = absolute_topic(namespace, image_topic if rest == 'image' else rest)
    manager['Global Options']['Fixed Frame'] = frame
    return yaml.safe_dump(config, sort_keys=False)


def write_rviz_config(template_path, namespace, frame, image_topic='image', folder=None):
    """Write :func:`rviz_config_text` of ``template_path`` to a new file; return its path."""
    text = rviz_config_text(Path(template_path).read_text(), namespace, frame, image_topic)
    fd, path = tempfile.mkstemp(prefix='dvd_ros_', suffix='.rviz', dir=folder)
    with os.fdopen(fd, 'w') as fh:
        fh.write(text)
    return path


def rviz_actions(context, share, namespace, frame, image_topic, use_sim_time):
    """Return the actions that start RViz when ``use_rviz`` is true and rviz2 is installed.

    Without rviz2 (a headless robot) the launch goes on without it and says so: one line
    instead of a failed launch with orphaned nodes.
    """
    from launch.actions import LogInfo
    from launch_ros.actions import Node

    if not flag(context, 'use_rviz'):
        return []
    if not rviz_available():
        return [LogInfo(msg='use_rviz is true but rviz2 is not installed (a headless '
                            'machine?): running without RViz. Install it (apt install '
                            'ros-$ROS_DISTRO-rviz2) or pass use_rviz:=false')]
    config = write_rviz_config(Path(share) / 'rviz' / 'depth.rviz', namespace, frame,
                               image_topic)
    return [Node(package='rviz2', executable='rviz2', name='rviz2', namespace=namespace,
                 arguments=['-d', config], parameters=[{'use_sim_time': use_sim_time}],
                 output='screen')]
