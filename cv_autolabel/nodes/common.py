"""What every cv_autolabel node shares: its common parameters and how they are declared, the
worker behind a drop-oldest inbox, and main()."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import message_filters
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from sensor_msgs.msg import CameraInfo, Image

from cv_autolabel.core.workqueue import DropOldestQueue


#: name -> (default, descriptor) of a node parameter.
Parameters = Mapping[str, tuple[Any, ParameterDescriptor]]


def inbox_size(default: int) -> tuple[int, ParameterDescriptor]:
    """The ``queue_size`` parameter: frame sets waiting for a node's worker."""
    return default, ParameterDescriptor(
        description="Frame sets waiting for the worker; the oldest is dropped beyond this",
        integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)])


#: What every node reads alike: how its camera inputs are paired, how often it reports.
COMMON_PARAMETERS: Parameters = {
    "camera.sync_queue_size": (10, ParameterDescriptor(
        description="ApproximateTimeSynchronizer queue size",
        integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)])),
    "camera.sync_slop_s": (0.05, ParameterDescriptor(
        description="ApproximateTimeSynchronizer slop (s): colour, depth and camera_info "
                    "stamped at most this far apart are one frame set",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=10.0, step=0.0)])),
    "statistics_period_s": (5.0, ParameterDescriptor(
        description="Period of ~/statistics (s)",
        floating_point_range=[FloatingPointRange(from_value=0.1, to_value=3600.0, step=0.0)])),
}


#: Whether a node takes depth and camera_info besides colour (under ``/**``: dedup and active
#: learning must agree, since the latter reads what the former republishes).
USE_DEPTH: Parameters = {"use_depth": (True, ParameterDescriptor(
    description="Pair aligned depth and camera_info with colour; false: colour only"))}


def subscribe_frame_sets(node: Any, prefix: str, qos: Any, handler: Callable[..., None], *,
                         use_depth: bool, queue_size: int, slop_s: float) -> list[Any]:
    """Subscribe ``node`` to ``<prefix>color/image_raw`` and, with ``use_depth``,
    ``<prefix>depth/image_raw`` and ``<prefix>color/camera_info`` paired by an
    ApproximateTimeSynchronizer; ``handler(color, depth, info)`` gets each set (depth and info
    None without depth). Returns what the node must keep referenced.
    """
    if not use_depth:
        return [node.create_subscription(Image, f"{prefix}color/image_raw",
                                         lambda msg: handler(msg, None, None), qos)]
    subs = [message_filters.Subscriber(node, Image, f"{prefix}color/image_raw", qos_profile=qos),
            message_filters.Subscriber(node, Image, f"{prefix}depth/image_raw", qos_profile=qos),
            message_filters.Subscriber(node, CameraInfo, f"{prefix}color/camera_info",
                                       qos_profile=qos)]
    sync = message_filters.ApproximateTimeSynchronizer(subs, queue_size, slop_s)
    sync.registerCallback(handler)
    return [*subs, sync]


def declare_read_only(node: Any, parameters: Parameters) -> dict[str, Any]:
    """Declare ``parameters`` on ``node`` as read-only and return their values.

    The nodes read their parameters once, at start-up; read-only makes ``ros2 param set``
    refuse a change it would otherwise accept and ignore. The values still come from the
    parameter file and launch overrides.
    """
    for name, (default, descriptor) in parameters.items():
        descriptor.read_only = True
        node.declare_parameter(name, default, descriptor)
    return {name: node.get_parameter(name).value for name in parameters}


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
