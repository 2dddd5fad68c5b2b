"""Launch the dvd_ros depth node for one camera (optionally with RViz).

Example::

    ros2 launch dvd_ros depth.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front metric_mode:=fixed

Any depth node parameter may be given as ``name:=value`` (it wins over ``params_file``); a
misspelt one stops the launch with the close matches. When the depth node dies the launch
stops, with exit status 1 if the node failed (``respawn:=true`` restarts it instead, except
after a configuration error).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dvd_ros.ros.launch_support import (
    absolute_topic,
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


def _arguments():
    return [
        DeclareLaunchArgument('image', default_value='image',
                              description='input image topic (rgb8, bgr8, rgba8, bgra8, mono8, '
                                          'mono16)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='CameraInfo topic with the same stamps as the images'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its outputs (one per '
                                          'camera)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(SHARE, 'config', 'depth.yaml'),
                              description='ROS parameter file of the depth node'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='start RViz (when rviz2 is installed) showing this '
                                          "namespace's cloud and colorized depth"),
        DeclareLaunchArgument('rviz_frame', default_value='camera_optical_frame',
                              description="RViz fixed frame: the camera's optical frame (the "
                                          'frame_id of its images) or one TF connects to it'),
    ] + common_arguments() + model_arguments()


def _nodes(context, declared):
    namespace = context.launch_configurations['namespace']
    respawn = flag(context, 'respawn')
    notes = []
    values = node_overrides(context, declared, log=notes.append)
    image = context.launch_configurations['image']
    depth = Node(
        package='dvd_ros',
        executable='depth_node',
        name='depth_node',
        namespace=namespace,
        parameters=[LaunchConfiguration('params_file'), launch_parameters(values)],
        remappings=[('image', image),
                    ('camera_info', context.launch_configurations['camera_info'])],
        respawn=respawn,
        respawn_delay=number(context, 'respawn_delay'),
        output='screen',
        emulate_tty=True,
    )
    actions = supervised(depth, respawn) + [LogInfo(msg=line) for line in notes]
    if respawn:
        actions.append(LogInfo(msg='respawn is on: the depth node restarts when it dies'))
    return actions + rviz_actions(context, SHARE, namespace,
                                  context.launch_configurations['rviz_frame'],
                                  absolute_topic(namespace, image), values['use_sim_time'])


def generate_launch_description():
    args = _arguments()
    declared = {a.name for a in args}
    return LaunchDescription(args + [OpaqueFunction(function=_nodes,
                                                    args=[declared])])
