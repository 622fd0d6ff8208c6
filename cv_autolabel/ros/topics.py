"""Default topic names: RealSense ``realsense2_camera`` (ROS 2 wrapper 4.x) and the sim's truth."""

from __future__ import annotations

from dataclasses import dataclass

COLOR_IMAGE = "/camera/camera/color/image_raw"
COLOR_INFO = "/camera/camera/color/camera_info"
DEPTH_IMAGE = "/camera/camera/aligned_depth_to_color/image_raw"
DEPTH_INFO = "/camera/camera/aligned_depth_to_color/camera_info"
TF = "/tf"

GT_LABELS = "/sim/ground_truth/instance_labels"
GT_INSTANCES = "/sim/ground_truth/instances"
GT_OBJECTS = "/sim/ground_truth/objects"

OPTICAL_FRAME = "camera_color_optical_frame"


@dataclass(frozen=True)
class CameraTopics:
    """The three topics a frame is assembled from; ``depth=None`` for colour-only streams."""

    color: str = COLOR_IMAGE
    depth: str | None = DEPTH_IMAGE
    info: str | None = COLOR_INFO

    def names(self) -> list[str]:
        """Return the configured topic names, colour first."""
        return [t for t in (self.color, self.depth, self.info) if t]
