"""Small validated value types shared by every layer (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cv_autolabel.errors import CameraInfoError, MessageError


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image, in pixels (ROS ``CameraInfo`` conventions).

    ``(u, v)`` is the centre of pixel column ``u``, row ``v``; a point ``(x, y, z)`` in the
    optical frame (x right, y down, z forward) projects to ``u = fx x / z + cx``.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = field(default=(0.0, 0.0, 0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            msg = f"camera size must be positive, got {self.width}x{self.height}"
            raise CameraInfoError(msg)
        if not (np.isfinite([self.fx, self.fy, self.cx, self.cy]).all() and self.fx > 0
                and self.fy > 0):
            msg = f"focal lengths must be finite and positive, got fx={self.fx} fy={self.fy}"
            raise CameraInfoError(msg)

    @property
    def matrix(self) -> np.ndarray:
        """Return K, the 3x3 camera matrix (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project optical-frame points (N, 3) to pixel coordinates (N, 2).

        Example:
            >>> k = CameraIntrinsics(640, 480, 500.0, 500.0, 319.5, 239.5)
            >>> k.project(np.array([[0.0, 0.0, 1.0]])).tolist()
            [[319.5, 239.5]]
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        z = pts[:, 2]
        return np.stack([self.fx * pts[:, 0] / z + self.cx, self.fy * pts[:, 1] / z + self.cy], 1)

    def backproject(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return optical-frame points (N, 3) for pixels ``(u, v)`` at depths ``z`` (metres)."""
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
        return np.stack([(u - self.cx) * z / self.fx, (v - self.cy) * z / self.fy, z], -1)


@dataclass(frozen=True)
class Frame:
    """One synchronised RGB-D frame, the unit every stage consumes.

    Attributes:
        rgb: (H, W, 3) uint8, RGB channel order.
        depth: (H, W) float32 metres aligned to ``rgb``, NaN where invalid; None if the
            stream has no depth.
        intrinsics: intrinsics of ``rgb`` (and of the aligned depth); None if unknown.
        stamp_ns: header stamp of the colour image, integer nanoseconds.
        frame_id: optical frame of the colour image.
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    intrinsics: CameraIntrinsics | None
    stamp_ns: int
    frame_id: str

    def __post_init__(self) -> None:
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            msg = f"rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}"
            raise MessageError(msg)
        if self.depth is not None and self.depth.shape != self.rgb.shape[:2]:
            msg = (f"depth {self.depth.shape} is not aligned to colour {self.rgb.shape[:2]}: "
                   "record the aligned depth topic")
            raise MessageError(msg)
        if self.intrinsics is not None and (
            (self.intrinsics.height, self.intrinsics.width) != self.rgb.shape[:2]
        ):
            msg = (f"camera_info is {self.intrinsics.width}x{self.intrinsics.height} but the "
                   f"image is {self.rgb.shape[1]}x{self.rgb.shape[0]}")
            raise CameraInfoError(msg)
