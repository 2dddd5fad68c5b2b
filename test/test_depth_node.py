"""The depth node in-process, with the stand-in model: outputs, parameters, bad input, load."""

import math
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
from ros_harness import (  # noqa: E402
    Probe,
    Spinner,
    camera_info,
    domain_id,
    frame,
    header,
    image_msg,
    make_context,
    overrides,
    wait_for,
    wait_matched,
)
from sensor_msgs.msg import Image, PointCloud2, PointField  # noqa: E402

from dvd_ros import geometry  # noqa: E402
from dvd_ros.errors import InputError  # noqa: E402
from dvd_ros.ros import messages  # noqa: E402
from dvd_ros.ros.depth_node import DepthNode  # noqa: E402
from dvd_ros.ros.stand_in import StandInRegressor, disparity_of  # noqa: E402

WINDOW, OVERLAP = 5, 2
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def context():
    ctx = make_context()
    yield ctx
    ctx.try_shutdown()


class FakeLogger:
    def __init__(self, real):
        self.real = real
        self.warnings = []

    def warning(self, msg, **kwargs):
        self.warnings.append(msg)

    def info(self, msg, **kwargs):
        pass


class Rig:
    """A depth node + probe pair spinning in the background."""

    def __init__(self, context, regressor=None, namespace='', warm_info=True, **params):
        """Start a node (``regressor`` None and backend not stand-in: built from params)."""
        base = {'window': WINDOW, 'overlap': OVERLAP, 'backend': 'stand-in',
                'diagnostics_period': 0.2}
        base.update(params)
        if regressor is None and base['backend'] == 'stand-in':
            regressor = StandInRegressor()
        self.node = DepthNode(regressor, namespace=namespace,
                              context=context, parameter_overrides=overrides(**base))
        self.logger = FakeLogger(self.node.get_logger())
        self.node.get_logger = lambda: self.logger
        hint_msg = {'image': Image, 'points': PointCloud2}.get(params.get('hint_type'))
        self.probe = Probe(context, namespace=namespace, hint_type=hint_msg)
        self.spinner = Spinner(context, self.node, self.probe)
        assert wait_matched(self.probe, self.node)
        if warm_info:
            # Until a first CameraInfo arrives images do not wait for one (a camera without
            # calibration); send one ahead so every test frame is paired.
            assert wait_for(lambda: self._warm_up(), timeout=5)

    def _warm_up(self):
        self.probe.pub_info.publish(camera_info(header(-1)))
        time.sleep(0.02)
        return len(self.node._sync.infos) > 0

    def send(self, index, rgb=None, info=True, encoding='rgb8', hint=None, **hdr):
        hdr = header(index, **hdr)
        rgb = frame(index) if rgb is None else rgb
        if info:
            msg = info if not isinstance(info, bool) else camera_info(hdr, rgb.shape[1],
                                                                      rgb.shape[0])
            msg.header = hdr
            self.probe.pub_info.publish(msg)
        if hint is not None:
            hint.header = hdr
            self.probe.pub_hint.publish(hint)
        img = image_msg(rgb, hdr)
        img.encoding = encoding
        self.probe.pub_image.publish(img)
        return hdr

    def warnings_about(self, text):
        return [w for w in self.logger.warnings if text in w]

    def close(self):
        self.spinner.stop()
        self.node.destroy_node()
        self.probe.destroy_node()


@pytest.fixture
def rig_factory(context):
    rigs = []

    def make(**kwargs):
        rig = Rig(context, **kwargs)
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()


def _send_all(rig, n, period=0.01, **kwargs):
    headers = []
    for i in range(n):
        headers.append(rig.send(i, **kwargs))
        time.sleep(period)
    return headers


def _key(hdr):
    return (hdr.stamp.sec, hdr.stamp.nanosec)


