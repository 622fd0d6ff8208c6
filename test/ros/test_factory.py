"""Message factories build messages with ROS defaults on both bindings."""

from __future__ import annotations

import numpy as np
import pytest

from cv_autolabel.ros.factory import RosbagsMessageFactory, split_nanoseconds, stamp_to_nanoseconds
from cv_autolabel.ros.typestore import VISION_MSGS, typestore

F = RosbagsMessageFactory()


def test_defaults_match_rosidl() -> None:
    info = F.make("sensor_msgs/msg/CameraInfo")
    assert info.k.shape == (9,) and info.d.shape == (0,) and info.distortion_model == ""
    assert F.make("geometry_msgs/msg/Pose").orientation.w == 1.0  # identity, as rosidl
    assert isinstance(F.make("geometry_msgs/msg/Point").x, float)


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(TypeError, match="no field"):
        F.make("std_msgs/msg/String", text="x")


@pytest.mark.parametrize("typename", sorted(VISION_MSGS))
def test_every_vision_msgs_type_serialises(typename: str) -> None:
    msg = F.make(typename)
    data = bytes(typestore().serialize_cdr(msg, typename))
    back = typestore().deserialize_cdr(data, typename)
    assert bytes(typestore().serialize_cdr(back, typename)) == data
    assert type(back).__name__ == type(msg).__name__


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_767_225_600_123_456_789])
def test_stamp_round_trip(ns: int) -> None:
    sec, nanosec = split_nanoseconds(ns)
    assert 0 <= nanosec < 1_000_000_000
    assert stamp_to_nanoseconds(F.stamp(ns)) == ns


def test_numpy_fields_compare_equal_after_round_trip() -> None:
    img = F.make("sensor_msgs/msg/Image", data=np.arange(4, dtype=np.uint8), height=1, width=4,
                 encoding="mono8", step=4)
    back = typestore().deserialize_cdr(typestore().serialize_cdr(img, "sensor_msgs/msg/Image"),
                                       "sensor_msgs/msg/Image")
    assert np.array_equal(back.data, img.data)
