"""``cv-autolabel replay``: run the robot's components over a bag, write their outputs to a bag.

The detector component is fed the recorded colour/depth/camera_info sets exactly as the node
would receive them (ApproximateTimeSynchronizer semantics, recorded order) and every message
it publishes is written, under ``--namespace``, at the log time its input set completed. With
``--segmenter gt`` the synthetic bag's ground-truth masks stand in for a model, to check depth
fusion and picking without a trained network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cv_autolabel.components.detector import OUTPUT_TYPES, DetectorComponent
from cv_autolabel.config import NAMESPACE
from cv_autolabel.core.manifest import read_manifest
from cv_autolabel.core.model_slot import ModelSlot
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader, BagWriter
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.frames import iter_message_sets
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter
from cv_autolabel.ros.topics import CameraTopics

SEGMENTERS = ("yolo", "gt")


def make_segment_fn(kind: str, *, model: Path | None, bag: Path,
                    conf: float = 0.25) -> tuple[Callable, str]:
    """Return (frame -> Instances, description) for ``--segmenter``."""
    if kind == "gt":
        with BagReader(bag) as reader:
            truth = GroundTruthSegmenter.from_bag(reader)
        return truth, f"ground truth ({', '.join(truth.class_names)})"
    if kind != "yolo":
        raise CvAutolabelError(f"unknown segmenter {kind!r}; use one of {SEGMENTERS}")
    if model is None:
        raise CvAutolabelError("--model DIR is required with --segmenter yolo (an OpenVINO "
                               "export directory), or use --segmenter gt on a synthetic bag")
    slot = yolo_slot(model, conf=conf)
    return (lambda frame: slot.current.segment(frame.rgb)), f"model {slot.model_dir}"


def yolo_slot(model: Path, *, conf: float = 0.25) -> ModelSlot:
    """The YOLO runtime on ``model`` (an OpenVINO export directory; no manifest needed)."""
    from cv_autolabel.core.segmenters import create_segmenter  # noqa: PLC0415

    return ModelSlot(model, lambda d: create_segmenter("yolo", model_dir=d, conf=conf),
                     require_manifest=False)


def replay(bag_path: Path, out: Path, *, segmenter: str = "yolo", model: Path | None = None,
           topics: CameraTopics = CameraTopics(), slop_s: float = 0.05,
           namespace: str = "/" + NAMESPACE, storage: str = "mcap", overwrite: bool = False,
           debug_image: bool = True, progress: Callable[[int], None] | None = None,
           warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the detector over ``bag_path`` and write its outputs to the new bag ``out``."""
    if topics.depth is None or topics.info is None:
        raise CvAutolabelError("the detector needs depth and camera_info topics")
    segment, what = make_segment_fn(segmenter, model=model, bag=bag_path)
    factory = RosbagsMessageFactory()
    component = DetectorComponent(segment, factory, debug_image=debug_image)
    ns = "/" + namespace.strip("/")
    started = time.perf_counter()
    with BagReader(bag_path) as reader, BagWriter(out, storage=storage,
                                                  overwrite=overwrite) as writer:
        for log_time, color, depth, info in iter_message_sets(reader, topics, slop_s=slop_s):
            outputs = component.on_messages(color, depth, info)
            for key, msg in (outputs or {}).items():
                writer.write(f"{ns}/{key}", OUTPUT_TYPES[key], msg, log_time)
            if progress:
                progress(1)
        damage, counts = reader.damage, dict(writer.counts)
    if damage and warn:
        warn(f"bag {bag_path} is damaged; replayed the readable prefix: {damage}")
    stats = component.stats.as_dict()
    return {"bag": str(bag_path), "out": str(out), "segmenter": what, **stats,
            "messages": counts, "seconds": round(time.perf_counter() - started, 2)}


def replay_active_learning(bag_path: Path, queue_dir: Path, *, teacher: str = "groundtruth",
                           teacher_weights: Path | None = None,
                           prompts: dict[str, list[str]] | None = None,
                           model: Path | None = None, topics: CameraTopics = CameraTopics(),
                           slop_s: float = 0.05, dedup_threshold: float = 0.95,
                           workspace: Path | None = None,
                           progress: Callable[[int], None] | None = None,
                           warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run dedup -> active learning over a bag, queueing disagreements in ``queue_dir``.

    With ``workspace``, the replay's disagreement rate is recorded for ``cv-autolabel status``.

    The dedup store lives in ``queue_dir/dedup`` so replaying the same bag again finds every
    frame already seen. Without ``model`` there is no student yet: every teacher object
    counts as missed, so every novel frame with objects is queued.
    """
    from cv_autolabel.components.active_learning import ActiveLearningComponent  # noqa: PLC0415
    from cv_autolabel.core.annotation_queue import AnnotationQueue  # noqa: PLC0415
    from cv_autolabel.core.dedup import DedupSettings, open_deduplicator  # noqa: PLC0415
    from cv_autolabel.ros.frames import FrameStats, iter_frames  # noqa: PLC0415

    from cv_autolabel.tools.teachers import make_teacher  # noqa: PLC0415

    teach, class_names = make_teacher(teacher, bag_path, weights=teacher_weights,
                                      prompts=prompts)
    slot = yolo_slot(model) if model else None
    started, stats = time.perf_counter(), FrameStats()
    dedup = open_deduplicator(DedupSettings(data_dir=queue_dir, threshold=dedup_threshold))
    try:
        with AnnotationQueue(queue_dir) as queue, BagReader(bag_path) as reader:
            al = ActiveLearningComponent(
                teach, (lambda frame: slot.current.segment(frame.rgb)) if slot else None,
                queue, class_names, source=str(bag_path),
                student_counts=(lambda: slot.current.train_instances) if slot else None)
            for frame in iter_frames(reader, topics, slop_s=slop_s, stats=stats):
                if dedup.process(frame, source=str(bag_path)).novel:
                    al.process(frame)
                if progress:
                    progress(1)
            damage, summary = reader.damage, al.statistics()
    finally:
        dedup.close_all()
    if damage and warn:
        warn(f"bag {bag_path} is damaged; replayed the readable prefix: {damage}")
    # The weights the student was exported from: a published copy still names its run.
    weights = (read_manifest(model) or {}).get("source_weights") if model else None
    result = {"bag": str(bag_path), "queue": str(queue_dir), "teacher": teacher,
              "student": str(model.resolve()) if model else None,
              "student_weights": weights, "frames_in": stats.frames,
              "novel": dedup.stats.novel, **summary,
              "seconds": round(time.perf_counter() - started, 2)}
    if workspace is not None:  # the disagreement rate `cv-autolabel status` reports
        from cv_autolabel.tools.status import record_replay  # noqa: PLC0415

        record_replay(workspace, result)
    return result