def test_every_output_layout(rig_factory):
    a, b = 2.0, 0.25
    rig = rig_factory(metric_mode='fixed', metric_a=a, metric_b=b)
    headers = _send_all(rig, WINDOW + 3)  # first window + one hop (3 new frames)
    n = WINDOW + 3
    topics = ['depth/disparity', 'depth/image', 'depth/camera_info', 'depth/points',
              'depth/colorized', 'depth/confidence']
    assert wait_for(lambda: all(rig.probe.count(t) >= n for t in topics)), \
        {t: rig.probe.count(t) for t in topics}
    got = {t: rig.probe.by_stamp(t) for t in topics}
    for i, hdr in enumerate(headers):
        key = _key(hdr)
        for topic in topics:
            assert got[topic][key].header.frame_id == 'cam_optical', topic
        disp_msg = got['depth/disparity'][key]
        assert (disp_msg.encoding, disp_msg.height, disp_msg.width) == ('32FC1', 24, 32)
        disparity = messages.image_to_array(disp_msg)
        if i < WINDOW:  # first window: the stand-in's output, unaligned
            np.testing.assert_allclose(disparity, disparity_of(frame(i)), atol=1e-6)
        depth_msg = got['depth/image'][key]
        assert depth_msg.encoding == '32FC1' and depth_msg.step == 32 * 4
        depth = messages.image_to_array(depth_msg)
        np.testing.assert_allclose(depth, geometry.disparity_to_depth(disparity, a, b),
                                   rtol=1e-6)
        colorized = got['depth/colorized'][key]
        assert (colorized.encoding, colorized.height, colorized.width) == ('rgb8', 24, 32)
        confidence = messages.image_to_array(got['depth/confidence'][key])
        assert confidence.shape == (24, 32) and ((confidence >= 0) & (confidence <= 1)).all()
        info = got['depth/camera_info'][key]
        expected_info = camera_info(hdr)
        np.testing.assert_array_equal(info.k, expected_info.k)
        assert (info.width, info.height) == (32, 24)
        cloud = got['depth/points'][key]
        assert (cloud.height, cloud.width, cloud.point_step) == (24, 32, 16)
        assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
            ('x', 0, PointField.FLOAT32, 1), ('y', 4, PointField.FLOAT32, 1),
            ('z', 8, PointField.FLOAT32, 1), ('rgb', 12, PointField.FLOAT32, 1)]
        assert cloud.row_step == 16 * 32 and len(cloud.data) == 16 * 32 * 24
        intr = geometry.PinholeIntrinsics.from_K(np.reshape(expected_info.k, (3, 3)), 32, 24)
        expected = geometry.depth_to_points(depth, intr)
        np.testing.assert_allclose(messages.cloud_to_xyz(cloud).reshape(24, 32, 3), expected,
                                   rtol=1e-6)
        rgb = np.frombuffer(cloud.data, np.uint32).reshape(24, 32, 4)[..., 3]
        np.testing.assert_array_equal((rgb >> 16) & 255, frame(i)[..., 0])


def test_disparity_only_with_metric_mode_none(rig_factory):
    rig = rig_factory(metric_mode='none')
    _send_all(rig, WINDOW)
    assert wait_for(lambda: rig.probe.count('depth/camera_info') >= WINDOW)
    time.sleep(0.2)
    assert rig.probe.count('depth/image') == 0 and rig.probe.count('depth/points') == 0
    assert rig.probe.count('depth/camera_info') == rig.probe.count('depth/disparity') == WINDOW


def test_output_scale_rescales_camera_info(rig_factory):
    rig = rig_factory(output_scale=0.5, metric_mode='fixed')
    headers = _send_all(rig, WINDOW)
    assert wait_for(lambda: rig.probe.count('depth/points') >= WINDOW)
    info = rig.probe.by_stamp('depth/camera_info')[_key(headers[0])]
    assert (info.width, info.height) == (16, 12)
    intr = geometry.PinholeIntrinsics.from_K(np.reshape(camera_info(headers[0]).k, (3, 3)),
                                             32, 24).scaled(16, 12)
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), intr.K)
    depth = rig.probe.by_stamp('depth/image')[_key(headers[0])]
    assert (depth.width, depth.height) == (16, 12)
    cloud = rig.probe.by_stamp('depth/points')[_key(headers[0])]
    assert (cloud.width, cloud.height) == (16, 12)


