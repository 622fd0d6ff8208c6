"""Assembling frames from messages: the shared path of nodes, replay and extract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.types import CameraIntrinsics
from cv_autolabel.errors import CameraInfoError, ImageEncodingError, MessageError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader, BagWriter
from cv_autolabel.ros.camera_info import camera_info_from_intrinsics
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.frames import FrameStats, frame_from_messages, iter_frames
from cv_autolabel.ros.image import numpy_to_image
from cv_autolabel.ros.topics import CameraTopics

F = RosbagsMessageFactory()
K = CameraIntrinsics(8, 6, 10.0, 10.0, 3.5, 2.5)


def _set(stamp: int, *, width: int = 8, encoding: str = "rgb8", depth_width: int = 8):
    rgb = np.full((6, width, 3), 7, np.uint8)
    color = numpy_to_image(rgb, encoding if encoding != "bogus" else "rgb8", factory=F,
                           stamp_ns=stamp, frame_id="cam")
    if encoding == "bogus":
        color.encoding = "bogus"
    depth = numpy_to_image(np.full((6, depth_width), 1500, np.uint16), "16UC1", factory=F,
                           stamp_ns=stamp + 1_000_000, frame_id="cam")
    info = camera_info_from_intrinsics(K, factory=F, stamp_ns=stamp, frame_id="cam")
    return color, depth, info


def test_frame_from_messages_converts_units_and_stamps() -> None:
    frame = frame_from_messages(*_set(1_500_000_000))
    assert frame.rgb.shape == (6, 8, 3) and frame.rgb.dtype == np.uint8
    assert np.allclose(frame.depth, 1.5)
    assert frame.intrinsics == K
    assert frame.stamp_ns == 1_500_000_000 and frame.frame_id == "cam"


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"depth_width": 4}, MessageError),      # depth not aligned to colour
    ({"width": 4, "depth_width": 4}, CameraInfoError),  # camera_info for another size
    ({"encoding": "bogus"}, ImageEncodingError),
])
def test_inconsistent_sets_raise_typed_errors(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        frame_from_messages(*_set(0, **kwargs))


def test_bad_set_in_a_bag_is_dropped_counted_and_the_rest_kept(tmp_path: Path) -> None:
    topics = CameraTopics("/c", "/d", "/i")
    with BagWriter(tmp_path / "bag") as bag:
        for i in range(5):
            stamp = 10**9 + i * 33_000_000
            msgs = _set(stamp, encoding="bogus" if i == 2 else "rgb8")
            for topic, msg, kind in zip(topics.names(), msgs, ["Image", "Image", "CameraInfo"]):
                bag.write(topic, f"sensor_msgs/msg/{kind}", msg, stamp + 5_000_000)
    stats, errors = FrameStats(), []
    with BagReader(tmp_path / "bag") as bag:
        frames = list(iter_frames(bag, topics, stats=stats,
                                  on_error=lambda e, s: errors.append(s)))
    assert [f.stamp_ns for f in frames] == [10**9 + i * 33_000_000 for i in (0, 1, 3, 4)]
    assert stats.sets == 5 and stats.rejected == 1
    assert stats.errors == {"ImageEncodingError": 1}
    assert errors == [10**9 + 2 * 33_000_000]


def test_colour_only_stream(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        frames = list(iter_frames(bag, CameraTopics(T.COLOR_IMAGE, None, None)))
    assert len(frames) == 16
    assert all(f.depth is None and f.intrinsics is None for f in frames)


def test_sim_bag_pairs_every_colour_frame_with_its_own_depth(sim_bag: Path) -> None:
    stats = FrameStats()
    with BagReader(sim_bag) as bag:
        frames = list(iter_frames(bag, stats=stats))
    assert stats.frames == 16 and stats.rejected == 0
    assert len({f.stamp_ns for f in frames}) == 16
