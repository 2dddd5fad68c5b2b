"""The depth node's inputs in-process, with the stand-in model.

Transports, encodings, topics, frames, camera models, implausible input, defaults and the
/diagnostics warnings.
"""

import math
import struct
import time

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_harness import (  # noqa: E402
    Probe,
    Spinner,
    camera_info,
    frame,
    header,
    image_msg,
    make_context,
    overrides,
    wait_for,
)
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from dvd_ros import geometry  # noqa: E402
from dvd_ros.ros import messages  # noqa: E402
from dvd_ros.ros.depth_node import DepthNode  # noqa: E402
from dvd_ros.ros.stand_in import StandInRegressor, disparity_of  # noqa: E402

WINDOW, OVERLAP = 5, 2


@pytest.fixture(scope='module')
def context():
    ctx = make_context()
    yield ctx
    ctx.try_shutdown()


class Warnings:
    """Stands in for the node's logger: keeps the warnings."""

    def __init__(self):
        self.warnings = []

    def warning(self, msg, **kwargs):
        self.warnings.append(msg)

    def info(self, msg, **kwargs):
        pass

    def about(self, text):
        return [w for w in self.warnings if text in w]


class Cam:
    """A depth node with its probe, spinning; extra publishers on absolute topics."""

    def __init__(self, context, regressor=None, cli_args=None, **params):
        base = {'window': WINDOW, 'overlap': OVERLAP, 'backend': 'stand-in',
                'diagnostics_period': 0.2}
        base.update(params)
        self.node = DepthNode(regressor or StandInRegressor(), context=context,
                              parameter_overrides=overrides(**base), cli_args=cli_args)
        self.log = Warnings()
        self.node.get_logger = lambda: self.log
        self.probe = Probe(context)
        self.spinner = Spinner(context, self.node, self.probe)
        self.pubs = {}

    def publisher(self, kind, topic):
        if topic not in self.pubs:
            self.pubs[topic] = self.probe.create_publisher(kind, topic, qos_profile_sensor_data)
            assert wait_for(lambda: self.pubs[topic].get_subscription_count() > 0, 5), topic
        return self.pubs[topic]

    def diagnostics(self):
        with self.probe.lock:
            msgs = [m for m in self.probe.received['/diagnostics']
                    if m.status and m.status[0].name == self.node.get_fully_qualified_name()]
        if not msgs:
            return None, {}
        status = msgs[-1].status[0]
        return status, {kv.key: kv.value for kv in status.values}

    def close(self):
        self.spinner.stop()
        self.node.destroy_node()
        self.probe.destroy_node()


@pytest.fixture
def cam(context):
    made = []

    def make(**kwargs):
        made.append(Cam(context, **kwargs))
        return made[-1]
    yield make
    for c in made:
        c.close()


def _key(hdr):
    return (hdr.stamp.sec, hdr.stamp.nanosec)


def _png(rgb, hdr):
    ok, data = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(header=hdr, format='rgb8; png compressed bgr8')
    msg.data = data.tobytes()
    return msg


def _feed(c, n, image=None, info=True, start=0, **hdr_kw):
    """Publish ``n`` frames (image builder ``image(i, hdr)``) with their CameraInfo."""
    headers = []
    for i in range(start, start + n):
        hdr = header(i, **hdr_kw)
        if info:
            msg = info(hdr) if callable(info) else camera_info(hdr)
            c.probe.pub_info.publish(msg) if info is True else c.publisher(
                type(msg), c.node._info_topic).publish(msg)
        if image is None:
            c.probe.pub_image.publish(image_msg(frame(i), hdr))
        else:
            topic, msg = image(i, hdr)
            c.publisher(type(msg), topic).publish(msg)
        headers.append(hdr)
        time.sleep(0.02)
    return headers


# ----------------------------------------------------------------------- transports, encodings


