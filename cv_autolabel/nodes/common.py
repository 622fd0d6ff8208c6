"""What every cv_autolabel node shares: the worker behind a drop-oldest inbox, and main()."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from cv_autolabel.core.workqueue import DropOldestQueue


class InboxWorker:
    """One thread handling items from a bounded drop-oldest inbox.

    Subscription callbacks call :meth:`put` (never blocks); the thread calls
    ``handler(*item)`` for each item, so slow inference never stalls the executor.
    """

    def __init__(self, maxsize: int, handler: Callable[..., Any], name: str) -> None:
        self.inbox: DropOldestQueue[tuple] = DropOldestQueue(maxsize)
        self._handler = handler
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Items evicted unprocessed because the worker was behind."""
        return self.inbox.dropped

    def put(self, *item: Any) -> None:
        """Hand an item to the worker (drops the oldest waiting one when full)."""
        self.inbox.put(item)

    def _run(self) -> None:
        while self._running:
            item = self.inbox.get(timeout=0.5)
            if item is not None:
                self._handler(*item)

    def stop(self, timeout: float = 30.0) -> None:
        """Let the current item finish, then stop the thread."""
        self._running = False
        self.inbox.close()
        self._thread.join(timeout=timeout)


def slow_callbacks() -> MutuallyExclusiveCallbackGroup:
    """A callback group for a node's slow services and timers (a flush, a model reload).

    :func:`run_node` spins two threads, so these run beside the default group, whose
    subscription callbacks only hand messages to the worker and must not wait seconds behind
    a service call (sensor-data QoS drops what is not taken in time).
    """
    return MutuallyExclusiveCallbackGroup()


def run_node(make_node: Callable[[], Any], args: list[str] | None = None) -> None:
    """Spin a node until shutdown; always stop it, destroy it and shut rclpy down.

    A two-thread executor: the node's default callback group (subscriptions, statistics)
    stays serialised as under ``rclpy.spin``, and its :func:`slow_callbacks` group runs
    beside it. The form that works on Humble and Jazzy alike (``try_shutdown`` after Ctrl-C,
    when the context may already be shut down). ``make_node()`` must return a node with
    ``shutdown()``.
    """
    rclpy.init(args=args)
    node = None
    executor = MultiThreadedExecutor(num_threads=2)
    try:
        node = make_node()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
