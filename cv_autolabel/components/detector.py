"""The detector over ROS messages: segment, fuse with depth, publish what a picker needs.

In: one synchronised set of colour, aligned depth and camera_info messages.
Out (all stamped like the colour image, in its optical frame):

- ``detections_3d`` ``vision_msgs/Detection3DArray``: valid objects, class name as hypothesis
  ``class_id``, score, object centre pose and box size; ``id`` = instance index.
- ``detections_2d`` ``vision_msgs/Detection2DArray``: every instance's 2D box.
- ``markers`` ``visualization_msgs/MarkerArray``: a box, a grasp point and a label per valid
  object for RViz (after a DELETEALL, so stale markers vanish).
- ``debug_image`` ``sensor_msgs/Image`` rgb8: masks, labels, depth and flags drawn.

The same component runs in the rclpy node and in ``cv-autolabel replay``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cv_autolabel.core.fusion import FusionConfig, Object3D, fuse
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.overlay import class_color, draw_instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError, MessageError
from cv_autolabel.ros.builders import detection3d, header, pose
from cv_autolabel.ros.factory import MessageFactory
from cv_autolabel.ros.frames import frame_from_messages
from cv_autolabel.ros.image import numpy_to_image

DETECTIONS_3D = "detections_3d"
DETECTIONS_2D = "detections_2d"
MARKERS = "markers"
DEBUG_IMAGE = "debug_image"
OUTPUT_TYPES = {
    DETECTIONS_3D: "vision_msgs/msg/Detection3DArray",
    DETECTIONS_2D: "vision_msgs/msg/Detection2DArray",
    MARKERS: "visualization_msgs/msg/MarkerArray",
    DEBUG_IMAGE: "sensor_msgs/msg/Image",
}

#: Turns a frame into instances: a model (via ModelSlot) or the synthetic ground truth.
SegmentFn = Callable[[Frame], Instances]

_MARKER_CUBE, _MARKER_SPHERE, _MARKER_TEXT = 1, 2, 9
_ACTION_ADD, _ACTION_DELETEALL = 0, 3


@dataclass
class DetectorStats:
    """Counters and latencies the node reports."""

    sets: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    invalid_objects: int = 0
    latency_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.array(self.latency_ms[-1000:] or [0.0])
        return {"sets": self.sets, "rejected": dict(self.rejected), "objects": self.objects,
                "invalid_objects": self.invalid_objects,
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
                "latency_ms_p99": round(float(np.percentile(lat, 99)), 2)}


class DetectorComponent:
    """Segment + fuse one message set and build the output messages.

    Args:
        segment: frame -> instances (``ModelSlot`` wrapper or ground truth).
        factory: message factory of the binding in use.
        fusion: depth-fusion settings.
        debug_image: also draw the overlay (costs a few ms).
    """

    def __init__(self, segment: SegmentFn, factory: MessageFactory, *,
                 fusion: FusionConfig = FusionConfig(), debug_image: bool = True) -> None:
        self.segment, self.f, self.fusion, self.debug = segment, factory, fusion, debug_image
        self.stats = DetectorStats()

    def on_messages(self, color: Any, depth: Any, info: Any) -> dict[str, Any] | None:
        """Return ``{output: message}`` for one set, or None if the set is malformed."""
        started = time.perf_counter()
        try:
            frame = frame_from_messages(color, depth, info)
            if frame.depth is None or frame.intrinsics is None:
                raise MessageError("the detector needs aligned depth and camera_info")
            instances = self.segment(frame)
            objects = fuse(instances, frame.depth, frame.intrinsics, self.fusion)
        except CvAutolabelError as err:
            name = type(err).__name__
            self.stats.rejected[name] = self.stats.rejected.get(name, 0) + 1
            return None
        out = self.build(frame, instances, objects)
        self._count(objects, started)
        return out

    def _count(self, objects: list[Object3D], started: float) -> None:
        s = self.stats
        s.sets += 1
        s.objects += len(objects)
        s.invalid_objects += sum(not o.valid for o in objects)
        s.latency_ms.append(1000 * (time.perf_counter() - started))
        if len(s.latency_ms) > 4000:
            del s.latency_ms[:2000]

    def build(self, frame: Frame, instances: Instances,
              objects: list[Object3D]) -> dict[str, Any]:
        """Return the four output messages of one frame."""
        hdr = header(self.f, frame.stamp_ns, frame.frame_id)
        out = {DETECTIONS_3D: self._detections_3d(hdr, objects),
               DETECTIONS_2D: self._detections_2d(hdr, instances),
               MARKERS: self._markers(hdr, objects, instances)}
        if self.debug:
            image = draw_instances(frame.rgb, instances, _labels(instances, objects))
            out[DEBUG_IMAGE] = numpy_to_image(image, "rgb8", factory=self.f,
                                              stamp_ns=frame.stamp_ns, frame_id=frame.frame_id)
        return out

    def _detections_3d(self, hdr: Any, objects: list[Object3D]) -> Any:
        dets = [detection3d(self.f, hdr, class_id=o.class_name, score=o.score,
                            position=o.center, quaternion=o.orientation, size=o.size,
                            object_id=str(o.index)) for o in objects if o.valid]
        return self.f.make("vision_msgs/msg/Detection3DArray", header=hdr, detections=dets)

    def _detections_2d(self, hdr: Any, instances: Instances) -> Any:
        f, dets = self.f, []
        for i, (box, name, score) in enumerate(zip(instances.boxes, instances.names(),
                                                   instances.scores)):
            x1, y1, x2, y2 = (float(v) for v in box)
            center = f.make("vision_msgs/msg/Pose2D", position=f.make(
                "vision_msgs/msg/Point2D", x=(x1 + x2) / 2, y=(y1 + y2) / 2))
            bbox = f.make("vision_msgs/msg/BoundingBox2D", center=center, size_x=x2 - x1,
                          size_y=y2 - y1)
            hyp = f.make("vision_msgs/msg/ObjectHypothesisWithPose", hypothesis=f.make(
                "vision_msgs/msg/ObjectHypothesis", class_id=name, score=float(score)))
            dets.append(f.make("vision_msgs/msg/Detection2D", header=hdr, results=[hyp],
                               bbox=bbox, id=str(i)))
        return f.make("vision_msgs/msg/Detection2DArray", header=hdr, detections=dets)

    def _markers(self, hdr: Any, objects: list[Object3D], instances: Instances) -> Any:
        f = self.f
        markers = [f.make("visualization_msgs/msg/Marker", header=hdr, ns="detections",
                          action=_ACTION_DELETEALL)]
        for o in (o for o in objects if o.valid):
            r, g, b = (c / 255.0 for c in class_color(int(instances.class_ids[o.index])))
            color = f.make("std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=0.5)
            ident = np.array([0.0, 0.0, 0.0, 1.0])
            markers += [
                self._marker(hdr, "boxes", o.index, _MARKER_CUBE, pose(f, o.center,
                             o.orientation), o.size, color),
                self._marker(hdr, "grasp", o.index, _MARKER_SPHERE, pose(f, o.grasp_point,
                             ident), np.full(3, 0.015), color),
                self._marker(hdr, "labels", o.index, _MARKER_TEXT, pose(f, o.center - np.array(
                    [0, o.size[1] / 2 + 0.02, 0]), ident), np.array([0, 0, 0.025]), color,
                    text=f"{o.class_name} {o.score:.2f} {o.depth:.2f}m"),
            ]
        return f.make("visualization_msgs/msg/MarkerArray", markers=markers)

    def _marker(self, hdr: Any, ns: str, ident: int, kind: int, p: Any, scale: np.ndarray,
                color: Any, text: str = "") -> Any:
        sx, sy, sz = (float(v) for v in scale)
        return self.f.make("visualization_msgs/msg/Marker", header=hdr, ns=ns, id=int(ident),
                           type=kind, action=_ACTION_ADD, pose=p, color=color, text=text,
                           scale=self.f.make("geometry_msgs/msg/Vector3", x=sx, y=sy, z=sz))


def _labels(instances: Instances, objects: list[Object3D]) -> list[str]:
    by_index = {o.index: o for o in objects}
    labels = []
    for i, (name, score) in enumerate(zip(instances.names(), instances.scores)):
        o = by_index.get(i)
        where = f"{o.depth:.2f}m" if o is not None and o.valid else "no depth"
        labels.append(f"{name} {score:.2f} {where}")
    return labels
