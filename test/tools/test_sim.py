"""The synthetic world: determinism, realistic sensor output, consistent ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.geometry import quat_to_matrix
from cv_autolabel.errors import SimulationError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.ground_truth import iter_ground_truth
from cv_autolabel.tools.sim.camera_path import survey_path
from cv_autolabel.tools.sim.run import SimConfig, simulate


def _frames_and_truth(bag_path: Path) -> list[tuple]:
    with BagReader(bag_path) as bag:
        frames = list(iter_frames(bag))
    with BagReader(bag_path) as bag:
        truth = {gt.stamp_ns: gt for gt in iter_ground_truth(bag)}
    return [(f, truth[f.stamp_ns]) for f in frames]


def _raw(bag_path: Path) -> list[tuple[str, int, bytes]]:
    with BagReader(bag_path) as bag:
        out = []
        for conn, t, data in bag.reader.messages():
            out.append((conn.topic, t, bytes(data)))
    return out


def test_same_seed_same_bag_other_seed_other_bag(tmp_path: Path) -> None:
    cfg = SimConfig(frames=6, width=96, height=72, seed=3, scenes=2)
    simulate(cfg, tmp_path / "a")
    simulate(cfg, tmp_path / "b")
    simulate(SimConfig(**{**cfg.__dict__, "seed": 4}), tmp_path / "c")
    a, b, c = _raw(tmp_path / "a"), _raw(tmp_path / "b"), _raw(tmp_path / "c")
    assert a == b
    assert [m[2] for m in a if m[0] == T.COLOR_IMAGE] != [m[2] for m in c if m[0] == T.COLOR_IMAGE]


def test_bag_has_realsense_topics_and_truth(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        topics = bag.topics
    expected = {
        T.COLOR_IMAGE: "sensor_msgs/msg/Image", T.COLOR_INFO: "sensor_msgs/msg/CameraInfo",
        T.DEPTH_IMAGE: "sensor_msgs/msg/Image", T.DEPTH_INFO: "sensor_msgs/msg/CameraInfo",
        T.GT_LABELS: "sensor_msgs/msg/Image", T.GT_INSTANCES: "std_msgs/msg/String",
        T.GT_OBJECTS: "vision_msgs/msg/Detection3DArray", T.TF: "tf2_msgs/msg/TFMessage",
    }
    assert {t: ty for t, (ty, _) in topics.items()} == expected
    assert all(count == 16 for _, count in topics.values())


def test_encodings_and_stamps_are_realsense_like(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        msgs = {}
        for m in bag.messages([T.COLOR_IMAGE, T.DEPTH_IMAGE, T.GT_LABELS]):
            msgs.setdefault(m.topic, []).append(m.msg)
    assert {m.encoding for m in msgs[T.COLOR_IMAGE]} == {"rgb8"}
    assert {m.encoding for m in msgs[T.DEPTH_IMAGE]} == {"16UC1"}
    assert {m.encoding for m in msgs[T.GT_LABELS]} == {"mono16"}
    assert {m.header.frame_id for ms in msgs.values() for m in ms} == {T.OPTICAL_FRAME}
    color = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs[T.COLOR_IMAGE]]
    depth = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs[T.DEPTH_IMAGE]]
    assert np.allclose(np.diff(color), 1e9 / 30, atol=1)
    offsets = np.abs(np.array(depth) - np.array(color))
    assert offsets.max() <= 3_000_000 and offsets.max() > 0  # distinct sensors, a few ms apart


def test_depth_is_noisy_with_holes_like_a_real_sensor(sim_bag: Path) -> None:
    pairs = _frames_and_truth(sim_bag)
    invalid = [np.isnan(f.depth).mean() for f, _ in pairs]
    assert 0.005 < np.mean(invalid) < 0.25
    frame, gt = pairs[0]
    # Holes concentrate at object boundaries (stereo shadow, mixed pixels).
    edges = np.zeros_like(gt.labels, bool)
    edges[:, 1:] |= gt.labels[:, 1:] != gt.labels[:, :-1]
    edges[1:, :] |= gt.labels[1:, :] != gt.labels[:-1, :]
    assert np.isnan(frame.depth[edges]).mean() > 3 * np.isnan(frame.depth[~edges]).mean()


def test_label_image_agrees_with_depth(sim_bag: Path) -> None:
    for frame, gt in _frames_and_truth(sim_bag):
        for iid, obj in gt.objects.items():
            mask = gt.mask(iid) & np.isfinite(frame.depth)
            if mask.sum() < 30:
                continue
            k = frame.intrinsics
            v, u = np.nonzero(mask)
            pts = k.backproject(u, v, frame.depth[mask])
            # Points seen as this instance lie within its true box (plus sensor noise).
            local = (pts - obj.position) @ quat_to_matrix(obj.orientation)
            inside = np.all(np.abs(local) <= obj.size / 2 + 0.012, axis=1)
            assert inside.mean() > 0.9, (iid, obj.class_name, inside.mean())


def test_object_poses_project_inside_their_masks(sim_bag: Path) -> None:
    checked = 0
    for frame, gt in _frames_and_truth(sim_bag):
        for iid, rec in gt.instances.items():
            if rec["visibility"] < 0.95 or rec["visible_pixels"] < 200:
                continue
            u, v = np.round(frame.intrinsics.project(gt.objects[iid].position[None])[0])
            # The centre of a fully visible convex object projects onto the object itself.
            window = gt.labels[int(v) - 1:int(v) + 2, int(u) - 1:int(u) + 2]
            assert (window == iid).any(), (iid, rec)
            checked += 1
    assert checked >= 20


def test_instances_json_matches_label_image(sim_bag: Path) -> None:
    for _, gt in _frames_and_truth(sim_bag):
        ids = set(np.unique(gt.labels)) - {0}
        assert ids == set(gt.instances)
        for iid, rec in gt.instances.items():
            assert rec["visible_pixels"] == int(gt.mask(iid).sum())
            assert rec["class"] == gt.objects[iid].class_name
            assert 0.0 < rec["visibility"] <= 1.0


def test_classes_and_picks(sim_bag: Path) -> None:
    classes = set()
    counts = []
    for _, gt in _frames_and_truth(sim_bag):
        classes |= {o.class_name for o in gt.objects.values()}
        counts.append(len(gt.objects))
    assert {"red_can", "blue_can"} <= classes
    assert classes <= {"red_can", "blue_can", "box", "ball"}
    # pick_probability=1 in the fixture: objects disappear between the scene refills.
    assert min(counts) < max(counts)


def test_camera_path_pauses_then_moves() -> None:
    path = survey_path(300, np.random.default_rng(0), center=np.zeros(3))
    steps = np.linalg.norm(np.diff(path.eye, axis=0), axis=1)
    assert path.paused.any() and (~path.paused).any()
    assert np.all(steps[path.paused[1:] & path.paused[:-1]] < 1e-9)  # still while paused
    assert steps.max() < 0.05  # smooth: < 5 cm between frames at 30 Hz
    distances = np.linalg.norm(path.eye - path.target, axis=1)
    assert distances.min() > 0.35 and distances.max() < 1.0


@pytest.mark.parametrize(("change", "message"), [
    ({"frames": 0}, "--frames"),
    ({"width": 8}, "outside"),
    ({"classes": ("purple_can",)}, "unknown class"),
    ({"classes": ()}, "at least one class"),
])
def test_invalid_settings_raise(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate(SimConfig(**{**SimConfig().__dict__, **change}), tmp_path / "bag")
    assert not (tmp_path / "bag").exists()


def test_instances_topic_is_plain_json(sim_bag: Path) -> None:
    with BagReader(sim_bag) as bag:
        first = next(bag.messages([T.GT_INSTANCES])).msg
    doc = json.loads(first.data)
    assert set(doc) == {"stamp_ns", "instances"}
    assert {"id", "class", "target", "visible_pixels", "visibility", "bbox"} <= set(
        doc["instances"][0])
