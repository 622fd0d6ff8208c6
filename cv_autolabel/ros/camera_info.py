"""Read and build ``sensor_msgs/CameraInfo`` messages on any binding (no rclpy import).

rosbags gives the matrices as numpy arrays, rclpy as numpy (fixed-size ``k r p``) and
``array.array('d')`` (``d``), ROS 1 style messages name them ``K R P D``; all are accepted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cv_autolabel.core.types import CameraIntrinsics
from cv_autolabel.errors import CameraInfoError

from cv_autolabel.ros.factory import as_sequence_field

if TYPE_CHECKING:
    from cv_autolabel.ros.factory import MessageFactory


def _floats(msg: Any, name: str, *, length: int | None = None) -> np.ndarray:
    """Return field ``name`` (or its ROS 1 upper-case spelling) as finite float64 values."""
    values = getattr(msg, name, None)
    if values is None:
        values = getattr(msg, name.upper(), None)
    if values is None:
        text = f"camera_info has no field {name!r}"
        raise CameraInfoError(text)
    try:
        floats = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        text = f"camera_info field {name!r} is not a list of numbers"
        raise CameraInfoError(text) from err
    if length is not None and floats.size != length:
        text = f"camera_info field {name!r} has {floats.size} values, expected {length}"
        raise CameraInfoError(text)
    if not np.isfinite(floats).all():
        text = f"camera_info field {name!r} has non-finite values: {floats.tolist()}"
        raise CameraInfoError(text)
    return floats


def _check_calibrated(k: np.ndarray) -> None:
    """Raise unless ``k`` (9 values, row-major) is a calibrated pinhole matrix."""
    if not k.any():
        text = ("camera_info K is all zeros: the camera is not calibrated (load a calibration "
                "in the camera driver)")
        raise CameraInfoError(text)
    if k[0] <= 0 or k[4] <= 0:
        text = (f"camera_info K has non-positive focal lengths fx={k[0]} fy={k[4]}: the "
                "camera is not calibrated")
        raise CameraInfoError(text)
    if k[3] != 0 or not np.array_equal(k[6:], [0.0, 0.0, 1.0]):
        text = f"camera_info K is not [fx s cx; 0 fy cy; 0 0 1]: {k.tolist()}"
        raise CameraInfoError(text)


def _check_full_resolution(msg: Any, width: int, height: int) -> None:
    """Raise if the image is binned or cropped: K then describes a different pixel grid."""
    binning = (int(getattr(msg, "binning_x", 0)), int(getattr(msg, "binning_y", 0)))
    roi = getattr(msg, "roi", None)
    roi_box = (0, 0, 0, 0) if roi is None else (
        int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
    # REP 104: binning 0 or 1 means none; an all-zero ROI (or the whole image) means full
    if max(binning) > 1 or roi_box not in ((0, 0, 0, 0), (0, 0, width, height)):
        text = (f"camera_info with binning {binning} or ROI {roi_box} (x, y, w, h) is not "
                "supported: publish full-resolution images")
        raise CameraInfoError(text)


def intrinsics_from_camera_info(msg: Any) -> CameraIntrinsics:
    """Return the pinhole intrinsics of a ``sensor_msgs/CameraInfo``.

    Reads the image size, K (``k``, or ``K`` on ROS 1 style messages), the distortion model
    and coefficients (``d``/``D``). The skew entry of K is ignored (ROS calibrations set it
    to zero).

    Raises:
        CameraInfoError: zero image size, an uncalibrated camera (K all zeros, fx or fy not
            positive), non-finite values, a malformed K, or binning / ROI.

    Example:
        >>> from types import SimpleNamespace
        >>> msg = SimpleNamespace(width=640, height=480, distortion_model="plumb_bob",
        ...                       k=[500.0, 0, 319.5, 0, 500.0, 239.5, 0, 0, 1], d=[0.1])
        >>> intr = intrinsics_from_camera_info(msg)
        >>> intr.fx, intr.cy, intr.distortion
        (500.0, 239.5, (0.1,))
    """
    width, height = int(msg.width), int(msg.height)
    if width <= 0 or height <= 0:
        text = f"camera_info has no image size ({width}x{height}): the driver did not fill it in"
        raise CameraInfoError(text)
    k = _floats(msg, "k", length=9)
    distortion = _floats(msg, "d")
    _check_calibrated(k)
    _check_full_resolution(msg, width, height)
    return CameraIntrinsics(
        width=width, height=height, fx=float(k[0]), fy=float(k[4]), cx=float(k[2]),
        cy=float(k[5]), distortion_model=str(msg.distortion_model),
        distortion=tuple(distortion.tolist()),
    )


def camera_info_from_intrinsics(
    intr: CameraIntrinsics,
    *,
    factory: MessageFactory,
    stamp_ns: int = 0,
    frame_id: str = "",
) -> Any:
    """Build a ``sensor_msgs/msg/CameraInfo`` for an unrectified pinhole camera.

    ``k`` is the intrinsic matrix, ``r`` the identity, ``p = [K | 0]`` (a monocular camera),
    ``d`` the distortion coefficients, all float64 and row-major; ``d`` is a numpy array on
    rosbags and an ``array.array('d')`` on rclpy, whichever the factory's binding uses.

    Example:
        >>> from cv_autolabel.ros.factory import RosbagsMessageFactory
        >>> intr = CameraIntrinsics(640, 480, 500.0, 500.0, 319.5, 239.5)
        >>> msg = camera_info_from_intrinsics(intr, factory=RosbagsMessageFactory())
        >>> msg.p.reshape(3, 4)[:, 3].tolist(), len(msg.d)
        ([0.0, 0.0, 0.0], 5)
    """
    k = intr.matrix
    header = factory.make("std_msgs/msg/Header", stamp=factory.stamp(stamp_ns),
                          frame_id=frame_id)
    msg = factory.make(
        "sensor_msgs/msg/CameraInfo", header=header, height=intr.height, width=intr.width,
        distortion_model=intr.distortion_model, k=k.reshape(-1),
        r=np.eye(3).reshape(-1), p=np.hstack([k, np.zeros((3, 1))]).reshape(-1),
    )
    msg.d = as_sequence_field(msg.d, np.asarray(intr.distortion, dtype=np.float64))
    return msg
