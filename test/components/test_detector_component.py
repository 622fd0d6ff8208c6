"""DetectorComponent and `replay`: message contents, frames and stamps; bags readable by rosbags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.components.detector import (
    DEBUG_IMAGE, DETECTIONS_2D, DETECTIONS_3D, MARKERS, DetectorComponent,
)
from cv_autolabel.errors import BagError, CvAutolabelError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.factory import RosbagsMessageFactory, stamp_to_nanoseconds
from cv_autolabel.ros.frames import iter_message_sets
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter
from cv_autolabel.tools.replay import replay


@pytest.fixture(scope="module")
def sets_and_truth(sim_bag: Path) -> tuple[list, GroundTruthSegmenter]:
    with BagReader(sim_bag) as bag:
        truth = GroundTruthSegmenter.from_bag(bag)
    with BagReader(sim_bag) as bag:
        sets = [s[1:] for s in iter_message_sets(bag)]
    return sets, truth


def test_outputs_are_stamped_like_the_input_and_complete(sets_and_truth) -> None:
    sets, truth = sets_and_truth
    component = DetectorComponent(truth, RosbagsMessageFactory())
    color, depth, info = sets[3]
    out = component.on_messages(color, depth, info)
    stamp = stamp_to_nanoseconds(color.header.stamp)
    instances = truth.instances(stamp)
    for msg in out.values():
        assert stamp_to_nanoseconds(msg.header.stamp if hasattr(msg, "header")
                                    else msg.markers[0].header.stamp) == stamp
    d3 = out[DETECTIONS_3D]
    assert d3.header.frame_id == T.OPTICAL_FRAME
    assert 0 < len(d3.detections) <= len(instances)
    for det in d3.detections:
        assert det.results[0].hypothesis.class_id in truth.class_names
        assert 0.3 < det.bbox.center.position.z < 1.5 and det.bbox.size.x > 0
    assert len(out[DETECTIONS_2D].detections) == len(instances)
    markers = out[MARKERS].markers
    assert markers[0].action == 3  # DELETEALL first: no stale markers in RViz
    assert len(markers) == 1 + 3 * len(d3.detections)
    image = out[DEBUG_IMAGE]
    assert (image.encoding, image.height, image.width) == ("rgb8", color.height, color.width)


def test_3d_centres_are_near_the_truth(sim_bag: Path, sets_and_truth) -> None:
    from cv_autolabel.ros.ground_truth import iter_ground_truth

    sets, truth = sets_and_truth
    with BagReader(sim_bag) as bag:
        poses = {gt.stamp_ns: gt for gt in iter_ground_truth(bag)}
    component = DetectorComponent(truth, RosbagsMessageFactory(), debug_image=False)
    errors = []
    for color, depth, info in sets:
        stamp = stamp_to_nanoseconds(color.header.stamp)
        gt = poses[stamp]
        instances = truth.instances(stamp)
        ids = [int(np.unique(gt.labels[m])[0]) for m in instances.masks]
        for det in component.on_messages(color, depth, info)[DETECTIONS_3D].detections:
            iid = ids[int(det.id)]
            if gt.instances[iid]["visibility"] < 0.7:
                continue
            p = det.bbox.center.position
            errors.append(np.linalg.norm(np.array([p.x, p.y, p.z]) - gt.objects[iid].position))
    assert len(errors) > 30 and np.median(errors) < 0.015


def test_bad_sets_are_counted_not_raised(sets_and_truth) -> None:
    sets, truth = sets_and_truth
    component = DetectorComponent(truth, RosbagsMessageFactory())
    color, depth, info = sets[0]
    assert component.on_messages(color, None, info) is None
    depth.width = 100  # depth not sized like colour
    assert component.on_messages(color, depth, info) is None
    assert sum(component.stats.rejected.values()) == 2 and component.stats.sets == 0


def test_replay_writes_a_readable_bag_in_recorded_order(sim_bag: Path, tmp_path: Path) -> None:
    summary = replay(sim_bag, tmp_path / "out", segmenter="gt")
    assert summary["sets"] == 16 and summary["rejected"] == {}
    with BagReader(tmp_path / "out") as bag:
        topics = bag.topics
        msgs = list(bag.messages())
    assert {t: n for t, (_, n) in topics.items()} == {
        f"/cv_autolabel/{k}": 16 for k in (DETECTIONS_3D, DETECTIONS_2D, MARKERS, DEBUG_IMAGE)}
    times = [m.log_time_ns for m in msgs]
    assert times == sorted(times)
    with BagReader(sim_bag) as bag:
        colour_stamps = [stamp_to_nanoseconds(m.msg.header.stamp)
                         for m in bag.messages([T.COLOR_IMAGE])]
    out_stamps = [stamp_to_nanoseconds(m.msg.header.stamp) for m in msgs
                  if m.topic == "/cv_autolabel/detections_3d"]
    assert out_stamps == colour_stamps


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"segmenter": "yolo"}, CvAutolabelError, "--model DIR is required"),
    ({"segmenter": "yolo", "model": Path("/nonexistent")}, CvAutolabelError, "does not exist"),
])
def test_replay_errors(sim_bag: Path, tmp_path: Path, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        replay(sim_bag, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_gt_segmenter_needs_a_synthetic_bag(tmp_path: Path) -> None:
    from cv_autolabel.ros.bag import BagWriter
    from cv_autolabel.ros.factory import RosbagsMessageFactory as F

    with BagWriter(tmp_path / "real") as bag:
        bag.write("/x", "std_msgs/msg/String", F().make("std_msgs/msg/String", data="x"), 1)
    with pytest.raises(BagError, match="has no topic"):
        replay(tmp_path / "real", tmp_path / "out", segmenter="gt")
