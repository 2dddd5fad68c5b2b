"""The synthetic camera node publishes image, camera_info and ground truth with one header."""

import numpy as np
import pytest

pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_harness import Spinner, make_context, overrides, wait_for  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from dvd_ros.errors import InputError  # noqa: E402
from dvd_ros.ros import messages  # noqa: E402
from dvd_ros.ros.synthetic_camera import SyntheticCamera  # noqa: E402


@pytest.fixture(scope='module')
def context():
    ctx = make_context()
    yield ctx
    ctx.try_shutdown()


def test_publishes_matching_image_info_and_truth(context):
    camera = SyntheticCamera(namespace='/syn', context=context, parameter_overrides=overrides(
        width=32, height=24, num_frames=3, rate=50.0, upscale=2, frame_id='opt'))
    sink = Node('sink', namespace='/syn', context=context)
    got = {'image': [], 'camera_info': [], 'ground_truth/depth': []}
    for topic, kind in (('image', Image), ('camera_info', CameraInfo),
                        ('ground_truth/depth', Image)):
        sink.create_subscription(kind, topic, got[topic].append, qos_profile_sensor_data)
    spinner = Spinner(context, camera, sink)
    try:
        assert wait_for(lambda: all(len(v) >= 5 for v in got.values()), timeout=10)
    finally:
        spinner.stop()
        camera.destroy_node()
        sink.destroy_node()
    image, info, truth = (got[k][2] for k in ('image', 'camera_info', 'ground_truth/depth'))
    stamps = {k: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in v}
              for k, v in got.items()}
    assert stamps['image'] & stamps['camera_info'] & stamps['ground_truth/depth']
    assert (image.encoding, image.width, image.height) == ('rgb8', 64, 48)
    assert image.header.frame_id == 'opt'
    assert (info.width, info.height) == (64, 48) and info.k[0] > 0
    depth = messages.image_to_depth(truth)
    assert depth.shape == (48, 64) and np.nanmin(depth) > 0


def test_missing_video_is_a_clear_error(context):
    with pytest.raises(InputError, match='cannot open video'):
        SyntheticCamera(context=context, parameter_overrides=overrides(source='/nope.mp4'))


def test_video_source_loops(context, tmp_path):
    import cv2

    path = str(tmp_path / 'clip.avi')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
    if not writer.isOpened():
        pytest.skip('OpenCV cannot write MJPG here')
    for i in range(3):
        writer.write(np.full((24, 32, 3), 60 * i, np.uint8))
    writer.release()
    camera = SyntheticCamera(namespace='/vid', context=context, parameter_overrides=overrides(
        source=path, rate=100.0, hfov_deg=90.0))
    sink = Node('vsink', namespace='/vid', context=context)
    images, infos = [], []
    sink.create_subscription(Image, 'image', images.append, qos_profile_sensor_data)
    sink.create_subscription(CameraInfo, 'camera_info', infos.append, qos_profile_sensor_data)
    spinner = Spinner(context, camera, sink)
    try:
        assert wait_for(lambda: len(images) >= 7, timeout=10)  # more than one pass: it loops
    finally:
        spinner.stop()
        camera.destroy_node()
        sink.destroy_node()
    assert camera.pub_truth is None  # no ground truth for a video
    assert (images[0].width, images[0].height, images[0].encoding) == (32, 24, 'rgb8')
    assert infos and infos[0].k[0] == pytest.approx(16.0, rel=1e-6)  # 90 deg over 32 px


def _paced(context, namespace, **params):
    camera = SyntheticCamera(namespace=namespace, context=context, parameter_overrides=overrides(
        width=16, height=16, num_frames=2, rate=200.0, pace_topic='done', **params))
    sink = Node('pace_sink', namespace=namespace, context=context)
    images = []
    sink.create_subscription(Image, 'image', images.append, qos_profile_sensor_data)
    done = sink.create_publisher(Image, 'done', 10)
    return camera, sink, images, done


def test_paced_camera_waits_for_frames_to_come_back(context):
    camera, sink, images, done = _paced(context, '/paced', max_in_flight=3)
    spinner = Spinner(context, camera, sink)
    try:
        assert wait_for(lambda: len(images) >= 3, timeout=10)
        # At 200 Hz the camera would have sent dozens more by now without pacing.
        assert not wait_for(lambda: len(images) > 3, timeout=0.5)
        assert camera.in_flight == 3
        done.publish(images[0])  # the pipeline finished the first frame: one credit back
        assert wait_for(lambda: len(images) == 4 and camera.returned == 1, timeout=10)
        assert not wait_for(lambda: len(images) > 4, timeout=0.3)
        assert camera.lost == 0
    finally:
        spinner.stop()
        camera.destroy_node()
        sink.destroy_node()


def test_paced_camera_gives_up_frames_that_never_come_back(context):
    camera, sink, images, _ = _paced(context, '/lossy', max_in_flight=1, pace_timeout=0.2)
    spinner = Spinner(context, camera, sink)
    try:
        assert wait_for(lambda: len(images) >= 3, timeout=20)
    finally:
        spinner.stop()
        camera.destroy_node()
        sink.destroy_node()
    assert camera.lost >= 2 and camera.returned == 0


def test_camera_waits_for_its_subscribers(context):
    camera = SyntheticCamera(namespace='/wait', context=context, parameter_overrides=overrides(
        width=16, height=16, num_frames=2, rate=200.0, min_subscribers=2))
    first = Node('first_sink', namespace='/wait', context=context)
    images = []
    first.create_subscription(Image, 'image', images.append, qos_profile_sensor_data)
    first.create_subscription(Image, 'ground_truth/depth', lambda msg: None,
                              qos_profile_sensor_data)
    spinner = Spinner(context, camera, first)
    second = Node('second_sink', namespace='/wait', context=context)
    try:
        assert not wait_for(lambda: images, timeout=0.5)  # one subscriber of two: silent
        assert camera.index == 0
        second.create_subscription(Image, 'image', lambda msg: None, qos_profile_sensor_data)
        second.create_subscription(Image, 'ground_truth/depth', lambda msg: None,
                                   qos_profile_sensor_data)
        assert wait_for(lambda: len(images) >= 2, timeout=10)
    finally:
        spinner.stop()
        for node in (camera, first, second):
            node.destroy_node()
