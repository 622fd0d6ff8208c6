"""``detector_node``: OpenVINO YOLO segmentation fused with depth into graspable 3D objects.

Subscribes (relative names, remapped in the launch file; sensor-data QoS, paired by
message_filters.ApproximateTimeSynchronizer): ``color/image_raw``, ``depth/image_raw``
(aligned to colour), ``color/camera_info``.
Publishes: ``detections_3d`` (vision_msgs/Detection3DArray), ``detections_2d``
(vision_msgs/Detection2DArray), ``markers`` (visualization_msgs/MarkerArray),
``debug_image`` (sensor_msgs/Image), ``~/statistics`` (std_msgs/String JSON).
Services: ``~/reload`` (std_srvs/Trigger): load the model at ``model_path`` again.

Hot reload: ``model_path`` is watched (a symlink re-pointed by the export step, or a
directory whose manifest changes); a new model is verified against its checksum manifest and
loaded beside the running one; on failure the old model keeps running.
The callback keeps only the newest frame set (a one-slot drop-oldest queue); a worker
thread runs inference so the executor never blocks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger
from vision_msgs.msg import Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from cv_autolabel.components.detector import (
    DEBUG_IMAGE, DETECTIONS_2D, DETECTIONS_3D, MARKERS, DetectorComponent,
)
from cv_autolabel.core.model_slot import DEFAULT_MODEL_LINK, ModelSlot
from cv_autolabel.core.segmenters import create_segmenter
from cv_autolabel.nodes.common import (COMMON_PARAMETERS, InboxWorker, declare_read_only,
                                       run_node, slow_callbacks, subscribe_frame_sets)
from cv_autolabel.ros.factory import RclpyMessageFactory

_UNIT = [FloatingPointRange(from_value=0.0, to_value=1.0, step=0.0)]
_PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "model_path": (DEFAULT_MODEL_LINK, ParameterDescriptor(
        description="OpenVINO segmentation export directory, or a symlink to one")),
    "require_manifest": (True, ParameterDescriptor(
        description="Refuse models whose manifest.json checksums do not match")),
    "watch_period_s": (2.0, ParameterDescriptor(
        description="How often model_path is checked for a new model (0.0 = never)",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)])),
    "conf": (0.25, ParameterDescriptor(description="Minimum score", floating_point_range=_UNIT)),
    "iou": (0.7, ParameterDescriptor(description="NMS IoU", floating_point_range=_UNIT)),
    "debug_image": (True, ParameterDescriptor(description="Publish the overlay image")),
    **COMMON_PARAMETERS,
}
_OUTPUTS = {DETECTIONS_3D: Detection3DArray, DETECTIONS_2D: Detection2DArray,
            MARKERS: MarkerArray, DEBUG_IMAGE: Image}


class DetectorNode(Node):
    """The picking detector on the robot."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("detector_node", **kwargs)
        p = declare_read_only(self, _PARAMETERS)
        conf, iou = float(p["conf"]), float(p["iou"])
        self.slot = ModelSlot(
            Path(str(p["model_path"])).expanduser(),
            lambda d: create_segmenter("yolo", model_dir=d, conf=conf, iou=iou),
            require_manifest=bool(p["require_manifest"]))
        self.component = DetectorComponent(lambda frame: self.slot.current.segment(frame.rgb),
                                           RclpyMessageFactory(),
                                           debug_image=bool(p["debug_image"]))
        reliable = QoSProfile(depth=10)
        self._pubs = {k: self.create_publisher(t, k, reliable) for k, t in _OUTPUTS.items()}
        self._stats_pub = self.create_publisher(String, "~/statistics", reliable)
        # Loading a model takes a second or more: beside the camera callbacks, not before them.
        reloads = slow_callbacks()
        self.create_service(Trigger, "~/reload", self._on_reload, callback_group=reloads)
        self._worker = InboxWorker(1, self._process, "detector")  # always the newest set
        self._subs = subscribe_frame_sets(  # fusion needs depth: always all three
            self, "", qos_profile_sensor_data, self._worker.put, use_depth=True,
            queue_size=int(p["camera.sync_queue_size"]), slop_s=float(p["camera.sync_slop_s"]))
        if float(p["watch_period_s"]) > 0:
            self.create_timer(float(p["watch_period_s"]), self._watch, callback_group=reloads)
        self.create_timer(float(p["statistics_period_s"]), self._publish_statistics)
        self.get_logger().info(f"detector: model {self.slot.model_dir}")

    def _process(self, color: Image, depth: Image, info: CameraInfo) -> None:
        outputs = self.component.on_messages(color, depth, info)
        for key, msg in (outputs or {}).items():
            self._pubs[key].publish(msg)

    def _on_reload(self, request: Trigger.Request, response: Trigger.Response
                   ) -> Trigger.Response:
        result = self.slot.reload()
        response.success, response.message = result.success, result.message
        return response

    def _watch(self) -> None:
        result = self.slot.poll()
        if result is not None:
            log = self.get_logger().info if result.success else self.get_logger().error
            log(f"model watch: {result.message}")

    def _publish_statistics(self) -> None:
        stats = self.component.stats.as_dict()
        stats.update(dropped_sets=self._worker.dropped, model=str(self.slot.model_dir),
                     reloads=self.slot.reloads, failed_reloads=self.slot.failed_reloads)
        self._stats_pub.publish(String(data=json.dumps(stats)))

    def shutdown(self) -> None:
        """Stop the worker thread."""
        self._worker.stop()


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run cv_autolabel detector_node``."""
    run_node(DetectorNode, args)


if __name__ == "__main__":
    main()
