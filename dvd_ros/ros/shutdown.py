"""Clean process shutdown for the nodes: SIGINT/SIGTERM (once or twice) end spinning quietly."""

import os
import signal
import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from dvd_ros.errors import DvdError


class ShutdownRequest:
    """SIGINT/SIGTERM handler: the first signal asks to stop, later ones are ignored quietly.

    rclpy's own handlers are off (``SignalHandlerOptions.NO``), so the spin loop ends on our
    flag and cleanup runs once, without a KeyboardInterrupt traceback from a second Ctrl-C.
    """

    def __init__(self):
        self.event = threading.Event()
        self.signals = 0

    def install(self):
        """Install the handler for SIGINT and SIGTERM (main thread only)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def ignore_further(self):
        """Ignore SIGINT/SIGTERM from now on (cleanup done; the process is exiting).

        Otherwise a late second Ctrl-C lands after Python has restored the default handlers
        during interpreter teardown and kills the already finished process (status 130).
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    def _handle(self, signum, frame):
        self.signals += 1
        self.event.set()


def spin_until_shutdown(executor, request, duration=None):
    """Spin ``executor`` until a signal, a context shutdown, ``duration``, or a node failure.

    A node fails when :func:`fatal_errors` names it.
    """
    end = None if duration is None else time.monotonic() + duration
    context = executor.context
    while not request.event.is_set() and context.ok():
        if end is not None and time.monotonic() >= end:
            break
        if fatal_errors(executor.get_nodes()):
            break
        # A short timeout keeps signal handling responsive (Python runs handlers between
        # bytecodes, not inside the C wait).
        executor.spin_once(timeout_sec=0.1)


def fatal_errors(nodes):
    """Return the ``fatal_error`` texts of the nodes that cannot work any more.

    E.g. the model failed to load in the worker: the process then ends with status 2.
    """
    return [error for error in (getattr(node, 'fatal_error', None) for node in nodes) if error]


def finish(nodes, executor, context):
    """Stop workers, stop the executor, destroy nodes, shut the context down; never raises.

    The executor goes first: a multi-threaded one joins its pool there, so a callback still
    running on a pool thread finishes with its node intact (destroying the node under it made
    its publish fail inside the task, printed by rclpy at exit as an unretrieved exception).
    """
    clean = True
    for node in nodes:
        try:
            stop = getattr(node, 'stop', None)
            if stop is not None:
                clean &= bool(stop())
        except Exception:  # noqa: BLE001 - shutting down: nothing useful to do
            clean = False
    try:
        executor.shutdown(timeout_sec=0.5)
    except Exception:  # noqa: BLE001, S110
        pass
    for node in nodes:
        try:
            executor.remove_node(node)
            node.destroy_node()
        except Exception:  # noqa: BLE001 - shutting down: nothing useful to do
            clean = False
    if context.ok():
        context.try_shutdown()
    return clean


def exit_now_if_busy(clean, status):
    """Exit at once if a worker is still inside the model (it cannot be interrupted).

    A daemon thread still running torch at interpreter exit can crash the process; leaving
    through ``os._exit`` keeps shutdown within ~2 s and without a traceback.
    """
    if not clean:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def run_node(make_node, name, argv=None):
    """Spin one node in its own context until a signal or shutdown; return the exit status.

    The body of a node's ``main``: a :class:`DvdError` while building the node prints
    ``<name>: error: ...`` and gives status 2.

    :param make_node: callable ``make_node(context=...)`` returning the node.
    :param name: executable name for the error line.
    :param argv: command line with ROS arguments (default ``sys.argv``).
    :return: 0, or 2 after a :class:`DvdError`.
    """
    argv = sys.argv if argv is None else argv
    request = ShutdownRequest().install()
    context = rclpy.context.Context()
    rclpy.init(args=argv, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = SingleThreadedExecutor(context=context)
    status = 0
    clean = True
    try:
        node = make_node(context=context)
        executor.add_node(node)
        spin_until_shutdown(executor, request)
        for error in fatal_errors([node]):
            print(f'{name}: error: {error}', file=sys.stderr)
            status = 2
    except DvdError as exc:
        print(f'{name}: error: {exc}', file=sys.stderr)
        status = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        clean = finish([node] if node is not None else [], executor, context)
    exit_now_if_busy(clean, status)
    request.ignore_further()
    return status
