"""A distorted camera that sends JPEG CompressedImage, and a listener of the depth outputs.

Run as a separate process by test/test_multiprocess_inputs.py:
``python test/ros_camera_inputs.py FRAMES RATE``. Publishes ``/cam/image_raw/compressed``
(``bgr8; jpeg compressed bgr8``) and ``/cam/camera_info`` (plumb_bob distortion, P != K), keeps
listening for a while, then prints one JSON line: the frames sent and, per output stamp, what
``depth/camera_info`` and ``depth/points`` carried.
"""

import json
import sys
import time

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2

WIDTH, HEIGHT = 160, 120
K = [100.0, 0.0, 79.5, 0.0, 100.0, 59.5, 0.0, 0.0, 1.0]
D = [-0.25, 0.07, 0.001, -0.001, 0.0]
P = [90.0, 0.0, 78.0, 0.0, 0.0, 90.0, 60.0, 0.0, 0.0, 0.0, 1.0, 0.0]
LISTEN_AFTER_S = 6.0


def render():
    """Return the distorted camera's view of a smooth scene, (H, W, 3) uint8 BGR."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    pts = np.stack([u.ravel(), v.ravel()], axis=-1).reshape(-1, 1, 2)
    rays = cv2.undistortPoints(pts, np.reshape(K, (3, 3)), np.array(D)).reshape(HEIGHT, WIDTH, 2)
    x, y = rays[..., 0], rays[..., 1]
    gray = np.clip(128 + 60 * np.sin(3 * x) * np.cos(2 * y) + 30 * x, 0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def main():
    frames, rate = int(sys.argv[1]), float(sys.argv[2])
    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = Node('distorted_camera', context=context)
    pub_image = node.create_publisher(CompressedImage, '/cam/image_raw/compressed',
                                      qos_profile_sensor_data)
    pub_info = node.create_publisher(CameraInfo, '/cam/camera_info', qos_profile_sensor_data)
    seen = {'depth/camera_info': {}, 'depth/points': {}}

    def on_info(msg):
        seen['depth/camera_info'][_stamp(msg)] = {
            'frame_id': msg.header.frame_id, 'size': [msg.width, msg.height],
            'd': list(msg.d), 'k': list(msg.k), 'p': list(msg.p)}

    def on_points(msg):
        xyz = np.frombuffer(bytes(msg.data), np.float32).reshape(
            msg.height, msg.width, msg.point_step // 4)[..., :3]
        entry = {'size': [msg.width, msg.height], 'fields': [f.name for f in msg.fields]}
        if not seen['depth/points']:  # one cloud in full is enough (and keeps the JSON small)
            entry['xyz'] = np.nan_to_num(xyz, nan=-1.0).round(5).tolist()
        seen['depth/points'][_stamp(msg)] = entry

    node.create_subscription(CameraInfo, 'depth/camera_info', on_info, 50)
    node.create_subscription(PointCloud2, 'depth/points', on_points, 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    end = time.monotonic() + 10.0
    while pub_image.get_subscription_count() == 0 and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    ok, jpeg = cv2.imencode('.jpg', render(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    sent = []
    for _ in range(frames):
        now = node.get_clock().now().to_msg()
        image = CompressedImage(format='bgr8; jpeg compressed bgr8')
        image.header.stamp, image.header.frame_id = now, 'cam_optical_frame'
        image.data = jpeg.tobytes()
        info = CameraInfo(width=WIDTH, height=HEIGHT, distortion_model='plumb_bob', d=D, k=K,
                          p=P, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
        info.header = image.header
        pub_info.publish(info)
        pub_image.publish(image)
        sent.append(_stamp(image))
        stop = time.monotonic() + 1.0 / rate
        while time.monotonic() < stop:
            executor.spin_once(timeout_sec=0.01)
    end = time.monotonic() + LISTEN_AFTER_S
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    print(json.dumps({'sent': sent, **{t: {str(k): v for k, v in m.items()}
                                        for t, m in seen.items()}}))
    executor.shutdown()
    node.destroy_node()
    context.try_shutdown()
    return 0


def _stamp(msg):
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


if __name__ == '__main__':
    sys.exit(main())
