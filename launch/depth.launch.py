"""Launch the dvd_ros depth node for one camera (optionally with RViz).

Example::

    ros2 launch dvd_ros depth.launch.py image:=/camera/color/image_raw \
        camera_info:=/camera/color/camera_info namespace:=front
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


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
        DeclareLaunchArgument('weights', default_value='',
                              description='DVD weights file or folder (empty: embedded tiny '
                                          'model)'),
        DeclareLaunchArgument('backend', default_value='torch',
                              description='torch, torch-compile, onnxruntime, tensorrt or '
                                          'stand-in'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='start RViz with rviz/depth.rviz'),
    ]
    depth_node = Node(
        package='dvd_ros',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'),
                    # value_type=str: an empty weights path must stay '', not become None.
                    {'weights': ParameterValue(LaunchConfiguration('weights'), value_type=str),
                     'backend': ParameterValue(LaunchConfiguration('backend'), value_type=str)}],
        remappings=[('image', LaunchConfiguration('image')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        output='screen',
        emulate_tty=True,
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', PathJoinSubstitution([share, 'rviz', 'depth.rviz'])],
        condition=IfCondition(LaunchConfiguration('use_rviz')),
        output='screen',
    )
    return LaunchDescription(args + [depth_node, rviz])
