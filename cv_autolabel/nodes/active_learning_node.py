"""``active_learning_node``: queue the novel frames where the student and the teacher disagree.

Subscribes (relative; the dedup node in the same namespace publishes them):
``novel/color/image_raw``, ``novel/depth/image_raw``, ``novel/color/camera_info``, paired
as the dedup node paired them (ApproximateTimeSynchronizer with ``camera.sync_slop_s``: the
dedup node republishes each set with its original stamps; reliable QoS; colour only with
``use_depth: false``, which the dedup node reads too). With ``teacher: groundtruth`` also
the synthetic bag's ``/sim/ground_truth/instance_labels`` and ``/instances``.
Publishes ``~/statistics`` (std_msgs/String JSON). Serves ``~/flush`` (std_srvs/Trigger):
write the pending frames (at most ``flush_limit``, the best of each look-alike cluster with
``flush_diverse``) to a CVAT-ready COCO zip in ``<data_dir>/exports`` (and, with
``review_images``, a side-by-side review image per frame in ``<batch>_review/``).

The student follows ``student_model`` (by default the detector's model link): it is checked
every ``watch_period_s`` and a newly published model is loaded beside the running one, as the
detector does; before the first model there is no student and every teacher object counts as
missed. The queue ranks frames by labelling priority, weighted toward the classes the
student's model has few training labels of (its manifest's ``train_instances``).

The teacher is slow on a CPU: callbacks only enqueue into a bounded drop-oldest queue
(``queue_size``) and one worker thread runs teacher, student and the queue, so the executor
never blocks and memory never grows; dropped frames are counted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from cv_autolabel.components.active_learning import ActiveLearningComponent, review_dir
from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.disagreement import DisagreementConfig
from cv_autolabel.core.model_slot import DEFAULT_MODEL_LINK, ModelSlot
from cv_autolabel.core.teachers.sam3 import default_prompt
from cv_autolabel.nodes.common import (COMMON_PARAMETERS, USE_DEPTH, InboxWorker,
                                       declare_read_only, inbox_size, run_node, slow_callbacks,
                                       subscribe_frame_sets)
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.ground_truth import GroundTruth, GroundTruthSegmenter

_P = ParameterDescriptor
_PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "data_dir": ("~/cv_autolabel_data", _P(description="Root of queue/ and exports/")),
    "classes": (["red_can", "blue_can"], _P(description="Class names, in category order")),
    "teacher": ("sam3", _P(description="sam3 | groundtruth (synthetic bags)")),
    "teacher_weights": ("~/cv_autolabel_data/models/sam3.pt", _P(description="sam3.pt")),
    "student_model": (DEFAULT_MODEL_LINK, _P(
        description="OpenVINO export of the student; missing = no student yet")),
    "watch_period_s": (2.0, _P(
        description="How often student_model is checked for a new model (0.0 = never)",
        floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0, step=0.0)])),
    "disagreement.threshold": (0.25, _P(description="Queue a frame at or above this score",
                               floating_point_range=[FloatingPointRange(
                                   from_value=0.0, to_value=1.0, step=0.0)])),
    "max_entries": (5000, _P(description="Queue bound (lowest-priority pending entry dropped)",
                             integer_range=[IntegerRange(from_value=1, to_value=10**7,
                                                         step=1)])),
    "queue_size": inbox_size(8),
    "review_images": (True, _P(description="Write student|teacher review images of each "
                                           "flushed frame to exports/<batch>_review/")),
    "flush_limit": (0, _P(description="Frames per ~/flush batch, highest priority first; 0 = all "
                                      "pending", integer_range=[IntegerRange(
                                          from_value=0, to_value=10**7, step=1)])),
    "flush_diverse": (False, _P(description="With flush_limit: the best frame of each cluster "
                                           "of similar-looking frames, not the top priorities")),
    **USE_DEPTH,
    **COMMON_PARAMETERS,
}


class ActiveLearningNode(Node):
    """Teacher vs student on novel frames; flush to CVAT on request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("active_learning_node", **kwargs)
        p = declare_read_only(self, _PARAMETERS)
        classes = tuple(p["classes"])
        declare_read_only(self, {  # one prompt list per configured class
            f"prompts.{c}": ([default_prompt(c)], _P(description=f"SAM3 text prompts for {c}"))
            for c in classes})
        data = Path(str(p["data_dir"])).expanduser()
        self.export_dir = data / "exports"
        self.review = bool(p["review_images"])
        self.flush_limit = int(p["flush_limit"]) or None
        self.flush_diverse = bool(p["flush_diverse"])
        if self.flush_diverse and self.flush_limit is None:
            self.get_logger().warning("flush_diverse needs flush_limit > 0 (the batch size it "
                                      "chooses among the queue); flushing everything pending")
        self.queue = AnnotationQueue(data / "queue", max_entries=int(p["max_entries"]))
        from cv_autolabel.core.segmenters import create_segmenter  # noqa: PLC0415

        # Optional: before the first published model there is no student (None per frame).
        self.student_slot = ModelSlot(Path(str(p["student_model"])).expanduser(),
                                 lambda d: create_segmenter("yolo", model_dir=d), optional=True)
        if self.student_slot.current is None:
            self.get_logger().warning(f"no student model at {self.student_slot.path} yet: every "
                                      "teacher object counts as missed until one is published")
        self.component = ActiveLearningComponent(
            self._teacher(str(p["teacher"]), Path(str(p["teacher_weights"])).expanduser(),
                          classes),
            self._student_segment, self.queue, classes,
            config=DisagreementConfig(threshold=float(p["disagreement.threshold"])),
            source=self.get_fully_qualified_name(), student_counts=self._student_counts)
        self._worker = InboxWorker(int(p["queue_size"]), self.component.on_messages,
                                   "active-learning")
        qos = QoSProfile(depth=10)
        self._subs = subscribe_frame_sets(  # what the dedup node republishes, paired alike
            self, "novel/", qos, self._worker.put, use_depth=bool(p["use_depth"]),
            queue_size=int(p["camera.sync_queue_size"]), slop_s=float(p["camera.sync_slop_s"]))
        self._stats_pub = self.create_publisher(String, "~/statistics", qos)
        # A flush reads (and with flush_diverse embeds) every pending frame: seconds.
        slow = slow_callbacks()
        self.create_service(Trigger, "~/flush", self._on_flush, callback_group=slow)
        if float(p["watch_period_s"]) > 0:  # loading a model takes a second or two
            self.create_timer(float(p["watch_period_s"]), self._watch, callback_group=slow)
        self.create_timer(float(p["statistics_period_s"]), self._publish_statistics)

    def _teacher(self, kind: str, weights: Path, classes: tuple[str, ...]) -> Any:
        if kind == "groundtruth":
            # Truth arrives as a label image and a JSON string stamped alike; pair them here.
            truth = GroundTruthSegmenter([], classes, keep=300)
            self._truth_labels: dict[int, Any] = {}
            self.create_subscription(Image, T.GT_LABELS, self._on_truth_labels, 50)
            self.create_subscription(String, T.GT_INSTANCES,
                                     lambda m: self._add_truth(truth, m), 50)
            return truth
        from cv_autolabel.core.teachers.sam3 import Sam3Teacher  # noqa: PLC0415

        prompts = {c: list(self.get_parameter(f"prompts.{c}").value) for c in classes}
        return Sam3Teacher(weights, prompts)

    def _on_truth_labels(self, msg: Image) -> None:
        self._truth_labels[msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec] = msg

    def _add_truth(self, truth: GroundTruthSegmenter, msg: String) -> None:
        from cv_autolabel.ros.image import image_to_numpy  # noqa: PLC0415

        doc = json.loads(msg.data)
        labels = self._truth_labels.pop(int(doc["stamp_ns"]), None)
        if labels is not None:
            visible = {int(r["id"]): r for r in doc["instances"]}
            truth.add(GroundTruth(int(doc["stamp_ns"]), image_to_numpy(labels), visible, {}))
        while len(self._truth_labels) > 100:
            del self._truth_labels[next(iter(self._truth_labels))]

    def _student_segment(self, frame: Any) -> Any:
        model = self.student_slot.current  # read once: a reload may swap it meanwhile
        return model.segment(frame.rgb) if model is not None else None

    def _student_counts(self) -> Any:
        """Instances per class the student was trained on (its manifest), None without one."""
        model = self.student_slot.current
        return model.train_instances if model is not None else None

    def _watch(self) -> None:
        result = self.student_slot.poll()
        if result is not None:
            log = self.get_logger().info if result.success else self.get_logger().error
            log(f"student model watch: {result.message}")

    def _on_flush(self, request: Trigger.Request, response: Trigger.Response
                  ) -> Trigger.Response:
        try:
            result = self.component.flush(self.export_dir, limit=self.flush_limit,
                                          diverse=self.flush_diverse, review=self.review)
        except Exception as err:  # noqa: BLE001 - a failed flush must answer, not crash
            response.success, response.message = False, f"flush failed: {err}"
            return response
        response.success = True
        response.message = (f"wrote {result.images} frames, {result.annotations} annotations "
                            f"({result.class_counts()}) to {result.zip_path}"
                            if result.images else "nothing pending")
        if result.images and self.review:
            response.message += (f"; {result.review_images} review images in "
                                 f"{review_dir(result.zip_path)}")
        return response

    def _publish_statistics(self) -> None:
        stats = self.component.statistics()
        stats.update(dropped_by_worker_queue=self._worker.dropped,
                     student_model=self.student_slot.model_dir, reloads=self.student_slot.reloads,
                     failed_reloads=self.student_slot.failed_reloads)
        self._stats_pub.publish(String(data=json.dumps(stats, default=str)))

    def shutdown(self) -> None:
        """Stop the worker and close the queue."""
        self._worker.stop()
        self.queue.close()


def main(args: list[str] | None = None) -> None:
    """Entry point of ``ros2 run cv_autolabel active_learning_node``."""
    run_node(ActiveLearningNode, args)


if __name__ == "__main__":
    main()