def test_dynamic_parameters_change_outputs(rig_factory):
    from rclpy.parameter import Parameter
    rig = rig_factory(metric_mode='fixed', metric_a=1.0, metric_b=0.0)
    ok = rig.node.set_parameters([Parameter('point_stride', value=4),
                                  Parameter('points_rgb', value=False),
                                  Parameter('points_organized', value=False),
                                  Parameter('max_range', value=2.0),
                                  Parameter('metric_a', value=2.0),
                                  Parameter('colormap', value='gray')])
    assert all(r.successful for r in ok)
    headers = _send_all(rig, WINDOW)
    assert wait_for(lambda: rig.probe.count('depth/points') >= WINDOW)
    cloud = rig.probe.by_stamp('depth/points')[_key(headers[0])]
    assert cloud.height == 1 and cloud.point_step == 12 and len(cloud.fields) == 3
    xyz = messages.cloud_to_xyz(cloud)
    assert np.isfinite(xyz).all() and (np.linalg.norm(xyz, axis=1) <= 2.0 + 1e-5).all()
    # Stride 4 on 32x24 gives at most 8x6 points.
    assert 0 < xyz.shape[0] <= 48
    depth = messages.image_to_array(rig.probe.by_stamp('depth/image')[_key(headers[0])])
    np.testing.assert_allclose(depth, 1.0 / (2.0 * disparity_of(frame(0))), rtol=1e-5)
    colorized = messages.image_to_rgb(rig.probe.by_stamp('depth/colorized')[_key(headers[0])])
    assert (colorized[..., 0] == colorized[..., 2]).all()  # gray


def test_diagnostics(rig_factory):
    rig = rig_factory(metric_mode='fixed', metric_a=3.0)
    _send_all(rig, WINDOW)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= WINDOW)
    assert wait_for(lambda: _diagnostics(rig).get('frames out') == str(WINDOW), timeout=5)
    values = _diagnostics(rig)
    for key in ('input rate (Hz)', 'output rate (Hz)', 'latency stamp->publish mean (ms)',
                'model time per window (ms)', 'frames dropped', 'backend', 'dtype',
                'metric mode', 'metric scale a (1/m)', 'metric shift b (1/m)', 'queue'):
        assert key in values, key
    assert values['backend'] == 'stand-in' and values['metric mode'] == 'fixed'
    assert values['metric scale a (1/m)'] == '3' and values['windows run'] == '1'
    # The defaults of the alignment options are reported too.
    assert (values['alignment robust'], values['alignment scale fit'],
            values['alignment scale clip'], values['alignment drift prior']) == (
        'none', 'symmetric', '[0.7, 1.5]', 'off')


def _diagnostics(rig):
    """Return the latest /diagnostics key/values of the rig's node ({} before the first)."""
    with rig.probe.lock:
        msgs = [m for m in rig.probe.received['/diagnostics']
                if m.status and m.status[0].name == rig.node.get_fully_qualified_name()]
    return {kv.key: kv.value for kv in msgs[-1].status[0].values} if msgs else {}


def test_alignment_options_reach_stream_and_diagnostics(rig_factory):
    rig = rig_factory(align_robust='huber', align_symmetric=False, scale_clip_low=0.5,
                      scale_clip_high=2.0, drift_strength=0.01, drift_horizon=4,
                      flush_mode='pad', confidence_tau=0.1, policy='blend')
    stream = rig.node._stream
    assert (stream.robust, stream.symmetric, stream.scale_clip, stream.drift_strength,
            stream.drift_horizon, stream.flush_mode, stream.confidence_tau, stream.policy) == (
        'huber', False, (0.5, 2.0), 0.01, 4, 'pad', 0.1, 'blend')
    _send_all(rig, WINDOW + WINDOW - OVERLAP)  # two windows: one alignment
    assert wait_for(lambda: _diagnostics(rig).get('windows run') == '2', timeout=5)
    values = _diagnostics(rig)
    assert {k: values[k] for k in (
        'policy', 'alignment robust', 'alignment scale fit', 'alignment scale clip',
        'alignment drift prior', 'flush mode', 'confidence tau')} == {
        'policy': 'blend', 'alignment robust': 'huber', 'alignment scale fit': 'least squares',
        'alignment scale clip': '[0.5, 2]',
        'alignment drift prior': 'strength 0.01, horizon 4 windows', 'flush mode': 'pad',
        'confidence tau': '0.1'}
    assert 0.0 <= float(values['window alignment inliers']) <= 1.0
    assert values['window alignment scale clipped'] in ('true', 'false')


