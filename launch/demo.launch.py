"""Launch the demo: a synthetic camera (or a video file), the depth node and RViz.

Example::

    ros2 launch dvd_ros demo.launch.py                       # synthetic rooms
    ros2 launch dvd_ros demo.launch.py source:=/data/walk.mp4 use_rviz:=false
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
    # The synthetic camera's ground truth stands in for a sparse metric sensor (LiDAR, RGB-D):
    # anchored mode turns the relative output into metres from it. Model arguments override
    # the parameter file only when given.
    return [Node(
        package='dvd_ros',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'),
                    {'metric_mode': 'anchored', 'hint_type': 'image'} | model_overrides(context)],
        remappings=[('metric_hint', 'ground_truth/depth')],
        output='screen',
        emulate_tty=True,
    )]


def generate_launch_description():
    share = get_package_share_directory('dvd_ros')
    namespace = LaunchConfiguration('namespace')
    args = [
        DeclareLaunchArgument('namespace', default_value='camera',
                              description='namespace of the camera and depth node'),
        DeclareLaunchArgument('source', default_value='synthetic',
                              description='"synthetic" or a video file path'),
        DeclareLaunchArgument('rate', default_value='10.0',
                              description='camera frame rate in Hz'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'depth.yaml'),
                              description='ROS parameter file of the depth node'),
        DeclareLaunchArgument('use_rviz', default_value='true',
                              description='start RViz with rviz/depth.rviz'),
    ] + model_arguments()
    camera = Node(
        package='dvd_ros',
        executable='synthetic_camera',
        name='synthetic_camera',
        namespace=namespace,
        parameters=[{'source': LaunchConfiguration('source'),
                     'rate': LaunchConfiguration('rate')}],
        output='screen',
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=namespace,
        arguments=['-d', PathJoinSubstitution([share, 'rviz', 'depth.rviz'])],
        condition=IfCondition(LaunchConfiguration('use_rviz')),
        output='screen',
    )
    return LaunchDescription(args + [camera, OpaqueFunction(function=_depth_node), rviz])
