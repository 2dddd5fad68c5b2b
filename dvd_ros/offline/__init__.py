"""Offline processing of recorded data: video files, image folders and ROS 2 bags.

`sources` turns an input path into frames with stamps, `writers` turns depth into files and a
new bag, `pipeline` connects them through the regressor and the stitching.  Nothing here
imports rclpy: bags are read and written with `rosbags`.
"""

from dvd_ros.offline.sources import (
    BagSource,
    FolderSource,
    SourceFrame,
    VideoSource,
    open_source,
)

__all__ = ['BagSource', 'FolderSource', 'SourceFrame', 'VideoSource', 'open_source']