def test_compressed_stream_in_process(cam):
    c = cam(image_transport='compressed')
    assert c.node._image_topic == '/image'
    headers = _feed(c, WINDOW, image=lambda i, h: ('/image/compressed', _png(frame(i), h)))
    assert wait_for(lambda: c.probe.count('depth/points') >= WINDOW)
    got = c.probe.by_stamp('depth/disparity')
    for i, hdr in enumerate(headers):
        np.testing.assert_allclose(messages.image_to_array(got[_key(hdr)]),
                                   disparity_of(frame(i)), atol=1e-6)
    # Corrupt and unsupported messages are dropped, counted per cause, logged once per cause.
    pub = c.publisher(CompressedImage, '/image/compressed')
    for i in range(3):
        bad = _png(frame(i), header(20 + i))
        bad.data = bytes(bad.data)[:40]
        pub.publish(bad)
        pub.publish(CompressedImage(header=header(30 + i), format='theora', data=b'\x00'))
        time.sleep(0.02)
    dropped = c.node.stats.dropped
    assert wait_for(lambda: (dropped['compressed_corrupt'], dropped['compressed_format'])
                    == (3, 3)), dict(dropped)
    assert len(c.log.about('cannot decode')) == 1 and len(c.log.about("'theora'")) == 1
    assert wait_for(lambda: c.diagnostics()[1].get('dropped: compressed_corrupt') == '3')