def test_auto_overlap_reported_on_diagnostics(rig_factory):
    # A 0.3 s model cannot keep up with 9-frame windows at this camera rate (it would need
    # 0.3 s * rate * 1.25 > 9 new frames per window): auto falls to overlap_min.
    rig = rig_factory(regressor=StandInRegressor(delay=0.3), window=9, overlap=-1,
                      overlap_mode='auto', overlap_min=2)
    assert (rig.node._stream.overlap_mode, rig.node._stream.overlap) == ('auto', 4)
    _send_all(rig, 9)
    assert wait_for(lambda: _diagnostics(rig).get('windows run') == '1', timeout=10)
    values = _diagnostics(rig)
    assert values['overlap mode'] == 'auto in [2, 8]'
    assert values['window / overlap'] == '9 / 2'
    assert rig.node._stream.stats.overlap == 2


def test_bad_alignment_option_stops_the_node(context):
    for params, message in [({'align_robust': 'trimmed'},
                             'align_robust must be one of none, huber, tukey, trim'),
                            ({'scale_clip_low': 1.6}, 'scale_clip_low .1.6. must be <= '
                             'scale_clip_high .1.5.')]:
        with pytest.raises(InputError, match=message):
            DepthNode(StandInRegressor(), context=context,
                      parameter_overrides=overrides(backend='stand-in', **params))


def test_anchored_image_hint_recovers_metric_depth(rig_factory):
    a_true, b_true = 0.8, 0.1
    rig = rig_factory(metric_mode='anchored', hint_type='image', hint_min_samples=20)
    headers = []
    for i in range(WINDOW):
        depth = 1.0 / (a_true * disparity_of(frame(i)) + b_true)
        sparse = np.full_like(depth, np.nan)
        sparse[::4, ::4] = depth[::4, ::4]  # 48 samples per frame
        hint = messages.array_to_image(sparse.astype(np.float32), '32FC1', header(i))
        headers.append(rig.send(i, hint=hint))
        time.sleep(0.01)
    assert wait_for(lambda: rig.probe.count('depth/image') >= WINDOW)
    depth = messages.image_to_array(rig.probe.by_stamp('depth/image')[_key(headers[2])])
    np.testing.assert_allclose(depth, 1.0 / (a_true * disparity_of(frame(2)) + b_true),
                               rtol=1e-3)


def test_anchored_points_hint(rig_factory):
    a_true, b_true = 0.5, 0.2
    rig = rig_factory(metric_mode='anchored', hint_type='points', hint_min_samples=20)
    headers = []
    for i in range(WINDOW):
        hdr = header(i)
        depth = 1.0 / (a_true * disparity_of(frame(i)) + b_true)
        intr = geometry.PinholeIntrinsics.from_K(np.reshape(camera_info(hdr).k, (3, 3)), 32, 24)
        pts = geometry.depth_to_points(depth, intr, stride=3).reshape(-1, 3)
        hint = messages.cloud_message(geometry.pack_points(pts), hdr)
        headers.append(rig.send(i, hint=hint))
        time.sleep(0.01)
    assert wait_for(lambda: rig.probe.count('depth/image') >= WINDOW)
    depth = messages.image_to_array(rig.probe.by_stamp('depth/image')[_key(headers[1])])
    np.testing.assert_allclose(depth, 1.0 / (a_true * disparity_of(frame(1)) + b_true),
                               rtol=1e-3)


def test_anchored_hints_kept_for_a_long_window(rig_factory):
    # Only the first frames of an 81-frame window carry usable hints; the rest carry empty
    # ones, which must not push the useful ones out before the window has run.
    a_true, b_true, window = 0.8, 0.1, 81
    rig = rig_factory(metric_mode='anchored', hint_type='image', hint_min_samples=20,
                      window=window, overlap=2)
    for i in range(window):
        depth = 1.0 / (a_true * disparity_of(frame(i)) + b_true)
        if i >= 3:
            depth = np.full_like(depth, np.nan)
        rig.node._on_hint(messages.array_to_image(depth.astype(np.float32), '32FC1',
                                                  header(i)))
    for i in range(window):
        rig.send(i)
        time.sleep(0.005)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= window)
    assert wait_for(lambda: rig.probe.count('depth/image') >= window)


