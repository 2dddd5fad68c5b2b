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
from launch_ros.parameter_descriptions import ParameterValue

# Launch arguments that override the parameter file only when given (non-empty), so a
# params_file that sets weights or device is not silently overridden by a default here.
MODEL_ARGUMENTS = ('weights', 'backend', 'device', 'dtype')


def model_overrides(context):
    """Return {name: value} of the model launch arguments that were given (non-empty)."""
    values = {name: LaunchConfiguration(name).perform(context) for name in MODEL_ARGUMENTS}
    # value_type=str: launch would otherwise YAML-parse the text (a path like '1.1' -> float).
    return {name: ParameterValue(value, value_type=str) for name, value in values.items()
            if value}


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
        DeclareLaunchArgument('weights', default_value='',
                              description='DVD weights file or folder (empty: the params_file '
                                          'value, whose default is the embedded tiny model)'),
        DeclareLaunchArgument('backend', default_value='',
                              description='torch, torch-compile, onnxruntime, tensorrt or '
                                          'stand-in (empty: the params_file value)'),
        DeclareLaunchArgument('device', default_value='',
                              description='torch device, e.g. cuda or cpu (empty: the '
                                          'params_file value)'),
        DeclareLaunchArgument('dtype', default_value='',
                              description='float32, bfloat16 or float16 (empty: the '
                                          'params_file value)'),
        DeclareLaunchArgument('use_rviz', default_value='false',
                              description='start RViz with rviz/depth.rviz'),
    ]
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
