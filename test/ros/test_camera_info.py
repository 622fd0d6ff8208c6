"""sensor_msgs/CameraInfo <-> CameraIntrinsics on rosbags, rclpy-like and ROS 1 style messages."""

from __future__ import annotations

import array
from collections.abc import Sequence
from contextlib import nullcontext as does_not_raise
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from cv_autolabel.core.types import CameraIntrinsics
from cv_autolabel.errors import CameraInfoError
from cv_autolabel.ros.camera_info import camera_info_from_intrinsics, intrinsics_from_camera_info
from cv_autolabel.ros.factory import RosbagsMessageFactory, split_nanoseconds
from cv_autolabel.ros.typestore import typestore

FACTORY = RosbagsMessageFactory()

INTRINSICS = [
    CameraIntrinsics(640, 480, 615.2, 615.9, 320.4, 238.1, "plumb_bob",
                     (0.11, -0.24, 0.001, -0.002, 0.09)),
    CameraIntrinsics(1280, 720, 910.0, 905.5, 641.0, 359.5, "rational_polynomial",
                     (0.1, -0.2, 0.0, 0.0, 0.05, 0.01, 0.02, 0.03)),
    CameraIntrinsics(848, 800, 286.0, 286.2, 424.5, 400.5, "equidistant",
                     (-0.01, 0.04, -0.04, 0.008)),
    CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5, "", ()),
]


class RclpyLikeCameraInfo:
    """Stand-in for an rclpy ``sensor_msgs/msg/CameraInfo``.

    Like rclpy, ``d`` (an unbounded float64 sequence) is an ``array.array('d')`` and its
    setter rejects numpy arrays; ``k`` here is a plain list to exercise the duck typing.
    """

    def __init__(self, **fields: Any) -> None:
        self.header = None
        self.width = self.height = self.binning_x = self.binning_y = 0
        self.distortion_model = ""
        self.k = [0.0] * 9
        self.r = [0.0] * 9
        self.p = [0.0] * 12
        self.roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False)
        self._d = array.array("d")
        for name, value in fields.items():
            setattr(self, name, value)

    @property
    def d(self) -> array.array:
        return self._d

    @d.setter
    def d(self, value: Any) -> None:
        if isinstance(value, array.array):
            assert value.typecode == "d"
            self._d = value
            return
        assert isinstance(value, Sequence), "rclpy rejects non-sequences such as numpy arrays"
        self._d = array.array("d", value)


class RclpyLikeFactory:
    """Builds :class:`RclpyLikeCameraInfo` and plain namespaces for headers and stamps."""

    def make(self, typename: str, **fields: Any) -> Any:
        if typename == "sensor_msgs/msg/CameraInfo":
            return RclpyLikeCameraInfo(**fields)
        return SimpleNamespace(**fields)

    def stamp(self, nanoseconds: int) -> Any:
        sec, nanosec = split_nanoseconds(nanoseconds)
        return SimpleNamespace(sec=sec, nanosec=nanosec)


@pytest.mark.parametrize("intr", INTRINSICS, ids=lambda i: i.distortion_model or "none")
def test_round_trip_preserves_intrinsics(intr: CameraIntrinsics) -> None:
    msg = camera_info_from_intrinsics(intr, factory=FACTORY)

    assert intrinsics_from_camera_info(msg) == intr


@pytest.mark.parametrize("intr", INTRINSICS, ids=lambda i: i.distortion_model or "none")
def test_round_trip_survives_cdr_serialisation(intr: CameraIntrinsics) -> None:
    store = typestore()
    msg = camera_info_from_intrinsics(intr, factory=FACTORY, stamp_ns=42, frame_id="cam")

    raw = store.serialize_cdr(msg, "sensor_msgs/msg/CameraInfo")
    decoded = store.deserialize_cdr(raw, "sensor_msgs/msg/CameraInfo")

    assert intrinsics_from_camera_info(decoded) == intr
    assert decoded.header.frame_id == "cam"


