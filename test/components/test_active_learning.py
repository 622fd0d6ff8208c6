"""Active learning end to end on a synthetic bag: who gets queued, what the flush contains."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.components.active_learning import ActiveLearningComponent
from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.instances import Instances
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames, iter_message_sets
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter
from cv_autolabel.tools.replay import replay_active_learning


@pytest.fixture(scope="module")
def frames_and_truth(sim_bag: Path):
    with BagReader(sim_bag) as bag:
        truth = GroundTruthSegmenter.from_bag(bag, ["red_can", "blue_can"])
    with BagReader(sim_bag) as bag:
        frames = list(iter_frames(bag))
    return frames, truth


def _component(tmp_path: Path, truth, student) -> ActiveLearningComponent:
    queue = AnnotationQueue(tmp_path / "queue")
    return ActiveLearningComponent(truth, student, queue, truth.class_names)


def test_perfect_student_queues_nothing(tmp_path: Path, frames_and_truth) -> None:
    frames, truth = frames_and_truth
    al = _component(tmp_path, truth, truth)  # the student is the truth itself
    for f in frames[:6]:
        assert al.process(f).score == 0.0
    stats = al.statistics()
    assert stats["queued"] == 0 and stats["agreed"] == 6 and stats["disagreement_rate"] == 0.0
    al.queue.close()


def test_no_student_queues_every_frame_with_missed_objects(tmp_path: Path,
                                                           frames_and_truth) -> None:
    frames, truth = frames_and_truth
    al = _component(tmp_path, truth, None)
    results = [al.process(f) for f in frames[:4]]
    assert all(r.queued and r.counts["missed"] == len(r.teacher) for r in results)
    entries = al.queue.pending()
    assert len(entries) == 4
    reasons = json.loads(json.dumps(entries[0].reasons))
    assert {r["kind"] for r in reasons} == {"missed"}
    al.queue.close()


def test_student_blind_to_a_class_is_caught(tmp_path: Path, frames_and_truth) -> None:
    frames, truth = frames_and_truth

    def red_only(frame) -> Instances:
        inst = truth(frame)
        return inst.select(np.array(inst.names()) == "red_can")

    al = _component(tmp_path, truth, red_only)
    result = al.process(frames[0])
    missed = {r.class_name for r in result.reasons if r.kind == "missed"}
    assert missed == {"blue_can"} and result.counts["spurious"] == 0
    al.queue.close()


def test_queue_ranks_the_class_the_student_has_few_labels_of_first(tmp_path: Path,
                                                                  frames_and_truth) -> None:
    """A student blind to red cans and one blind to blue cans make the same number of
    mistakes on a frame; the one on the class with few training labels ranks higher."""
    frames, truth = frames_and_truth
    frame = next(f for f in frames if {"red_can", "blue_can"} <= set(truth(f).names()))

    def blind_to(name: str):
        def student(f) -> Instances:
            inst = truth(f)
            return inst.select(np.array(inst.names()) != name)
        return student

    counts = {"red_can": 400, "blue_can": 50}  # what the student's manifest says it saw
    priorities = {}
    for name in ("red_can", "blue_can"):
        queue = AnnotationQueue(tmp_path / name)
        al = ActiveLearningComponent(truth, blind_to(name), queue, truth.class_names,
                                     student_counts=lambda: counts)
        result = al.process(frame)
        missed = result.counts["missed"]
        priorities[name] = queue.pending()[0].score
        assert priorities[name] == pytest.approx(missed * (8.0 if name == "blue_can" else 1.0))
        queue.close()
    assert priorities["blue_can"] > priorities["red_can"]


def test_a_student_without_a_model_yet_counts_every_object_missed(tmp_path: Path,
                                                                  frames_and_truth) -> None:
    frames, truth = frames_and_truth
    al = _component(tmp_path, truth, lambda frame: None)  # an optional slot, nothing published
    result = al.process(frames[0])
    assert result.queued and result.counts["missed"] == len(result.teacher)
    assert al.queue.pending()[0].score == len(result.teacher)  # unweighted: one per object
    al.queue.close()


def test_malformed_set_is_counted(tmp_path: Path, sim_bag: Path, frames_and_truth) -> None:
    _, truth = frames_and_truth
    al = _component(tmp_path, truth, None)
    with BagReader(sim_bag) as bag:
        _, color, depth, info = next(iter_message_sets(bag))
    color.encoding = "bogus"
    assert al.on_messages(color, depth, info) is None
    assert al.statistics()["errors"] == {"ImageEncodingError": 1}
    al.queue.close()


def test_replay_then_flush_gives_a_cvat_zip(tmp_path: Path, sim_bag: Path) -> None:
    summary = replay_active_learning(sim_bag, tmp_path / "queue")
    assert summary["frames_in"] == 16 and 0 < summary["queued"] == summary["novel"]
    with AnnotationQueue(tmp_path / "queue") as queue:
        al = ActiveLearningComponent(lambda f: None, None, queue, ("blue_can", "red_can"))
        result = al.flush(tmp_path / "exports")
        assert result.images == summary["queued"]
        again = al.flush(tmp_path / "exports")
        assert again.images == 0  # nothing exported twice
    with zipfile.ZipFile(result.zip_path) as z:
        doc = json.loads(z.read("annotations/instances_default.json"))
        names = set(z.namelist())
    assert [c["name"] for c in doc["categories"]] == ["blue_can", "red_can"]
    assert all(f"images/default/{im['file_name']}" in names for im in doc["images"])
    # Replaying the same bag again: dedup remembers every frame, nothing new is queued.
    assert replay_active_learning(sim_bag, tmp_path / "queue")["novel"] == 0


def test_review_images_show_both_sides(tmp_path: Path, frames_and_truth) -> None:
    import cv2

    from cv_autolabel.components.active_learning import write_review_images

    frames, truth = frames_and_truth
    al = _component(tmp_path, truth, None)
    al.process(frames[0])
    assert write_review_images(al.queue, tmp_path / "review") == 1
    image = cv2.imread(str(tmp_path / "review" / "000001.jpg"))
    h, w = frames[0].rgb.shape[:2]
    assert image.shape[1] == 2 * w and image.shape[0] > h  # two panels + the reasons
    al.queue.close()


def _three_queued(tmp_path: Path, frames_and_truth) -> ActiveLearningComponent:
    """A component without a student whose queue holds the first three frames."""
    frames, truth = frames_and_truth
    al = _component(tmp_path, truth, None)
    for frame in frames[:3]:
        al.process(frame)
    return al


def test_a_flush_with_review_writes_one_image_per_exported_frame(tmp_path: Path,
                                                                 frames_and_truth) -> None:
    from cv_autolabel.components.active_learning import review_dir

    frames, _ = frames_and_truth
    al = _three_queued(tmp_path, frames_and_truth)
    result = al.flush(tmp_path / "exports", review=True)
    assert result.images == 3
    written = sorted(p.name for p in review_dir(result.zip_path).iterdir())
    assert written == [f"{i:06d}.jpg" for i in result.entry_ids]
    al.process(frames[3])  # arrived after the flush: in the next batch, not this review
    assert len(list(review_dir(result.zip_path).iterdir())) == 3
    al.queue.close()


def test_a_damaged_image_costs_its_review_image_not_the_batch(tmp_path: Path,
                                                              frames_and_truth) -> None:
    from cv_autolabel.components.active_learning import review_dir

    al = _three_queued(tmp_path, frames_and_truth)
    damaged = al.queue.pending()[1]
    damaged.image_path.write_bytes(b"not a png any more")
    result = al.flush(tmp_path / "exports", review=True)
    assert result.images == 3 and result.zip_path.is_file()  # the zip copies the bytes as is
    assert result.review_images == 2
    assert f"{damaged.id:06d}.jpg" not in {p.name for p in review_dir(result.zip_path).iterdir()}
    al.queue.close()