# --------------------------------------------------------------------------- bad input


def _still_running(rig, start):
    """Send a full window of good frames from ``start``; the node must process them."""
    before = rig.probe.count('depth/disparity')
    for i in range(start, start + WINDOW):
        rig.send(i)
        time.sleep(0.01)
    return wait_for(lambda: rig.probe.count('depth/disparity') >= before + WINDOW - OVERLAP)


def _bad_image(rig, index, mutate):
    hdr = header(index)
    msg = image_msg(frame(index), hdr)
    mutate(msg)
    rig.probe.pub_image.publish(msg)


def _check_bad(rig, cause, text, mutate):
    for i in range(3):
        _bad_image(rig, i, mutate)
        time.sleep(0.02)
    assert wait_for(lambda: rig.node.stats.dropped[cause] == 3), dict(rig.node.stats.dropped)
    assert len(rig.warnings_about(text)) == 1, rig.logger.warnings  # once per cause
    assert rig.probe.count('depth/disparity') == 0
    assert _still_running(rig, 10)


def test_bad_unknown_encoding(rig_factory):
    rig = rig_factory()
    _check_bad(rig, 'encoding', "unsupported image encoding 'yuv444'",
               lambda m: setattr(m, 'encoding', 'yuv444'))


def test_bad_step_data_mismatch(rig_factory):
    rig = rig_factory()
    _check_bad(rig, 'step', 'is smaller than one row', lambda m: setattr(m, 'step', m.step - 3))


def test_bad_truncated_data(rig_factory):
    rig = rig_factory()
    _check_bad(rig, 'truncated', 'truncated', lambda m: setattr(m, 'data',
                                                               bytes(m.data)[:-100]))


def test_bad_zero_size(rig_factory):
    rig = rig_factory()

    def zero(msg):
        msg.height, msg.width, msg.step, msg.data = 0, 0, 0, b''
    _check_bad(rig, 'zero_size', 'zero-size', zero)


def test_resolution_change_restarts_stream(rig_factory):
    rig = rig_factory()
    for i in range(3):
        rig.send(i)
        time.sleep(0.01)
    big = []
    for i in range(3, 3 + WINDOW):
        big.append(rig.send(i, rgb=frame(i, 48, 64)))
        time.sleep(0.01)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 3 + WINDOW)
    sizes = sorted({(m.width, m.height) for m in rig.probe.received['depth/disparity']})
    assert sizes == [(32, 24), (64, 48)]
    last = rig.probe.by_stamp('depth/disparity')[_key(big[-1])]
    assert (last.width, last.height) == (64, 48)
    assert len(rig.warnings_about('image size changed from 32x24 to 64x48')) == 1
    assert rig.node.worker_alive


def test_images_without_camera_info(rig_factory):
    rig = rig_factory(metric_mode='fixed', warm_info=False)
    for i in range(2 * WINDOW):
        rig.send(i, info=False)
        time.sleep(0.01)
    assert wait_for(lambda: rig.probe.count('depth/image') >= 2 * WINDOW - OVERLAP)
    assert rig.probe.count('depth/disparity') >= 2 * WINDOW - OVERLAP
    assert rig.probe.count('depth/points') == 0 and rig.probe.count('depth/camera_info') == 0
    assert len(rig.warnings_about('depth/points needs intrinsics')) == 1


def test_fov_fallback_gives_points_without_camera_info(rig_factory):
    rig = rig_factory(metric_mode='fixed', fov_fallback_deg=90.0, warm_info=False)
    headers = _send_all(rig, WINDOW, info=False)
    assert wait_for(lambda: rig.probe.count('depth/points') >= WINDOW)
    info = rig.probe.by_stamp('depth/camera_info')[_key(headers[0])]
    assert math.isclose(info.k[0], 16.0 / math.tan(math.radians(45.0)), rel_tol=0.05)


