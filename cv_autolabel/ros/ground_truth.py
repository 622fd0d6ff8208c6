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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cv_autolabel.errors import MessageError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.factory import stamp_to_nanoseconds
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


def _stamp_ns(msg: Any) -> int:
    if hasattr(msg, "header"):
        return stamp_to_nanoseconds(msg.header.stamp)
    return int(json.loads(msg.data)["stamp_ns"])  # std_msgs/String: the JSON has the stamp
