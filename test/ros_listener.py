"""Subscribe to a depth node's outputs for a while and print a JSON summary (test helper).

Run as a separate process by test/test_multiprocess.py:
``python test/ros_listener.py SECONDS [NAMESPACE]``. Prints one JSON line:
``{topic: {stamp_ns: [width, height, detail, latency_ns]}}``.
"""

import json
import sys
import time

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, PointCloud2


def main():
    seconds = float(sys.argv[1])
    namespace = sys.argv[2] if len(sys.argv) > 2 else ''
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node('listener', namespace=namespace, context=context)
    seen = {'depth/image': {}, 'depth/camera_info': {}, 'depth/points': {}}

    def recorder(topic):
        def record(msg):
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if topic == 'depth/points':
                detail = [msg.point_step, [f.name for f in msg.fields]]
            elif topic == 'depth/image':
                detail = msg.encoding
            else:
                detail = list(msg.k)
            # stamp -> received latency; the camera stamps with the same host clock.
            seen[topic][stamp] = [msg.width, msg.height, detail, time.time_ns() - stamp]
        return record

    for topic, kind in (('depth/image', Image), ('depth/camera_info', CameraInfo),
                        ('depth/points', PointCloud2)):
        node.create_subscription(kind, topic, recorder(topic), 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.1)
    print(json.dumps({topic: {str(k): v for k, v in msgs.items()}
                      for topic, msgs in seen.items()}))
    executor.shutdown()
    node.destroy_node()
    context.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
