"""``dedup_node``: keep only novel camera frames (thin rclpy shell over DedupComponent).

Subscribes (relative names, remapped in the launch file):
    ``color/image_raw`` (sensor_msgs/Image), and with ``use_depth``:
    ``depth/image_raw`` (aligned depth) and ``color/camera_info``, paired by
    message_filters.ApproximateTimeSynchronizer (sensor-data QoS).
Publishes:
    ``novel/color/image_raw``, ``novel/depth/image_raw``, ``novel/color/camera_info``: the
    original messages of every novel frame, once it is durably stored;
    ``~/statistics`` (std_msgs/String, JSON) every ``statistics_period_s``.

The subscription callback only enqueues into a drop-oldest queue; a worker thread embeds,
decides and hands novel frames to the persister, so the executor never blocks.
"""

from __future__ import annotations

import json
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from cv_autolabel.components.dedup import (
    NOVEL_COLOR, NOVEL_DEPTH, NOVEL_INFO, DedupComponent,
)
from cv_autolabel.core.dedup import DedupSettings, open_deduplicator
from cv_autolabel.nodes.common import (COMMON_PARAMETERS, USE_DEPTH, InboxWorker,
                                       declare_read_only, inbox_size, run_node,
                                       subscribe_frame_sets)
from cv_autolabel.ros.factory import RclpyMessageFactory

_PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "data_dir": ("~/cv_autolabel_data", ParameterDescriptor(
        description="Root directory of stored frames and the Milvus Lite file")),
    "dedup.db_uri": ("", ParameterDescriptor(
        description="Milvus Lite file or http(s):// Milvus server; empty: data_dir/dedup/milvus.db")),
    "dedup.collection": ("frames", ParameterDescriptor(description="Milvus collection")),
    "dedup.embedder": ("auto", ParameterDescriptor(
        description="resnet50 | thumbnail | auto (resnet50 when weights are found)")),
    "dedup.weights": ("imagenet", ParameterDescriptor(
        description="ResNet50 weights: .pth path or 'imagenet' (torchvision cache)")),
    "dedup.precision": ("int8", ParameterDescriptor(description="OpenVINO precision: int8 | fp32")),
    "dedup.threshold": (0.95, ParameterDescriptor(
        description="Cosine similarity at or above which a frame is a duplicate",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)])),
    "queue_size": inbox_size(4),
    **USE_DEPTH,
    **COMMON_PARAMETERS,
}


class DedupNode(Node):
    """The dedup stage on the robot."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("dedup_node", **kwargs)
        params = declare_read_only(self, _PARAMETERS)
        settings = DedupSettings.from_params(params)
        reliable = QoSProfile(depth=10)
        self._pubs = {
            NOVEL_COLOR: self.create_publisher(Image, NOVEL_COLOR, reliable),
            NOVEL_DEPTH: self.create_publisher(Image, NOVEL_DEPTH, reliable),
            NOVEL_INFO: self.create_publisher(CameraInfo, NOVEL_INFO, reliable),
        }
        self._stats_pub = self.create_publisher(String, "~/statistics", reliable)
        self.dedup = open_deduplicator(settings)
        self.component = DedupComponent(self.dedup, publish=self._publish,
                                        factory=RclpyMessageFactory(),
                                        source=self.get_fully_qualified_name())
        self._worker = InboxWorker(int(params["queue_size"]), self.component.on_messages,
                                   "dedup-worker")
        self._subs = subscribe_frame_sets(
            self, "", qos_profile_sensor_data, self._worker.put,
            use_depth=bool(params["use_depth"]),
            queue_size=int(params["camera.sync_queue_size"]),
            slop_s=float(params["camera.sync_slop_s"]))
        self.create_timer(float(params["statistics_period_s"]), self._publish_statistics)
        self.get_logger().info(
            f"dedup: {self.dedup.embedder.name}, threshold {settings.threshold}, "
            f"{len(self.dedup.index)} frames stored in {settings.store_uri}")

    def _publish(self, key: str, msg: Any) -> None:
        self._pubs[key].publish(msg)

    def _publish_statistics(self) -> None:
        stats = self.component.statistics()
        stats["dropped_by_worker_queue"] = self._worker.dropped
        self._stats_pub.publish(String(data=json.dumps(stats)))

    def shutdown(self) -> None:
        """Stop the worker, store what is queued, close the store."""
        self._worker.stop()
        self.dedup.close_all()


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run cv_autolabel dedup_node``."""
    run_node(DedupNode, args)


if __name__ == "__main__":
    main()
