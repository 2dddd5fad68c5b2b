"""Build script for the dvd_ros ament_python package."""

from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'dvd_ros'

# Executables `ros2 run dvd_ros <name>` can start, installed once: as the small launchers of
# scripts/ros2_run in lib/dvd_ros/ (where `ros2 run` looks, for pip and colcon alike). Only the
# `dvd-ros` command is a console script (bin/, on PATH).
NODES = {
    'depth_node': 'dvd_ros.ros.depth_node:main',
    'synthetic_camera': 'dvd_ros.ros.synthetic_camera:main',
}


def _files(pattern):
    return sorted(p for p in glob(pattern) if os.path.isfile(p))


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    package_data={'dvd_ros': ['assets/*', 'assets/*/*', 'assets/*/*/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', _files('launch/*.launch.py')),
        ('share/' + package_name + '/config', _files('config/*')),
        ('share/' + package_name + '/rviz', _files('rviz/*')),
        ('lib/' + package_name, [f'scripts/ros2_run/{name}' for name in NODES]),
    ],
    install_requires=[
        'setuptools',
        'numpy>=1.26',
        'torch>=2.4',
        'diffusers>=0.35',
        'peft>=0.17',
        'safetensors>=0.4',
        'opencv-python-headless>=4.9',
        'rosbags>=0.10',
        'pyyaml>=5.4',
        'tqdm>=4.60',
    ],
    extras_require={
        # ROS 2 Kilted from PyPI wheels, for machines without a ROS installation.
        'pypi-ros': [
            'ros-rclpy[fastrtps]==9.1.2',
            'ros-sensor-msgs==5.5.1',
            'ros-std-msgs==5.5.1',
            'ros-rcl-interfaces==2.3.0',
            'ros-diagnostic-msgs==5.5.1',
        ],
        'onnx': ['onnx>=1.16', 'onnxruntime>=1.18'],
        # Photo textures of the richer training scenes (`dvd-ros train --rich-seeds`).
        'train': ['scikit-image>=0.22'],
        'test': ['pytest>=8', 'hypothesis>=6.100', 'ruff>=0.6', 'onnx>=1.16',
                 'onnxruntime>=1.18'],
    },
    zip_safe=True,
    maintainer='dvd_ros developers',
    maintainer_email='dev@dvd-ros.invalid',
    description='Temporally stable monocular depth and point clouds for ROS 2 with DVD.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': ['dvd-ros = dvd_ros.cli.main:main'],
    },
)
