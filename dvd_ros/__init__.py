"""dvd_ros: temporally stable monocular depth for ROS 2 with DVD (Deterministic Video Depth)."""

__version__ = '0.1.0'
