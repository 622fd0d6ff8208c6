"""Build the composite messages several components publish (headers, poses, detections)."""

from __future__ import annotations

from typing import Any

import numpy as np

from cv_autolabel.ros.factory import MessageFactory


def header(f: MessageFactory, stamp_ns: int, frame_id: str) -> Any:
    """Return a ``std_msgs/Header``."""
    return f.make("std_msgs/msg/Header", stamp=f.stamp(stamp_ns), frame_id=frame_id)


def pose(f: MessageFactory, position: np.ndarray, quaternion: np.ndarray) -> Any:
    """Return a ``geometry_msgs/Pose`` from a position (3,) and an (x, y, z, w) quaternion."""
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in quaternion)
    return f.make("geometry_msgs/msg/Pose",
                  position=f.make("geometry_msgs/msg/Point", x=x, y=y, z=z),
                  orientation=f.make("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))


def detection3d(f: MessageFactory, hdr: Any, *, class_id: str, score: float,
                position: np.ndarray, quaternion: np.ndarray, size: np.ndarray,
                object_id: str = "") -> Any:
    """Return a ``vision_msgs/Detection3D`` with one hypothesis and a posed 3D box."""
    p = pose(f, position, quaternion)
    hypothesis = f.make(
        "vision_msgs/msg/ObjectHypothesisWithPose",
        hypothesis=f.make("vision_msgs/msg/ObjectHypothesis", class_id=class_id,
                          score=float(score)),
        pose=f.make("geometry_msgs/msg/PoseWithCovariance", pose=p),
    )
    sx, sy, sz = (float(v) for v in size)
    bbox = f.make("vision_msgs/msg/BoundingBox3D", center=p,
                  size=f.make("geometry_msgs/msg/Vector3", x=sx, y=sy, z=sz))
    return f.make("vision_msgs/msg/Detection3D", header=hdr, results=[hypothesis], bbox=bbox,
                  id=object_id)


def transform_stamped(f: MessageFactory, hdr: Any, child_frame_id: str,
                      translation: np.ndarray, quaternion: np.ndarray) -> Any:
    """Return a ``geometry_msgs/TransformStamped`` (parent = ``hdr.frame_id``)."""
    x, y, z = (float(v) for v in translation)
    qx, qy, qz, qw = (float(v) for v in quaternion)
    return f.make(
        "geometry_msgs/msg/TransformStamped", header=hdr, child_frame_id=child_frame_id,
        transform=f.make("geometry_msgs/msg/Transform",
                         translation=f.make("geometry_msgs/msg/Vector3", x=x, y=y, z=z),
                         rotation=f.make("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz,
                                         w=qw)))
