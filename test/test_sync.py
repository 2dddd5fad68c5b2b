"""Stamp synchroniser: pairing, timeouts, bounds."""

from builtin_interfaces.msg import Time
import pytest

from dvd_ros.ros.sync import StampBuffer, StampSync, stamp_ns


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_stamp_ns():
    assert stamp_ns(Time(sec=2, nanosec=5)) == 2_000_000_005


def test_buffer_bounded_and_tolerance():
    buf = StampBuffer(3, tolerance_ns=10)
    for s in (100, 200, 300, 400):
        buf.add(s, f'i{s}')
    assert len(buf) == 3 and buf.find(100) is None  # oldest evicted
    assert buf.find(205) == 'i200' and buf.find(395) == 'i400'
    assert buf.find(250) is None
    buf.add(400, 'new')
    assert buf.find(400) == 'new' and len(buf) == 3
    with pytest.raises(ValueError):
        StampBuffer(0)


def test_pairs_in_either_order():
    sync = StampSync(clock=FakeClock())
    assert sync.add_info(10, 'info10') == []
    assert sync.add_image(10, 'img10') == [('img10', 'info10')]
    assert sync.add_image(20, 'img20') == []  # waits for its info
    assert sync.pending == 1
    assert sync.add_info(20, 'info20') == [('img20', 'info20')]
    assert sync.unmatched == 0


def test_missing_info_released_after_timeout():
    clock = FakeClock()
    sync = StampSync(timeout_s=0.1, clock=clock)
    sync.add_info(0, 'info0')
    assert sync.add_image(10, 'a') == []
    clock.t = 0.05
    assert sync.poll() == []
    clock.t = 0.11
    assert sync.poll() == [('a', None)]
    assert sync.unmatched == 1


def test_newer_info_releases_unmatched_image_at_once():
    sync = StampSync(timeout_s=10.0, clock=FakeClock())
    sync.add_info(0, 'info0')
    assert sync.add_image(10, 'a') == []
    # The driver skipped the info of stamp 10: a newer one proves it never comes.
    assert sync.add_info(20, 'info20') == [('a', None)]



def test_stale_future_info_does_not_release_later_images():
    sync = StampSync(tolerance_ns=0, timeout_s=10.0, clock=FakeClock())
    # An info of the old time line (bag loop) arrives after the stream restarted at 0.
    sync.add_info(100_000, 'stale')
    for s in range(1, 4):
        assert sync.add_image(s, f'img{s}') == []  # waits for its own info
        assert sync.add_info(s, f'info{s}') == [(f'img{s}', f'info{s}')]
    assert sync.unmatched == 0

def test_pending_bounded():
    sync = StampSync(timeout_s=100.0, max_pending=2, clock=FakeClock())
    sync.add_info(-1, 'old')
    released = []
    for s in range(5):
        released += sync.add_image(s, s)
    assert sync.pending == 2
    assert released == [(0, None), (1, None), (2, None)]


def test_order_kept_when_later_info_arrives_first():
    sync = StampSync(tolerance_ns=0, timeout_s=100.0, clock=FakeClock())
    sync.add_info(0, 'i0')
    sync.add_image(1, 'a')
    sync.add_image(2, 'b')
    # Info for 2 arrives first: 'a' is released without info (an older info never follows).
    assert sync.add_info(2, 'i2') == [('a', None), ('b', 'i2')]


def test_camera_without_info_stops_waiting_after_startup():
    clock = FakeClock()
    sync = StampSync(timeout_s=100.0, startup_s=1.0, clock=clock)
    assert sync.add_image(1, 'a') == []  # the first CameraInfo may still come
    clock.t = 1.0
    assert sync.add_image(2, 'b') == [('a', None), ('b', None)]
    assert sync.add_image(3, 'c') == [('c', None)]  # no waiting any more