def test_nan_or_zero_K(rig_factory):
    rig = rig_factory(metric_mode='fixed')
    for i in range(WINDOW):
        info = camera_info(header(i))
        info.k = [float('nan') if i % 2 else 0.0] + list(info.k[1:])
        rig.send(i, info=info)
        time.sleep(0.01)
    assert wait_for(lambda: rig.probe.count('depth/image') >= WINDOW)
    assert rig.probe.count('depth/points') == 0
    assert len(rig.warnings_about('CameraInfo unusable')) == 1
    assert _still_running(rig, WINDOW)


def test_out_of_order_stamps(rig_factory):
    rig = rig_factory()
    order = [0, 1, 2, 1, 3, 0, 4, 5, 6]  # 2 late, 1 repeated-late
    for i in order:
        rig.send(i)
        time.sleep(0.01)
    assert wait_for(lambda: rig.node.stats.dropped['out_of_order'] == 2)
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 7 - OVERLAP)
    stamps = [_key(m.header) for m in rig.probe.received['depth/disparity']]
    assert stamps == sorted(set(stamps))
    assert len(rig.warnings_about('stamps must increase')) == 1


def test_backwards_time_jump_restarts_stream(rig_factory):
    rig = rig_factory()
    first = [rig.send(i, t0=100_000_000_000) for i in range(WINDOW + 2) if not time.sleep(0.01)]
    second = [rig.send(i) for i in range(WINDOW + 2) if not time.sleep(0.01)]  # 99 s earlier
    # The first stream is flushed (all its frames out), the second runs its first window.
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 2 * WINDOW + 2)
    stamps = set(rig.probe.by_stamp('depth/disparity'))
    assert {_key(h) for h in first} <= stamps
    assert {_key(h) for h in second[:WINDOW]} <= stamps
    assert rig.node.stats.dropped['out_of_order'] == 0
    assert len(rig.warnings_about('restarting the stream')) == 1


def test_time_jump_keeps_camera_info_of_first_new_frame(rig_factory):
    rig = rig_factory()
    [rig.send(i, t0=100_000_000_000) for i in range(WINDOW) if not time.sleep(0.01)]
    time.sleep(0.1)
    # The first frame of the new time line: its CameraInfo arrives well before the image.
    second = [header(0)]
    rig.node._on_info(camera_info(second[0]))
    time.sleep(0.05)
    rig.node._on_image(image_msg(frame(0), second[0]))
    second += [rig.send(i) for i in range(1, WINDOW) if not time.sleep(0.01)]
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= 2 * WINDOW)
    assert wait_for(lambda: rig.probe.count('depth/camera_info') >= 2 * WINDOW)
    assert {_key(h) for h in second} <= set(rig.probe.by_stamp('depth/camera_info'))

def test_model_failure_keeps_node_alive(rig_factory):
    class Flaky(StandInRegressor):
        def predict(self, frames):
            if self.calls == 0:
                self.calls += 1
                raise RuntimeError('CUDA out of memory (simulated)')
            return super().predict(frames)

    rig = rig_factory(regressor=Flaky())
    _send_all(rig, WINDOW)
    assert wait_for(lambda: rig.warnings_about('simulated'))
    assert _still_running(rig, WINDOW)


def test_model_failure_while_finishing_a_stream_keeps_worker_alive(rig_factory):
    class FailsOnShortWindow(StandInRegressor):
        def predict(self, frames):
            if len(frames) < WINDOW:  # the flush of the tail at the resolution change
                raise RuntimeError('simulated failure on the tail window')
            return super().predict(frames)

    rig = rig_factory(regressor=FailsOnShortWindow())
    for i in range(3):
        rig.send(i)
        time.sleep(0.01)
    big = [rig.send(i, rgb=frame(i, 48, 64)) for i in range(3, 3 + WINDOW)
           if not time.sleep(0.01)]
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= WINDOW)
    assert set(rig.probe.by_stamp('depth/disparity')) == {_key(h) for h in big}
    assert rig.node.worker_alive
    assert rig.node._stream.stats.dropped == {'model_error': 3}
    assert len(rig.warnings_about('simulated failure on the tail window')) == 1


