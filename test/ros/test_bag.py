"""Real ROS 2 bags in both storage formats: round trips, Humble bags, damage, atomic writes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.errors import BagError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader, BagWriter
from cv_autolabel.ros.builders import detection3d, header
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.image import image_to_numpy, numpy_to_image

F = RosbagsMessageFactory()


def _write_sample(path: Path, storage: str) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    with BagWriter(path, storage=storage) as bag:
        for i in range(3):
            stamp = 1_000_000_000 + i * 33_000_000
            bag.write("/img", "sensor_msgs/msg/Image",
                      numpy_to_image(pixels + i, "rgb8", factory=F, stamp_ns=stamp,
                                     frame_id="cam"), stamp)
            det = detection3d(F, header(F, stamp, "cam"), class_id="red_can", score=0.5,
                              position=np.array([0.1, 0.2, 0.9]),
                              quaternion=np.array([0, 0, 0, 1.0]),
                              size=np.array([0.066, 0.066, 0.115]), object_id=str(i))
            bag.write("/dets", "vision_msgs/msg/Detection3DArray",
                      F.make("vision_msgs/msg/Detection3DArray", header=header(F, stamp, "cam"),
                             detections=[det]), stamp + 1)
            bag.write("/note", "std_msgs/msg/String", F.make("std_msgs/msg/String",
                                                             data=f"frame {i}"), stamp + 2)
    return pixels


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_every_message_kind(tmp_path: Path, storage: str) -> None:
    pixels = _write_sample(tmp_path / "bag", storage)
    with BagReader(tmp_path / "bag") as bag:
        assert bag.topics == {"/img": ("sensor_msgs/msg/Image", 3),
                              "/dets": ("vision_msgs/msg/Detection3DArray", 3),
                              "/note": ("std_msgs/msg/String", 3)}
        msgs = list(bag.messages())
    assert [m.topic for m in msgs] == ["/img", "/dets", "/note"] * 3
    assert [m.log_time_ns for m in msgs] == sorted(m.log_time_ns for m in msgs)
    images = [m.msg for m in msgs if m.topic == "/img"]
    for i, img in enumerate(images):
        assert np.array_equal(image_to_numpy(img), pixels + i)
    det = msgs[1].msg.detections[0]
    assert det.results[0].hypothesis.class_id == "red_can"
    assert det.bbox.size.z == pytest.approx(0.115)
    assert det.bbox.center.orientation.w == 1.0
    assert msgs[2].msg.data == "frame 0"


def test_sqlite_and_mcap_recordings_give_identical_frames(sim_bag: Path,
                                                          sim_bag_sqlite: Path) -> None:
    with BagReader(sim_bag) as a, BagReader(sim_bag_sqlite) as b:
        fa, fb = list(iter_frames(a)), list(iter_frames(b))
    assert len(fa) == len(fb) == 16
    for x, y in zip(fa, fb):
        assert x.stamp_ns == y.stamp_ns
        assert np.array_equal(x.rgb, y.rgb)
        assert np.array_equal(x.depth, y.depth, equal_nan=True)


def test_humble_sqlite_bag_without_message_definitions(tmp_path: Path) -> None:
    # Humble's recorder stores no message definitions; our typestore must supply them,
    # including vision_msgs which rosbags does not ship.
    _write_sample(tmp_path / "bag", "sqlite3")
    with sqlite3.connect(tmp_path / "bag" / "bag.db3") as db:
        db.execute("DELETE FROM message_definitions")
    with BagReader(tmp_path / "bag") as bag:
        dets = [m.msg for m in bag.messages(["/dets"])]
    assert [d.detections[0].id for d in dets] == ["0", "1", "2"]


def _truncate(file: Path, fraction: float) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("drop_metadata", [False, True])
def test_truncated_mcap_yields_readable_prefix(tmp_path: Path, drop_metadata: bool) -> None:
    from cv_autolabel.tools.sim.run import SimConfig, simulate

    bag = tmp_path / "bag"
    simulate(SimConfig(frames=12, width=640, height=480, seed=1), bag)
    with BagReader(bag) as reader:
        full = [f.stamp_ns for f in iter_frames(reader)]
    _truncate(bag / "bag.mcap", 0.6)
    if drop_metadata:  # a recorder killed mid-recording never writes metadata.yaml
        (bag / "metadata.yaml").unlink()
    started = time.monotonic()
    with BagReader(bag) as reader:
        prefix = [f.stamp_ns for f in iter_frames(reader)]
        damage = reader.damage
    assert time.monotonic() - started < 20
    assert damage is not None and "damaged mcap" in damage
    assert 0 < len(prefix) < len(full)
    assert prefix == full[: len(prefix)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "bag not found"),
    (lambda p: p.write_text("not a bag"), "not a ROS 2 bag directory"),
    (lambda p: p.mkdir(), "not a ROS 2 bag directory"),
])
def test_unopenable_paths_raise_bag_error(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "x"
    make(path)
    with pytest.raises(BagError, match=message):
        BagReader(path).open()


def test_corrupt_sqlite_bag_is_a_clear_error(tmp_path: Path) -> None:
    _write_sample(tmp_path / "bag", "sqlite3")
    db = tmp_path / "bag" / "bag.db3"
    data = bytearray(db.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # clobber the sqlite header and schema page
    db.write_bytes(bytes(data))
    with pytest.raises(BagError, match="cannot open bag"):
        with BagReader(tmp_path / "bag") as bag:
            list(bag.messages())


def test_unknown_topic_names_what_the_bag_has(tmp_path: Path) -> None:
    _write_sample(tmp_path / "bag", "mcap")
    with BagReader(tmp_path / "bag") as bag, pytest.raises(BagError, match="it has: /dets"):
        list(bag.messages(["/camera/missing"]))


def test_writer_is_atomic_and_never_clobbers(tmp_path: Path) -> None:
    path = tmp_path / "bag"
    with pytest.raises(RuntimeError), BagWriter(path) as bag:
        bag.write("/note", "std_msgs/msg/String", F.make("std_msgs/msg/String", data="x"), 1)
        raise RuntimeError("crash while recording")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor its partial folder
    _write_sample(path, "mcap")
    with pytest.raises(BagError, match="exists already"):
        BagWriter(path).open()
    with BagWriter(path, overwrite=True) as bag:
        bag.write("/note", "std_msgs/msg/String", F.make("std_msgs/msg/String", data="y"), 1)
    with BagReader(path) as reader:
        assert [m.msg.data for m in reader.messages()] == ["y"]


def test_writer_rejects_a_second_type_on_a_topic(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "bag") as bag:
        bag.write("/t", "std_msgs/msg/String", F.make("std_msgs/msg/String", data="x"), 1)
        with pytest.raises(BagError, match="carries std_msgs/msg/String"):
            bag.write("/t", "sensor_msgs/msg/Image", F.make("sensor_msgs/msg/Image"), 2)


def test_bad_storage_name(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="unknown bag storage"):
        BagWriter(tmp_path / "bag", storage="rosbag1")


def test_sim_topic_constants_are_realsense_names() -> None:
    assert T.COLOR_IMAGE == "/camera/camera/color/image_raw"
    assert T.DEPTH_IMAGE == "/camera/camera/aligned_depth_to_color/image_raw"
    assert T.COLOR_INFO == "/camera/camera/color/camera_info"
