"""Launch the dvd_ros depth node for one camera (optionally with RViz).

Example::

    ros2 launch dvd_ros depth.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node

from dvd_ros.ros.launch_support import model_arguments, model_overrides


def _depth_node(context):
    overrides = model_overrides(context)
    return [Node(
        package='dvd_ros',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file')] + ([overrides] if overrides else []),
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    share = get_package_share_directory('dvd_ros')
    args = [
        DeclareLaunchArgument('image', default_value='image',
                              description='input image topic (rgb8, bgr8, rgba8, bgra8, mono8, '
                                          'mono16)'),
        DeclareLaunchArgument('camera_info', default_value='camera_info',
                              description='CameraInfo topic with the same stamps as the images'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its outputs (one per '
                                          'camera)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'depth.yaml'),
                              description='ROS parameter file of the depth node'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='start RViz with rviz/depth.rviz'),
    ] + model_arguments()
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', PathJoinSubstitution([share, 'rviz', 'depth.rviz'])],
        condition=IfCondition(LaunchConfiguration('use_rviz')),
        output='screen',
    )
    return LaunchDescription(args + [OpaqueFunction(function=_depth_node), rviz])
