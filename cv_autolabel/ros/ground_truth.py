"""Decode the synthetic world's ground-truth topics into plain values.

Topics (all stamped with the colour image's stamp, in the colour optical frame):

- ``/sim/ground_truth/instance_labels`` ``sensor_msgs/Image`` mono16: instance id per pixel,
  0 = background (table, bin).
- ``/sim/ground_truth/instances`` ``std_msgs/String``: JSON ``{"stamp_ns", "instances": [{"id",
  "class", "target", "visible_pixels", "visibility", "bbox"}]}`` for every instance in view.
- ``/sim/ground_truth/objects`` ``vision_msgs/Detection3DArray``: every object's true pose
  and size; ``id`` is the instance id, the hypothesis ``class_id`` its class.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import MessageError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.factory import stamp_to_nanoseconds
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.image import image_to_numpy


@dataclass(frozen=True)
class ObjectPose:
    """True pose and size of one object in the camera optical frame (metres)."""

    instance_id: int
    class_name: str
    position: np.ndarray
    orientation: np.ndarray
    size: np.ndarray


@dataclass(frozen=True)
class GroundTruth:
    """The truth of one frame: labels (H, W) uint16, visible instances, all object poses."""

    stamp_ns: int
    labels: np.ndarray
    instances: dict[int, dict[str, Any]]
    objects: dict[int, ObjectPose]

    def mask(self, instance_id: int) -> np.ndarray:
        """Return the (H, W) bool visible mask of one instance."""
        return self.labels == instance_id


def ground_truth_from_messages(labels: Any, instances: Any, objects: Any) -> GroundTruth:
    """Return the GroundTruth of one frame's three truth messages."""
    try:
        doc = json.loads(instances.data)
        visible = {int(r["id"]): r for r in doc["instances"]}
    except (ValueError, KeyError, TypeError) as err:
        raise MessageError(f"malformed ground-truth instances JSON: {err}") from err
    poses = {}
    for det in objects.detections:
        p, q, s = det.bbox.center.position, det.bbox.center.orientation, det.bbox.size
        poses[int(det.id)] = ObjectPose(
            int(det.id), det.results[0].hypothesis.class_id if det.results else "",
            np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]), np.array([s.x, s.y, s.z]))
    return GroundTruth(stamp_to_nanoseconds(labels.header.stamp), image_to_numpy(labels),
                       visible, poses)


def iter_ground_truth(bag: BagReader) -> Iterator[GroundTruth]:
    """Yield the GroundTruth of every frame of a synthetic bag, in recorded order."""
    pending: dict[int, dict[str, Any]] = {}
    wanted = (T.GT_LABELS, T.GT_INSTANCES, T.GT_OBJECTS)
    for m in bag.messages(wanted):
        stamp = _stamp_ns(m.msg)
        parts = pending.setdefault(stamp, {})
        parts[m.topic] = m.msg
        if len(parts) == len(wanted):
            del pending[stamp]
            yield ground_truth_from_messages(*(parts[t] for t in wanted))


def iter_frames_with_truth(bag: BagReader) -> Iterator[tuple[Frame, GroundTruth]]:
    """Yield every synchronised frame of a synthetic bag with its ground truth, in order.

    Frames without recorded truth are skipped; the truth is read first and held until the
    frames are done.
    """
    truth = {gt.stamp_ns: gt for gt in iter_ground_truth(bag)}
    for frame in iter_frames(bag):
        gt = truth.get(frame.stamp_ns)
        if gt is not None:
            yield frame, gt


def _stamp_ns(msg: Any) -> int:
    if hasattr(msg, "header"):
        return stamp_to_nanoseconds(msg.header.stamp)
    return int(json.loads(msg.data)["stamp_ns"])  # std_msgs/String: the JSON has the stamp


@dataclass(frozen=True)
class _PackedTruth:
    """One frame's truth as the segmenter keeps it: the label image zlib-compressed."""

    labels: bytes
    shape: tuple[int, ...]
    dtype: str
    classes: dict[int, str]

    @classmethod
    def of(cls, gt: GroundTruth) -> _PackedTruth:
        labels = np.ascontiguousarray(gt.labels)
        return cls(zlib.compress(labels.tobytes(), 1), labels.shape, labels.dtype.str,
                   {i: str(r["class"]) for i, r in gt.instances.items()})

    def unpack(self) -> np.ndarray:
        return np.frombuffer(zlib.decompress(self.labels), self.dtype).reshape(self.shape)


class GroundTruthSegmenter:
    """Instances straight from a synthetic bag's truth, looked up by the frame's stamp.

    Lets the detector (fusion, outputs, picking) and the active-learning loop run without a
    trained model. Only target classes are returned (distractors are background to a picker
    trained on the targets) unless ``class_names`` says otherwise. Label images are kept
    compressed (a 640x480 frame of a few objects takes ~10 kB instead of 600 kB), so a long
    recording's truth fits in memory.
    """

    name = "groundtruth"

    def __init__(self, truths: Iterable[GroundTruth],
                 class_names: Sequence[str] | None = None, *, keep: int | None = None) -> None:
        self._keep = keep
        self._by_stamp: dict[int, _PackedTruth] = {}
        targets: set[str] = set()
        for gt in truths:
            self._by_stamp[gt.stamp_ns] = _PackedTruth.of(gt)
            targets |= {str(r["class"]) for r in gt.instances.values() if r.get("target", True)}
        self.class_names = tuple(sorted(targets) if class_names is None else class_names)

    def __len__(self) -> int:
        return len(self._by_stamp)

    @property
    def stored_bytes(self) -> int:
        """Bytes of label images held (compressed)."""
        return sum(len(p.labels) for p in self._by_stamp.values())

    def add(self, gt: GroundTruth) -> None:
        """Remember one frame's truth (a live node feeds it from the truth topics)."""
        self._by_stamp[gt.stamp_ns] = _PackedTruth.of(gt)
        if self._keep is not None:
            while len(self._by_stamp) > self._keep:  # dicts keep insertion order
                del self._by_stamp[next(iter(self._by_stamp))]

    def instances(self, stamp_ns: int) -> Instances:
        """Return the true instances of the frame stamped ``stamp_ns``."""
        packed = self._by_stamp.get(stamp_ns)
        if packed is None:
            raise MessageError(f"no ground truth recorded for stamp {stamp_ns}")
        return Instances.from_label_image(packed.unpack(), packed.classes, self.class_names)

    def __call__(self, frame: Frame) -> Instances:
        return self.instances(frame.stamp_ns)

    @classmethod
    def from_bag(cls, bag: BagReader, class_names: Sequence[str] | None = None
                 ) -> GroundTruthSegmenter:
        """Read every frame's truth from a synthetic bag (raises BagError if it has none)."""
        bag.check_topics([T.GT_LABELS, T.GT_INSTANCES, T.GT_OBJECTS])
        return cls(iter_ground_truth(bag), class_names)
