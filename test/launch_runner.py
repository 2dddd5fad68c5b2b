"""Run a launch file of this checkout as ``ros2 launch`` does (test helper).

Run as a separate process by test/test_launch_real.py:
``python test/launch_runner.py FILE [name:=value ...]``; exits with the launch's status. Needs
the real ``launch`` and ``launch_ros`` (a ROS installation, or their sources on PYTHONPATH).
"""

import sys
import types


def _stub_composition_interfaces():
    # launch_ros.actions imports composition_interfaces for composable nodes, which these
    # launch files do not use; the PyPI ROS wheels do not ship it.
    try:
        import composition_interfaces.srv  # noqa: F401
    except ImportError:
        package = types.ModuleType('composition_interfaces')
        srv = types.ModuleType('composition_interfaces.srv')
        for name in ('LoadNode', 'UnloadNode', 'ListNodes'):
            setattr(srv, name, type(name, (), {'Request': object, 'Response': object}))
        package.srv = srv
        sys.modules.update({'composition_interfaces': package,
                            'composition_interfaces.srv': srv})


def main():
    _stub_composition_interfaces()
    from launch import LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    path, arguments = sys.argv[1], sys.argv[2:]
    service = LaunchService(argv=arguments, noninteractive=True)
    service.include_launch_description(IncludeLaunchDescription(
        PythonLaunchDescriptionSource(path),
        launch_arguments=[tuple(a.split(':=', 1)) for a in arguments]))
    status = service.run()
    print(f'launch exit status {status}', flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