def test_message_has_ros_matrix_layout() -> None:
    intr = INTRINSICS[0]

    msg = camera_info_from_intrinsics(intr, factory=FACTORY, stamp_ns=3_000_000_007,
                                      frame_id="camera_color_optical_frame")

    assert (msg.width, msg.height, msg.distortion_model) == (640, 480, "plumb_bob")
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (3, 7)
    assert msg.header.frame_id == "camera_color_optical_frame"
    for field, length in (("k", 9), ("r", 9), ("p", 12), ("d", 5)):
        values = getattr(msg, field)
        assert isinstance(values, np.ndarray)
        assert values.dtype == np.float64
        assert values.shape == (length,)
    np.testing.assert_array_equal(msg.k.reshape(3, 3), intr.matrix)
    np.testing.assert_array_equal(msg.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(msg.p.reshape(3, 4), [[615.2, 0, 320.4, 0],
                                                       [0, 615.9, 238.1, 0], [0, 0, 1, 0]])
    assert msg.d.tolist() == list(intr.distortion)


def test_builds_rclpy_distortion_as_double_array() -> None:
    intr = INTRINSICS[1]

    msg = camera_info_from_intrinsics(intr, factory=RclpyLikeFactory(), frame_id="cam")

    assert isinstance(msg.d, array.array)
    assert msg.d.typecode == "d"
    assert msg.header.frame_id == "cam"
    assert intrinsics_from_camera_info(msg) == intr


def test_reads_rclpy_like_message_with_list_k_and_array_d() -> None:
    msg = RclpyLikeCameraInfo(
        width=640, height=480, distortion_model="plumb_bob",
        k=[600.0, 0.0, 320.0, 0.0, 601.0, 240.0, 0.0, 0.0, 1.0],
        d=array.array("d", [0.1, -0.2, 0.0, 0.0, 0.0]),
    )

    intr = intrinsics_from_camera_info(msg)

    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (600.0, 601.0, 320.0, 240.0)
    assert intr.distortion == (0.1, -0.2, 0.0, 0.0, 0.0)


def test_reads_ros1_style_upper_case_fields() -> None:
    msg = SimpleNamespace(width=320, height=240, distortion_model="plumb_bob",
                          K=(300.0, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0),
                          D=(0.0, 0.0, 0.0, 0.0, 0.0))

    intr = intrinsics_from_camera_info(msg)

    assert intr == CameraIntrinsics(320, 240, 300.0, 300.0, 160.0, 120.0)


K = [500.0, 0.0, 320.0, 0.0, 500.0, 240.0, 0.0, 0.0, 1.0]
VALID = {"width": 640, "height": 480, "distortion_model": "plumb_bob", "k": K, "d": [0.0] * 5}


def roi(x: int, y: int, width: int, height: int) -> SimpleNamespace:
    return SimpleNamespace(x_offset=x, y_offset=y, width=width, height=height)


def with_k(**entries: float) -> list[float]:
    names = ("fx", "s", "cx", "k3", "fy", "cy", "k6", "k7", "k8")
    return [entries.get(name, value) for name, value in zip(names, K, strict=True)]


@pytest.mark.parametrize(
    ("fields", "expectation"),
    [
        ({}, does_not_raise()),
        ({"roi": roi(0, 0, 0, 0), "binning_x": 0, "binning_y": 1}, does_not_raise()),
        ({"roi": roi(0, 0, 640, 480)}, does_not_raise()),
        ({"width": 0}, pytest.raises(CameraInfoError, match="no image size")),
        ({"height": 0}, pytest.raises(CameraInfoError, match="no image size")),
        ({"k": [0.0] * 9}, pytest.raises(CameraInfoError, match="all zeros.*not calibrated")),
        ({"k": with_k(fx=0.0)}, pytest.raises(CameraInfoError, match="non-positive focal")),
        ({"k": with_k(fy=-500.0)}, pytest.raises(CameraInfoError, match="non-positive focal")),
        ({"k": with_k(cx=float("nan"))}, pytest.raises(CameraInfoError, match="non-finite")),
        ({"k": with_k(fx=float("inf"))}, pytest.raises(CameraInfoError, match="non-finite")),
        ({"d": [0.1, float("inf")]}, pytest.raises(CameraInfoError, match="'d' has non-finite")),
        ({"k": K[:8]}, pytest.raises(CameraInfoError, match="8 values, expected 9")),
        ({"k": with_k(k8=2.0)}, pytest.raises(CameraInfoError, match="not \\[fx")),
        ({"k": ["a"] * 9}, pytest.raises(CameraInfoError, match="not a list of numbers")),
        ({"d": None}, pytest.raises(CameraInfoError, match="no field 'd'")),
        ({"binning_x": 2}, pytest.raises(CameraInfoError, match="binning")),
        ({"roi": roi(10, 20, 320, 240)}, pytest.raises(CameraInfoError, match="ROI")),
    ],
)
def test_invalid_camera_info_raises(fields: dict[str, Any], expectation: Any) -> None:
    msg = SimpleNamespace(**{**VALID, **fields})

    with expectation:
        intr = intrinsics_from_camera_info(msg)
        assert (intr.width, intr.height, intr.fx) == (640, 480, 500.0)