def test_unexpected_error_in_processing_keeps_worker_alive(rig_factory):
    rig = rig_factory()
    process = rig.node._process
    failures = []

    def fails_once(record):
        if not failures:
            failures.append(record)
            raise RuntimeError('simulated internal failure')
        return process(record)

    rig.node._process = fails_once
    sent = [rig.send(i) for i in range(WINDOW + 1) if not time.sleep(0.01)]
    assert wait_for(lambda: rig.probe.count('depth/disparity') >= WINDOW)
    assert rig.node.worker_alive
    assert rig.node.stats.dropped['internal_error'] == 1
    assert _key(sent[0]) not in rig.probe.by_stamp('depth/disparity')
    assert len(rig.warnings_about('simulated internal failure')) == 1


def test_queue_overflow_keeps_the_restart_of_a_time_jump(rig_factory):
    rig = rig_factory(queue_size=2)
    assert rig.node.stop()  # fill the queue by hand, nothing consumes it
    rgb = frame(0)
    pairs = [((header(i), rgb, 0.0, i == 1), None) for i in range(4)]
    rig.node._enqueue(pairs)  # frame 1 starts a new time line; 0 and 1 overflow
    queued = list(rig.node._queue)
    assert [_key(r.header) for r in queued] == [_key(header(2)), _key(header(3))]
    assert [r.restart for r in queued] == [True, False]
    assert rig.node.stats.dropped['queue_full'] == 2


# --------------------------------------------------------------------------- cameras, load


def test_two_cameras_by_namespace(context):
    rigs = [Rig(context, namespace=ns, metric_mode='fixed') for ns in ('/cam_left', '/cam_right')]
    try:
        for i in range(WINDOW):
            for k, rig in enumerate(rigs):
                rig.send(i, rgb=frame(i + 50 * k), frame_id=f'cam{k}')
            time.sleep(0.01)
        for k, rig in enumerate(rigs):
            assert wait_for(lambda r=rig: r.probe.count('depth/points') >= WINDOW)
            msgs = rig.probe.received['depth/disparity']
            assert {m.header.frame_id for m in msgs} == {f'cam{k}'}
            np.testing.assert_allclose(messages.image_to_array(msgs[0]),
                                       disparity_of(frame(50 * k)), atol=1e-6)
            assert rig.node.get_fully_qualified_name() == f'/cam_{"left" if k == 0 else "right"}' \
                '/depth_node'
    finally:
        for rig in rigs:
            rig.close()


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def test_overload_drops_oldest_and_stays_bounded(rig_factory):
    """Input at 5x the model rate: queue and memory bounded, drops counted, latency bounded."""
    seconds = float(os.environ.get('DVD_OVERLOAD_SECONDS', '8'))
    hop = WINDOW - OVERLAP
    delay = 0.15  # one window per 0.15 s -> the model finishes hop/delay = 20 frames/s
    rate = 5 * hop / delay  # 100 Hz in
    queue_size = 6
    rig = rig_factory(regressor=StandInRegressor(delay=delay), queue_size=queue_size,
                      metric_mode='fixed')
    period = 1.0 / rate
    sent = 0
    max_queue = 0
    rss = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        # Stamped now, so stamp -> publish latency is meaningful.
        hdr = header(0, t0=rig.node.get_clock().now().nanoseconds)
        rig.probe.pub_info.publish(camera_info(hdr))
        rig.probe.pub_image.publish(image_msg(frame(sent % 7), hdr))
        sent += 1
        max_queue = max(max_queue, rig.node.queue_length)
        if sent % 50 == 0:
            rss.append(_rss_mb())
        time.sleep(max(0.0, start + sent * period - time.monotonic()))
    assert wait_for(lambda: rig.node.queue_length == 0, timeout=5)
    # The pipeline may still hold a window in the model and one being published.
    assert rig.node._pipeline.drain(timeout=5)
    time.sleep(2 * delay)
    stats = rig.node.stats
    received = stats.input_rate.total
    out = stats.output_rate.total
    dropped = stats.dropped['queue_full']
    pending = rig.node._stream.stats.pending
    assert received > 0.8 * sent  # best-effort input may lose a few
    assert max_queue <= queue_size
    assert dropped > 0.5 * received
    # Every frame is published, dropped (counted) or still waiting for its window.
    assert received == out + dropped + pending + sum(
        v for k, v in stats.dropped.items() if k != 'queue_full')
    assert 0 <= pending < WINDOW
    # Latency: a frame waits at most a full queue plus one window (x2 for a loaded CI box).
    bound = (queue_size / hop + 2) * delay * 2 + 0.5
    assert stats.latency_s.max < bound, (stats.latency_s.max, bound)
    growth = rss[-1] - rss[len(rss) // 3]
    assert growth < 30, rss


def test_stand_in_node_does_not_import_torch():
    code = ('import sys, rclpy\n'
            'from rclpy.parameter import Parameter\n'
            'from dvd_ros.ros.depth_node import DepthNode\n'
            f'ctx = rclpy.context.Context(); rclpy.init(context=ctx, domain_id={domain_id()})\n'
            "node = DepthNode(context=ctx, parameter_overrides=[Parameter('backend', "
            "value='stand-in')])\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)\n"
            'node.destroy_node(); ctx.try_shutdown()\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False', 'False']


def test_real_model_built_from_parameters(rig_factory, tmp_path, monkeypatch):
    """The node builds the real DepthRegressor from ``weights``/``backend`` (tiny random DiT)."""
    torch = pytest.importorskip('torch')
    tiny = pytest.importorskip('tiny_models')

    torch.set_num_threads(1)
    tiny.save_tiny_weights(tmp_path / 'weights')
    # The worker loads the model and runs it: torch's thread count is set there (it is per
    # thread under OpenMP), so record the call instead of reading it back here.
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, 'set_num_threads',
                        lambda n: (calls.append((n, threading.current_thread().name)),
                                   real(n)))
    rig = rig_factory(backend='torch', weights=str(tmp_path / 'weights'), model_height=32,
                      model_width=32, metric_mode='fixed', cpu_threads=3)
    assert rig.node.wait_ready(120)
    assert calls == [(3, 'depth_node_worker')]  # cpu_threads reaches torch, in the worker
    assert rig.node.regressor.backend_name == 'torch'
    headers = _send_all(rig, WINDOW, period=0.05)
    assert wait_for(lambda: rig.probe.count('depth/points') >= WINDOW, timeout=120)
    disparity = messages.image_to_array(
        rig.probe.by_stamp('depth/disparity')[_key(headers[0])])
    assert disparity.shape == (24, 32) and np.isfinite(disparity).all()


