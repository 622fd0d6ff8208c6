"""Active learning over ROS messages: teacher vs student, queue the frames they disagree on.

In: the dedup node's novel frames (colour, optional aligned depth and camera_info). For each
frame the teacher (SAM3, or the synthetic ground truth) and the student (the YOLO runtime;
none before the first model, so every teacher object counts as missed) segment it; frames
whose disagreement score reaches the threshold go to the crash-safe annotation queue with
both predictions and the reasons, the others are counted and skipped. ``flush`` writes the
pending frames as a CVAT-ready COCO zip.

The queue ranks its frames (what it keeps when full, what ``flush --limit N`` takes first)
by their labelling priority (:func:`cv_autolabel.core.selection.labelling_priority`): the
disagreements summed, each weighted by how few labels the student has of its class (the
``train_instances`` of its model's manifest). In the label-efficiency benchmark that labels
a new product's frames first and ends with the best mAP, though it reaches random
selection's final mAP with no fewer labels than ranking by score (``benchmarks/active_learning``).

The same component serves the rclpy node and ``cv-autolabel replay --active-learning``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import FlushResult, flush
from cv_autolabel.core.disagreement import Disagreement, DisagreementConfig, compare
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.selection import class_balance_weights, labelling_priority
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError, QueueError
from cv_autolabel.ros.factory import MessageFactory
from cv_autolabel.ros.frames import frame_from_messages

log = logging.getLogger(__name__)

SegmentFn = Callable[[Frame], Instances]
#: frame -> the student's instances, or None while there is no student model yet.
StudentFn = Callable[[Frame], Instances | None]
#: () -> instances per class the current student was trained on, None if unknown.
CountsFn = Callable[[], Mapping[str, int] | None]


@dataclass
class ActiveLearningStats:
    """Counters the node publishes and the replay summarises."""

    frames: int = 0
    queued: int = 0
    agreed: int = 0
    rejected_by_queue: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    scores: list[float] = field(default_factory=list)
    teacher_ms: list[float] = field(default_factory=list)
    student_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def p50(values: list[float]) -> float:
            return round(float(np.median(values)), 2) if values else 0.0

        return {"frames": self.frames, "queued": self.queued, "agreed": self.agreed,
                "rejected_by_queue": self.rejected_by_queue, "errors": dict(self.errors),
                "reasons": dict(self.reasons),
                "disagreement_rate": round(self.queued / self.frames, 4) if self.frames else 0.0,
                "mean_score": round(float(np.mean(self.scores)), 4) if self.scores else 0.0,
                "teacher_ms_p50": p50(self.teacher_ms), "student_ms_p50": p50(self.student_ms)}


class ActiveLearningComponent:
    """Run teacher and student on a frame and queue it when they disagree.

    Args:
        teacher: frame -> the teacher's instances over ``class_names``.
        student: frame -> the student's instances (None, or an answer of None: no model
            yet, so every teacher object counts as missed).
        queue: the crash-safe annotation queue.
        class_names: the configured classes (COCO category order on flush).
        config: disagreement thresholds.
        source: recorded with every queued frame.
        student_counts: the instances per class the student was trained on, asked per frame
            (a reloaded model brings its own); they weight the queue's ranking toward the
            classes with few labels. None, or an answer of None: every class weighs 1.
    """

    def __init__(self, teacher: SegmentFn, student: StudentFn | None, queue: AnnotationQueue,
                 class_names: tuple[str, ...], *,
                 config: DisagreementConfig = DisagreementConfig(), source: str = "",
                 student_counts: CountsFn | None = None) -> None:
        self.teacher, self.student, self.queue = teacher, student, queue
        self.class_names, self.config, self.source = tuple(class_names), config, source
        self.student_counts = student_counts
        self.stats = ActiveLearningStats()
        self._lock = threading.Lock()

    def on_messages(self, color: Any, depth: Any | None = None,
                    info: Any | None = None) -> Disagreement | None:
        """Judge one novel frame; None if its messages are malformed (counted)."""
        try:
            frame = frame_from_messages(color, depth, info)
        except CvAutolabelError as err:
            self._error(err)
            return None
        return self.process(frame)

    def process(self, frame: Frame) -> Disagreement | None:
        """Judge one frame: teacher, student, compare, queue if they disagree."""
        try:
            t0 = time.perf_counter()
            teacher = self.teacher(frame)
            t1 = time.perf_counter()
            student = self.student(frame) if self.student is not None else None
            if student is None:
                student = Instances.empty(*frame.rgb.shape[:2], self.class_names)
            t2 = time.perf_counter()
            result = compare(student, teacher, self.config)
            entry = (self.queue.enqueue(frame, teacher=result.teacher, student=student,
                                        score=self.priority(result), reasons=_reasons(result),
                                        source=self.source) if result.queued else None)
        except CvAutolabelError as err:
            self._error(err)
            return None
        self._count(result, entry, (t1 - t0) * 1000, (t2 - t1) * 1000)
        return result

    def priority(self, result: Disagreement) -> float:
        """The queue's rank of a judged frame: its class-balanced labelling priority."""
        counts = self.student_counts() if self.student_counts is not None else None
        weights = class_balance_weights(counts, self.class_names) if counts else None
        return labelling_priority(result, weights, self.config)

    def _count(self, result: Disagreement, entry: int | None, teacher_ms: float,
               student_ms: float) -> None:
        with self._lock:
            s = self.stats
            s.frames += 1
            s.queued += entry is not None
            s.agreed += not result.queued
            s.rejected_by_queue += result.queued and entry is None
            for kind, n in result.counts.items():
                s.reasons[kind] = s.reasons.get(kind, 0) + n
            s.scores.append(result.score)
            s.teacher_ms.append(teacher_ms)
            s.student_ms.append(student_ms)
            for values in (s.scores, s.teacher_ms, s.student_ms):
                if len(values) > 4000:
                    del values[:2000]

    def _error(self, err: CvAutolabelError) -> None:
        log.warning("active learning: dropped a frame: %s", err)
        with self._lock:
            name = type(err).__name__
            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1

    def flush(self, out_dir: Path, *, limit: int | None = None, diverse: bool = False,
              review: bool = False) -> FlushResult:
        """Write the pending frames to a new COCO zip in ``out_dir`` (the ``~/flush`` service).

        ``limit`` and ``diverse`` choose the frames as :func:`cv_autolabel.core.coco.flush`
        does: at most ``limit``, the highest priorities, or the best of each visual cluster.

        With ``review``, a side-by-side review image of every exported frame goes to
        ``<zip stem>_review/`` beside the zip (:func:`review_batch`; how many were written
        is ``review_images`` of the result).
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        name = time.strftime("batch_%Y%m%d_%H%M%S")
        out_zip = out_dir / f"{name}.zip"
        n = 1
        while out_zip.exists():
            n += 1
            out_zip = out_dir / f"{name}_{n}.zip"
        result = flush(self.queue, out_zip, class_names=self.class_names, limit=limit,
                       diverse=diverse)
        if review and result.zip_path is not None:
            written = review_batch(self.queue, result, review_dir(result.zip_path))
            result = dataclasses.replace(result, review_images=written)
        return result

    def statistics(self) -> dict[str, Any]:
        """Return counters plus the queue's own statistics."""
        with self._lock:
            stats = self.stats.as_dict()
        queue = self.queue.stats()
        stats["queue_stats"] = (dataclasses.asdict(queue) if dataclasses.is_dataclass(queue)
                                else queue)
        return stats

    def statistics_message(self, factory: MessageFactory) -> Any:
        """Return the statistics as a ``std_msgs/String`` JSON message."""
        return factory.make("std_msgs/msg/String", data=json.dumps(self.statistics(),
                                                                   default=str))