@pytest.mark.parametrize('encoding', ['yuv422_yuy2', 'uyvy', 'bayer_rggb8', 'nv12', 'rgb16'])
def test_robot_encodings_through_the_node(cam, encoding):
    c = cam()
    rgb = np.repeat(np.repeat(frame(0)[::2, ::2], 2, axis=0), 2, axis=1)  # 2x2 blocks

    def build(i, hdr):
        if encoding in ('yuv422_yuy2', 'uyvy'):
            code = cv2.COLOR_RGB2YUV_YUY2 if encoding == 'yuv422_yuy2' else cv2.COLOR_RGB2YUV_UYVY
            data = cv2.cvtColor(rgb, code)
        elif encoding == 'nv12':
            i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
            h, w = rgb.shape[:2]
            u = i420[h:h + h // 4].reshape(h // 2, w // 2)
            v = i420[h + h // 4:].reshape(h // 2, w // 2)
            data = np.concatenate([i420[:h], np.stack([u, v], 2).reshape(h // 2, w)])
        elif encoding == 'bayer_rggb8':
            data = np.empty(rgb.shape[:2], np.uint8)
            for k, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
                data[dy::2, dx::2] = rgb[dy::2, dx::2, (0, 1, 1, 2)[k]]
        else:
            data = rgb.astype(np.uint16) * 257
        msg = Image(header=hdr, height=rgb.shape[0], width=rgb.shape[1], encoding=encoding)
        msg.data = np.ascontiguousarray(data).tobytes()
        msg.step = len(msg.data) // data.shape[0]
        return '/image', msg
    headers = _feed(c, WINDOW, image=build)
    assert wait_for(lambda: c.probe.count('depth/disparity') >= WINDOW)
    got = messages.image_to_array(c.probe.by_stamp('depth/disparity')[_key(headers[0])])
    inner = (slice(2, -2), slice(2, -2))  # demosaicing borders
    np.testing.assert_allclose(got[inner], disparity_of(rgb)[inner], atol=4 / 255)
    assert not c.node.stats.dropped


def test_generic_8uc3_warns_once(cam):
    c = cam()
    headers = _feed(c, WINDOW, image=lambda i, h: ('/image', image_msg(
        np.ascontiguousarray(frame(i)[:, :, ::-1]), h, encoding='8UC3')))
    assert wait_for(lambda: c.probe.count('depth/disparity') >= WINDOW)
    got = messages.image_to_array(c.probe.by_stamp('depth/disparity')[_key(headers[1])])
    np.testing.assert_allclose(got, disparity_of(frame(1)), atol=1e-6)
    assert len(c.log.about("'8UC3' does not say the channel order")) == 1


def _compressed_depth(depth_m, hdr):
    ok, data = cv2.imencode('.png', np.round(np.nan_to_num(depth_m) * 1000).astype(np.uint16))
    msg = CompressedImage(header=hdr, format='16UC1; compressedDepth png')
    msg.data = struct.pack('<iff', 0, 0.0, 0.0) + data.tobytes()
    return msg


def test_compressed_depth_hints_and_hint_range(cam):
    a_true, b_true = 0.8, 0.1
    c = cam(metric_mode='anchored', hint_type='image', hint_transport='compressedDepth',
            hint_min_samples=20, hint_max_depth=5.0)
    pub = c.publisher(CompressedImage, '/metric_hint/compressedDepth')
    headers = []
    for i in range(WINDOW):
        hdr = header(i)
        depth = 1.0 / (a_true * disparity_of(frame(i)) + b_true)
        sparse = np.full_like(depth, np.nan)
        sparse[::4, ::4] = depth[::4, ::4]
        sparse[1, 1:4] = 60.0  # beyond hint_max_depth: rejected, or the fit would bend
        pub.publish(_compressed_depth(sparse, hdr))
        c.probe.pub_info.publish(camera_info(hdr))
        c.probe.pub_image.publish(image_msg(frame(i), hdr))
        headers.append(hdr)
        time.sleep(0.02)
    assert wait_for(lambda: c.probe.count('depth/image') >= WINDOW)
    depth = messages.image_to_array(c.probe.by_stamp('depth/image')[_key(headers[2])])
    np.testing.assert_allclose(depth, 1.0 / (a_true * disparity_of(frame(2)) + b_true),
                               rtol=0.01)
    assert wait_for(lambda: c.diagnostics()[1].get(
        'metric hint samples rejected (out of range)') == str(3 * WINDOW))
    assert len(c.log.about('hint_min_depth / hint_max_depth')) == 1


# ----------------------------------------------------------------------- topics and frames


def test_camera_info_follows_the_remapped_image_topic(cam):
    c = cam(cli_args=['--ros-args', '-r', 'image:=/cam/image_raw'])
    assert (c.node._image_topic, c.node._info_topic) == ('/cam/image_raw', '/cam/camera_info')
    _feed(c, WINDOW, image=lambda i, h: ('/cam/image_raw', image_msg(frame(i), h)),
          info=lambda h: camera_info(h))
    assert wait_for(lambda: c.probe.count('depth/camera_info') >= WINDOW)
    assert c.probe.count('depth/points') >= WINDOW
    # A camera_info remap still wins.
    c2 = cam(cli_args=['--ros-args', '-r', 'image:=/cam/image_raw', '-r',
                       'camera_info:=/calibration/info'])
    assert c2.node._info_topic == '/calibration/info'


def test_frame_id_override_and_non_optical_warning(cam):
    c = cam()
    _feed(c, WINDOW, frame_id='camera_link')
    assert wait_for(lambda: c.probe.count('depth/points') >= WINDOW)
    assert {m.header.frame_id for m in c.probe.received['depth/points']} == {'camera_link'}
    assert len(c.log.about("frame_id 'camera_link' does not look like an optical frame")) == 1
    c2 = cam(frame_id='camera_color_optical_frame')
    _feed(c2, WINDOW, frame_id='camera_link')
    assert wait_for(lambda: c2.probe.count('depth/points') >= WINDOW)
    for topic in ('depth/points', 'depth/camera_info', 'depth/disparity'):
        assert {m.header.frame_id for m in c2.probe.received[topic]} == {
            'camera_color_optical_frame'}, topic
    assert not c2.log.about('optical frame')


# ----------------------------------------------------------------------- camera models


def _zero_k(hdr):
    info = camera_info(hdr)
    info.k, info.p = [0.0] * 9, [0.0] * 12
    return info


def test_zero_k_with_fov_fallback_publishes_the_fallback_model(cam):
    c = cam(fov_fallback_deg=90.0)
    headers = _feed(c, WINDOW, info=_zero_k)
    assert wait_for(lambda: c.probe.count('depth/points') >= WINDOW)
    info = c.probe.by_stamp('depth/camera_info')[_key(headers[0])]
    f = 16.0 / math.tan(math.radians(45.0))
    np.testing.assert_allclose([info.k[0], info.k[4], info.p[0], info.p[5]], [f] * 4)
    assert info.k[8] == 1.0 and info.p[10] == 1.0
    # The published model is the one the points were made with.
    depth = messages.image_to_array(c.probe.by_stamp('depth/image')[_key(headers[0])])
    intr = geometry.PinholeIntrinsics.from_K(np.reshape(info.k, (3, 3)), 32, 24)
    cloud = messages.cloud_to_xyz(c.probe.by_stamp('depth/points')[_key(headers[0])])
    np.testing.assert_allclose(cloud.reshape(24, 32, 3), geometry.depth_to_points(depth, intr),
                               rtol=1e-6)


def test_zero_k_without_fallback_publishes_no_camera_info(cam):
    c = cam()
    _feed(c, WINDOW, info=_zero_k)
    assert wait_for(lambda: c.probe.count('depth/image') >= WINDOW)
    time.sleep(0.2)
    assert c.probe.count('depth/camera_info') == 0 and c.probe.count('depth/points') == 0


@pytest.mark.parametrize('field, value, text', [(0, 1.0e5, 'fx = 100000 px is implausible'),
                                                (2, 400.0, 'cx = 400 px lies far outside'),
                                                (4, 3.0, 'differ by more than 5x')])
def test_implausible_intrinsics_get_no_points(cam, field, value, text):
    c = cam()

    def info(hdr):
        msg = camera_info(hdr)
        k = list(msg.k)
        k[field] = value
        msg.k = k
        return msg
    _feed(c, WINDOW, info=info)
    assert wait_for(lambda: c.probe.count('depth/image') >= WINDOW)
    time.sleep(0.2)
    assert c.probe.count('depth/points') == 0 and c.probe.count('depth/camera_info') == 0
    assert len(c.log.about(text)) == 1, c.log.warnings


# ----------------------------------------------------------------------- model output, defaults


def test_nan_output_counted_and_not_published(cam):
    class NanFirstWindow(StandInRegressor):
        def predict(self, frames):
            out = super().predict(frames)
            if self.calls == 1:
                out[:] = np.nan
            return out

    c = cam(regressor=NanFirstWindow())
    headers = _feed(c, 2 * WINDOW)
    assert wait_for(lambda: c.probe.count('depth/disparity') >= WINDOW)
    published = set(c.probe.by_stamp('depth/disparity'))
    assert not {_key(h) for h in headers[:WINDOW]} & published
    assert all(np.isfinite(messages.image_to_array(m)).all()
               for m in c.probe.received['depth/disparity'])
    assert wait_for(lambda: c.diagnostics()[1].get(
        'model windows non-finite (rejected / partial)') == '1 / 0')
    assert c.diagnostics()[1]['dropped: model_error'] == str(WINDOW)
    assert len(c.log.about('NaN/inf in 100%')) == 1


def test_defaults_give_a_cloud(cam):
    c = cam()  # metric_mode and metric_a/b from the defaults
    headers = _feed(c, WINDOW)
    assert wait_for(lambda: c.probe.count('depth/points') >= WINDOW)
    depth = messages.image_to_array(c.probe.by_stamp('depth/image')[_key(headers[0])])
    assert np.nanmin(depth) >= 0.5 - 1e-6 and np.nanmax(depth) <= 10.0 + 1e-5
    status, values = c.diagnostics()
    assert wait_for(lambda: c.diagnostics()[1].get('depth/points') == 'publishing')


@pytest.mark.parametrize('params, info, text', [
    ({'metric_mode': 'none'}, True, 'metric_mode is none'),
    ({}, False, 'no usable CameraInfo on /camera_info'),
])
def test_diagnostics_warn_while_points_cannot_publish(cam, params, info, text):
    c = cam(**params)
    _feed(c, WINDOW, info=info)
    assert wait_for(lambda: c.probe.count('depth/disparity') >= WINDOW)

    def warned():
        status, values = c.diagnostics()
        return (status is not None and status.level == DiagnosticStatus.WARN
                and text in status.message and text in values['depth/points'])
    assert wait_for(warned), c.diagnostics()


def test_input_parameters_are_checked():
    from dataclasses import replace

    from dvd_ros.errors import InputError
    from dvd_ros.ros.params import DepthParams
    base = DepthParams.defaults()
    assert (base.metric_mode, base.image_transport, base.rectify, base.frame_id) == (
        'fixed', 'raw', 'auto', '')
    cases = [({'hint_min_depth': 5.0, 'hint_max_depth': 1.0},
              r'hint_min_depth \(5.0\) must be < hint_max_depth \(1.0\)'),
             ({'hint_transport': 'compressedDepth', 'hint_type': 'points'},
              'needs hint_type image'),
             ({'image_transport': 'theora'}, 'image_transport must be one of raw, compressed'),
             ({'rectify': 'yes'}, 'rectify must be one of auto, on, off')]
    for change, message in cases:
        with pytest.raises(InputError, match=message):
            replace(base, **change).validate()
