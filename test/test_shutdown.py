"""finish(): callbacks still running on executor threads end before their nodes are destroyed."""

import threading

import pytest

pytest.importorskip('rclpy')
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from ros_harness import make_context, wait_for  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from dvd_ros.ros.shutdown import finish  # noqa: E402


def test_finish_lets_a_running_callback_publish_before_destroying_its_node():
    # The demo's recorder spins a MultiThreadedExecutor: at stop a timer callback may still be
    # on a pool thread. Destroying its node under it made the publish raise inside the task,
    # which rclpy printed at exit as "exception was never retrieved".
    context = make_context()
    node = Node('finish_probe', context=context)
    publisher = node.create_publisher(String, 'finish_probe', 1)
    started, release, outcome = threading.Event(), threading.Event(), []

    def tick():
        timer.cancel()
        started.set()
        release.wait(5.0)
        try:
            publisher.publish(String(data='last'))
            outcome.append('published')
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcome.append(repr(error))

    timer = node.create_timer(0.01, tick)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    while not started.is_set():
        executor.spin_once(timeout_sec=0.05)
    threading.Timer(0.3, release.set).start()
    assert finish([node], executor, context) is True
    assert wait_for(lambda: outcome, timeout=5.0)
    assert outcome == ['published']
    assert not context.ok()