def _reasons(result: Disagreement) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in result.reasons]


def review_dir(zip_path: Path) -> Path:
    """Where the review images of a flushed batch go: ``<zip stem>_review`` beside it."""
    return zip_path.with_name(f"{zip_path.stem}_review")


def write_review_images(queue: AnnotationQueue, out_dir: Path, *,
                        ids: Sequence[int] | None = None, limit: int | None = None) -> int:
    """Write a side-by-side review image (student | teacher + reasons) per entry.

    The entries are ``ids`` (say a flush's ``entry_ids``; exported entries stay readable
    until purged), or else the pending ones, at most ``limit``.

    Returns the number written: ``<out_dir>/<entry id>.jpg``. An entry whose stored image
    cannot be read is logged and skipped; the others are still written.

    Raises:
        OSError: ``out_dir`` cannot be created or written.
    """
    from cv_autolabel.core.fsio import write_image_atomic  # noqa: PLC0415
    from cv_autolabel.core.overlay import review_image  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    if ids is None:
        entries = queue.pending(limit)
    else:
        entries = [e for e in (queue.get(i) for i in ids) if e is not None]
    written = 0
    for entry in entries:
        details = [r.get("detail", str(r)) if isinstance(r, dict) else str(r)
                   for r in entry.reasons]
        try:
            rgb = entry.rgb()
        except QueueError as err:
            log.warning("no review image for entry %d: %s", entry.id, err)
            continue
        image = review_image(rgb, entry.student, entry.teacher, details, entry.score)
        write_image_atomic(out_dir / f"{entry.id:06d}.jpg", image)
        written += 1
    return written


def review_batch(queue: AnnotationQueue, result: FlushResult, out_dir: Path) -> int:
    """Write the review images of a flushed batch to ``out_dir``; return how many.

    The batch is already written and marked exported, so a failure here is logged (and 0
    returned), never raised: the review images are an aid, the zip is the work.
    """
    try:
        return write_review_images(queue, out_dir, ids=result.entry_ids)
    except Exception as err:  # noqa: BLE001 - the batch is written; the aid is optional
        log.warning("%s written, but its review images in %s failed: %s", result.zip_path,
                    out_dir, err)
        return 0