def test_window_from_the_weights_unless_set(rig_factory):
    class Recommends5(StandInRegressor):
        recommended_window = 5

    rig = rig_factory(regressor=Recommends5(), window=0, overlap=-1)
    assert rig.node.window == (5, 2)
    assert (rig.node._stream.window, rig.node._stream.overlap) == (5, 2)
    rig = rig_factory(regressor=Recommends5(), window=9, overlap=-1)
    assert rig.node.window == (9, 4)
    rig = rig_factory(regressor=StandInRegressor(), window=0, overlap=-1)
    assert rig.node.window == (9, 4)


def test_precision_parameters_reach_the_backend(tmp_path):
    from dataclasses import replace

    from dvd_ros.model.precision import save_calibration
    from dvd_ros.ros.depth_node import build_regressor
    from dvd_ros.ros.params import DepthParams

    base = replace(DepthParams.defaults(), backend='onnxruntime', cpu_threads=1)
    assert build_regressor(base).backend.precision == 'fp32'  # from dtype float32
    half = build_regressor(replace(base, precision='fp16').validate())
    assert half.backend.precision == 'fp16'
    frames = np.random.default_rng(2).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    path = save_calibration(frames, tmp_path)
    fp8 = build_regressor(replace(base, precision='fp8', fp8_calibration=str(path)).validate())
    assert fp8.backend.precision == 'fp8'
    assert np.array_equal(fp8.backend.calibration, frames)
    with pytest.raises(InputError, match='cannot read FP8 calibration'):
        build_regressor(replace(base, precision='fp8', fp8_calibration=str(tmp_path / 'x.npy')))
