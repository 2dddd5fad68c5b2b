"""Launch the demo: a synthetic camera (or a video file), the depth node and RViz.

Example::

    ros2 launch dvd_ros demo.launch.py                       # synthetic rooms
    ros2 launch dvd_ros demo.launch.py source:=/data/walk.mp4 use_rviz:=false

RViz starts only where rviz2 is installed (otherwise one line says so and the demo runs
without it). When the depth node or the camera dies, the whole launch stops (exit status 1
when one failed).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dvd_ros.ros.launch_support import (
    common_arguments,
    flag,
    launch_parameters,
    model_arguments,
    node_overrides,
    number,
    rviz_actions,
    supervised,
)

SHARE = get_package_share_directory('dvd_ros')
# The synthetic camera's frame_id (its parameter default): the RViz fixed frame.
CAMERA_FRAME = 'camera_optical_frame'


def _arguments():
    return [
        DeclareLaunchArgument('namespace', default_value='camera',
                              description='namespace of the camera and depth node'),
        DeclareLaunchArgument('source', default_value='synthetic',
                              description='"synthetic" or a video file path'),
        DeclareLaunchArgument('rate', default_value='10.0',
                              description='camera frame rate in Hz'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(SHARE, 'config', 'depth.yaml'),
                              description='ROS parameter file of the depth node'),
        DeclareLaunchArgument('use_rviz', default_value='true',
                              description='start RViz when rviz2 is installed (otherwise the '
                                          'demo runs without it and says so)'),
    ] + common_arguments() + model_arguments()


def _nodes(context, declared):
    namespace = context.launch_configurations['namespace']
    respawn = flag(context, 'respawn')
    notes = []
    values = node_overrides(context, declared, log=notes.append)
    use_sim_time = values['use_sim_time']
    camera = Node(
        package='dvd_ros',
        executable='synthetic_camera',
        name='synthetic_camera',
        namespace=namespace,
        parameters=[launch_parameters({
            'source': context.launch_configurations['source'], 'rate': number(context, 'rate'),
            'frame_id': CAMERA_FRAME, 'use_sim_time': use_sim_time})],
        output='screen',
    )
    # The synthetic camera's ground truth stands in for a sparse metric sensor (LiDAR, RGB-D):
    # anchored mode turns the relative output into metres from it. Model arguments and
    # parameters given on the command line override the parameter file only when given.
    depth = Node(
        package='dvd_ros',
        executable='depth_node',
        name='depth_node',
        namespace=namespace,
        parameters=[LaunchConfiguration('params_file'),
                    launch_parameters({'metric_mode': 'anchored', 'hint_type': 'image'}
                                      | values)],
        remappings=[('metric_hint', 'ground_truth/depth')],
        respawn=respawn,
        respawn_delay=number(context, 'respawn_delay'),
        output='screen',
        emulate_tty=True,
    )
    return (supervised(depth, respawn) + supervised(camera, False)
            + [LogInfo(msg=line) for line in notes]
            + rviz_actions(context, SHARE, namespace, CAMERA_FRAME, 'image', use_sim_time))


def generate_launch_description():
    args = _arguments()
    declared = {a.name for a in args}
    return LaunchDescription(args + [OpaqueFunction(function=_nodes, args=[declared])])
