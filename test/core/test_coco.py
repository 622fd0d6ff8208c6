"""The COCO flush writes zips CVAT imports, and exports every frame exactly once, kill -9 or not."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cv_autolabel.core import coco as coco_module
from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import (
    POLYGON_MIN_IOU,
    flush,
    mask_annotation,
    read_coco_zip,
    simple_polygon,
)
from cv_autolabel.core.instances import Instances, mask_iou
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CocoError

CLASSES = ("box", "can", "bottle")  # CVAT's label order, unlike the model's below
MODEL_NAMES = ("can", "bottle", "box", "hand")
H, W = 60, 80


def blank() -> np.ndarray:
    return np.zeros((H, W), np.uint8)


def rect(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = blank()
    m[y:y + h, x:x + w] = 1
    return m.astype(bool)


def disc(cx: int, cy: int, r: int) -> np.ndarray:
    return cv2.circle(blank(), (cx, cy), r, 1, -1).astype(bool)


def ring() -> np.ndarray:
    return disc(40, 30, 15) & ~disc(40, 30, 6)


def two_parts() -> np.ndarray:
    return rect(2, 2, 10, 10) | rect(50, 40, 12, 8)


def ellipse() -> np.ndarray:
    return cv2.ellipse(blank(), (40, 30), (30, 10), 25, 0, 360, 1, -1).astype(bool)


def instances(masks: list[np.ndarray], names: list[str]) -> Instances:
    ids = [MODEL_NAMES.index(n) for n in names]
    return Instances.from_masks(np.stack(masks), np.array(ids), np.full(len(ids), 0.8),
                                MODEL_NAMES)


def frame(seed: int) -> Frame:
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return Frame(rgb, None, None, 1_700_000_000_000_000_000 + seed, "cam")


def add(q: AnnotationQueue, seed: int, teacher: Instances, student: Instances | None = None,
        score: float = 0.5) -> int:
    student = student if student is not None else instances([rect(1, 1, 5, 5)], ["hand"])
    entry_id = q.enqueue(frame(seed), teacher=teacher, student=student, score=score, reasons=[],
                         source="bag")
    assert entry_id is not None
    return entry_id


VARIED = [
    ([rect(10, 10, 20, 15), disc(60, 40, 8)], ["can", "box"]),
    ([ellipse(), ring(), two_parts()], ["bottle", "can", "box"]),
    ([rect(5, 5, 1, 1), rect(0, 0, W, 2), disc(30, 30, 2)], ["can", "can", "bottle"]),
]


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[AnnotationQueue]:
    with AnnotationQueue(tmp_path / "queue") as q:
        yield q


def load(zip_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = read_coco_zip(zip_path)
        coco.createIndex()
    return coco


def row_ids(queue_dir: Path, state: str | None = None) -> list[int]:
    """Return the ids of the rows in the queue's database, read with a connection of our own."""
    with contextlib.closing(sqlite3.connect(queue_dir / "queue.sqlite3")) as conn:
        rows = conn.execute("SELECT id, state FROM entries ORDER BY id").fetchall()
    return [i for i, s in rows if state in (None, s)]


def exported_ids(zip_paths: list[Path]) -> list[int]:
    return [img["id"] for z in zip_paths for img in read_coco_zip(z)["images"]]


# -- format ------------------------------------------------------------------------------------


def test_every_mask_decodes_back_with_pycocotools(queue: AnnotationQueue, tmp_path: Path) -> None:
    ids = [add(queue, i, instances(masks, names)) for i, (masks, names) in enumerate(VARIED)]
    result = flush(queue, tmp_path / "b1.zip", class_names=CLASSES)
    assert result.entry_ids == tuple(ids) and result.images == 3 and result.annotations == 8
    coco = load(tmp_path / "b1.zip")
    for entry_id, (masks, names) in zip(ids, VARIED):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[entry_id]))
        assert len(anns) == len(masks)
        for ann, mask, name in zip(anns, masks, names):
            decoded = coco.annToMask(ann).astype(bool)
            assert coco.loadCats(ann["category_id"])[0]["name"] == name
            assert ann["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            if ann["iscrowd"]:
                assert isinstance(ann["segmentation"]["counts"], list)
                assert ann["segmentation"]["size"] == [H, W]
                assert np.array_equal(decoded, mask)
            else:
                assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
                assert mask_iou(decoded[None], mask[None])[0, 0] >= POLYGON_MIN_IOU


def test_categories_are_one_based_in_configured_order(queue: AnnotationQueue,
                                                      tmp_path: Path) -> None:
    add(queue, 0, instances([rect(1, 1, 9, 9), rect(20, 20, 9, 9)], ["bottle", "box"]))
    flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    dataset = read_coco_zip(tmp_path / "b.zip")
    assert dataset["categories"] == [{"id": 1, "name": "box", "supercategory": ""},
                                     {"id": 2, "name": "can", "supercategory": ""},
                                     {"id": 3, "name": "bottle", "supercategory": ""}]
    assert [a["category_id"] for a in dataset["annotations"]] == [3, 1]
    assert [a["id"] for a in dataset["annotations"]] == [1, 2]
    assert {"info", "licenses"} <= dataset.keys()


def test_images_are_in_the_zip_under_images_default(queue: AnnotationQueue,
                                                    tmp_path: Path) -> None:
    ids = [add(queue, i, instances([rect(i, i, 5, 5)], ["can"])) for i in range(3)]
    flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        names = set(zf.namelist())
        dataset = read_coco_zip(tmp_path / "b.zip")
        for img, entry_id in zip(dataset["images"], ids):
            assert img["id"] == entry_id and (img["width"], img["height"]) == (W, H)
            assert img["file_name"] == f"{entry_id:06d}_{frame(entry_id - 1).stamp_ns}.png"
            data = np.frombuffer(zf.read(f"images/default/{img['file_name']}"), np.uint8)
            rgb = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert np.array_equal(rgb, frame(entry_id - 1).rgb)
    assert names == {"annotations/instances_default.json"} | {
        f"images/default/{img['file_name']}" for img in dataset["images"]}


@pytest.mark.parametrize(("mask", "iscrowd"), [
    (rect(10, 10, 20, 15), 0),
    (disc(40, 30, 12), 0),
    (ellipse(), 0),
    (rect(3, 3, 1, 1), 0),
    (rect(0, 0, W, H), 0),
    (ring(), 1),  # a hole
    (two_parts(), 1),  # two parts
    (rect(10, 10, 20, 20) & ~rect(15, 15, 1, 1), 1),  # a one-pixel hole
])
def test_hole_or_several_parts_make_an_rle_crowd(mask: np.ndarray, iscrowd: int) -> None:
    ann = mask_annotation(mask, ann_id=1, image_id=1, category_id=1)
    assert ann["iscrowd"] == iscrowd
    assert isinstance(ann["segmentation"], dict if iscrowd else list)


def test_polygons_follow_pixel_edges() -> None:
    assert simple_polygon(rect(2, 3, 4, 5)) == [2.0, 3.0, 2.0, 8.0, 6.0, 8.0, 6.0, 3.0]
    assert simple_polygon(blank().astype(bool)) is None


def test_empty_masks_and_unknown_classes_are_skipped_and_counted(queue: AnnotationQueue,
                                                                 tmp_path: Path) -> None:
    empty = blank().astype(bool)
    add(queue, 0, instances([rect(1, 1, 4, 4), empty, rect(9, 9, 4, 4), empty],
                            ["can", "box", "hand", "hand"]))
    result = flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    assert (result.annotations, result.skipped_empty, result.skipped_unknown_class) == (1, 1, 2)
    assert len(read_coco_zip(tmp_path / "b.zip")["annotations"]) == 1


def test_student_predictions_can_be_exported(queue: AnnotationQueue, tmp_path: Path) -> None:
    add(queue, 0, instances([rect(1, 1, 4, 4)], ["can"]),
        student=instances([rect(20, 20, 5, 5), rect(40, 40, 5, 5)], ["box", "bottle"]))
    result = flush(queue, tmp_path / "b.zip", class_names=CLASSES, annotations="student")
    assert result.annotations == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"class_names": []}, "class_names"),
    ({"class_names": ["a", "a"]}, "class_names"),
    ({"class_names": CLASSES, "annotations": "gt"}, "annotations"),
])
def test_invalid_arguments(queue: AnnotationQueue, tmp_path: Path, kwargs: dict,
                           message: str) -> None:
    with pytest.raises(CocoError, match=message):
        flush(queue, tmp_path / "b.zip", **kwargs)


def test_read_coco_zip_rejects_broken_zips(tmp_path: Path) -> None:
    (tmp_path / "not.zip").write_bytes(b"nope")
    with pytest.raises(CocoError, match="cannot read"):
        read_coco_zip(tmp_path / "not.zip")
    with zipfile.ZipFile(tmp_path / "missing.zip", "w") as zf:
        zf.writestr("annotations/instances_default.json",
                    '{"images": [{"id": 1, "file_name": "a.png"}], "annotations": []}')
    with pytest.raises(CocoError, match="lacks images"):
        read_coco_zip(tmp_path / "missing.zip")


# -- exactly once ------------------------------------------------------------------------------


def test_flush_is_idempotent_and_exports_in_id_order(queue: AnnotationQueue,
                                                     tmp_path: Path) -> None:
    ids = [add(queue, i, instances([rect(i, 0, 3, 3)], ["can"])) for i in range(5)]
    first = flush(queue, tmp_path / "b1.zip", class_names=CLASSES, limit=2)
    assert first.entry_ids == tuple(ids[:2])
    second = flush(queue, tmp_path / "b2.zip", class_names=CLASSES)
    assert second.entry_ids == tuple(ids[2:])
    again = flush(queue, tmp_path / "b3.zip", class_names=CLASSES)
    assert again.zip_path is None and again.images == 0 and not (tmp_path / "b3.zip").exists()
    assert queue.get(ids[0]).exported_batch == "b1.zip"
    assert queue.get(ids[4]).exported_batch == "b2.zip"
    new = add(queue, 9, instances([rect(1, 1, 3, 3)], ["box"]))
    assert flush(queue, tmp_path / "b4.zip", class_names=CLASSES).entry_ids == (new,)


def test_flush_counts_the_batch_annotations_per_class(queue: AnnotationQueue,
                                                     tmp_path: Path) -> None:
    add(queue, 0, instances([rect(0, 0, 3, 3), rect(5, 5, 3, 3)], ["can", "can"]))
    add(queue, 1, instances([rect(0, 0, 3, 3)], ["box"]))
    result = flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    coco = load(tmp_path / "b.zip")
    assert result.annotations_per_class == {
        c["name"]: len(coco.getAnnIds(catIds=[c["id"]])) for c in coco.loadCats(coco.getCatIds())}
    assert result.annotations_per_class == dict.fromkeys(CLASSES, 0) | {"can": 2, "box": 1}
    assert "can 2" in result.class_counts() and "box 1" in result.class_counts()


def test_a_limited_flush_takes_the_highest_scores_in_arrival_order(queue: AnnotationQueue,
                                                                   tmp_path: Path) -> None:
    scores = [0.3, 0.9, 0.5, 0.9, 0.7]
    ids = [add(queue, i, instances([rect(i, 0, 3, 3)], ["can"]), score=s)
           for i, s in enumerate(scores)]
    first = flush(queue, tmp_path / "b1.zip", class_names=CLASSES, limit=3)
    assert first.entry_ids == (ids[1], ids[3], ids[4])  # 0.9, 0.9, 0.7, listed by arrival
    images = read_coco_zip(tmp_path / "b1.zip")["images"]
    assert len(images) == 3
    assert flush(queue, tmp_path / "b2.zip", class_names=CLASSES,
                 limit=1).entry_ids == (ids[2],)  # 0.5 before 0.3


def _scene_frame(scene: int, view: int) -> Frame:
    """A view of one of two scenes: a smooth gradient (0: left to right, 1: top to bottom)
    plus a little noise, so views of one scene look alike and the scenes do not."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = (xx / W if scene == 0 else yy / H) * 200
    noise = np.random.default_rng(view).normal(0, 2, (H, W))
    rgb = np.repeat(np.clip(base + noise, 0, 255).astype(np.uint8)[..., None], 3, 2)
    return Frame(rgb, None, None, 1_700_000_000_000_000_000 + view, "cam")


def test_a_diverse_flush_takes_the_best_frame_of_each_look_alike_group(
        queue: AnnotationQueue, tmp_path: Path) -> None:
    teacher = instances([rect(1, 1, 3, 3)], ["can"])
    student = instances([rect(1, 1, 5, 5)], ["hand"])
    # scene 0 (a new product, every view disagrees): 6 high scores; scene 1: 3 lower ones
    plan = [(0, 0.90), (0, 0.95), (1, 0.40), (0, 0.92), (1, 0.60), (0, 0.91), (0, 0.93),
            (1, 0.50), (0, 0.94)]
    ids = [queue.enqueue(_scene_frame(sc, v), teacher=teacher, student=student, score=score,
                         reasons=[], source="bag") for v, (sc, score) in enumerate(plan)]
    top = flush(queue, tmp_path / "top.zip", class_names=CLASSES, limit=2)
    assert top.entry_ids == (ids[1], ids[8])  # 0.95 and 0.94: both scene 0
    with AnnotationQueue(tmp_path / "queue2") as q2:
        ids2 = [q2.enqueue(_scene_frame(sc, v), teacher=teacher, student=student, score=score,
                           reasons=[], source="bag") for v, (sc, score) in enumerate(plan)]
        diverse = flush(q2, tmp_path / "diverse.zip", class_names=CLASSES, limit=2,
                        diverse=True)
        assert diverse.entry_ids == (ids2[1], ids2[4])  # best of scene 0 (0.95), of 1 (0.60)
        rest = flush(q2, tmp_path / "rest.zip", class_names=CLASSES, limit=20, diverse=True)
        assert len(rest.entry_ids) == 7  # fewer pending than the limit: all of them


def test_a_damaged_image_is_left_out_of_a_diverse_choice_not_blocking_it(
        queue: AnnotationQueue, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    teacher = instances([rect(1, 1, 3, 3)], ["can"])
    student = instances([rect(1, 1, 5, 5)], ["hand"])
    ids = [queue.enqueue(_scene_frame(v % 2, v), teacher=teacher, student=student,
                         score=0.5 + 0.1 * v, reasons=[], source="bag") for v in range(4)]
    queue.get(ids[3]).image_path.write_bytes(b"not a png")  # the best score, now unreadable
    with caplog.at_level("WARNING"):
        result = flush(queue, tmp_path / "d.zip", class_names=CLASSES, limit=2, diverse=True)
    assert result.entry_ids == (ids[1], ids[2])  # best readable of each scene
    assert f"leaving entry {ids[3]} out" in caplog.text
    assert [e.id for e in queue.pending()] == [ids[0], ids[3]]  # nothing lost


def test_an_existing_zip_is_never_overwritten(queue: AnnotationQueue, tmp_path: Path) -> None:
    add(queue, 0, instances([rect(1, 1, 3, 3)], ["can"]))
    (tmp_path / "b.zip").write_bytes(b"earlier batch")
    with pytest.raises(CocoError, match="exists"):
        flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    assert (tmp_path / "b.zip").read_bytes() == b"earlier batch"
    assert queue.stats().pending == 1 and queue.unfinished_exports() == []


def test_a_failed_validation_writes_nothing_and_keeps_entries_pending(
        queue: AnnotationQueue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add(queue, 0, instances([rect(10, 10, 20, 20)], ["can"]))
    monkeypatch.setattr(coco_module, "simple_polygon", lambda m: [0.0, 0.0, 0.0, 3.0, 3.0, 3.0])
    with pytest.raises(CocoError, match="IoU"):
        flush(queue, tmp_path / "b.zip", class_names=CLASSES)
    assert list(tmp_path.glob("*b.zip*")) == [] and queue.unfinished_exports() == []
    assert queue.stats().pending == 1
    monkeypatch.undo()
    assert flush(queue, tmp_path / "b.zip", class_names=CLASSES).images == 1


_FLUSHER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from cv_autolabel.core import annotation_queue, coco

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[3] == "after_rename":  # the zip is in place, the entries not yet marked
        annotation_queue.AnnotationQueue.finish_export = die
    elif sys.argv[3] == "before_rename":  # the temp zip is written and fsynced
        os.replace = die
    q = annotation_queue.AnnotationQueue(Path(sys.argv[1]))
    coco.flush(q, Path(sys.argv[2]), class_names=("box", "can", "bottle"))
""")


def kill_flush_at(queue_dir: Path, out_zip: Path, moment: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _FLUSHER, str(queue_dir), str(out_zip), moment],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("moment", ["before_rename", "after_rename"])
def test_kill_9_during_flush_then_flush_again_exports_each_entry_once(
        tmp_path: Path, moment: str) -> None:
    with AnnotationQueue(tmp_path / "q") as q:
        ids = [add(q, i, instances(*VARIED[i % 3])) for i in range(6)]
    kill_flush_at(tmp_path / "q", tmp_path / "b1.zip", moment)
    assert (tmp_path / "b1.zip").exists() == (moment == "after_rename")
    assert bool(list(tmp_path.glob(".b1.zip.tmp*"))) == (moment == "before_rename")
    with AnnotationQueue(tmp_path / "q") as q:
        assert q.stats().pending == 6  # nothing was marked before the kill
        result = flush(q, tmp_path / "b2.zip", class_names=CLASSES)
        assert result.recovered == 1
        batches = {q.get(i).exported_batch for i in ids}
        assert q.stats().pending == 0 and q.unfinished_exports() == []
    zips = sorted(tmp_path.glob("*.zip"))
    assert sorted(exported_ids(zips)) == ids  # every entry in exactly one existing zip
    assert batches == {zips[0].name} and list(tmp_path.glob(".*tmp*")) == []


_LOOP = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from cv_autolabel.core.annotation_queue import AnnotationQueue
    from cv_autolabel.core.coco import flush
    from cv_autolabel.core.instances import Instances
    from cv_autolabel.core.types import Frame

    q = AnnotationQueue(Path(sys.argv[1]))
    rng = np.random.default_rng(int(sys.argv[3]))
    masks = np.zeros((2, 60, 80), bool); masks[0, 5:20, 5:30] = True; masks[1, 30:50, 40:45] = True
    inst = Instances.from_masks(masks, np.array([0, 1]), np.array([0.9, 0.8]), ("box", "can"))
    for n in range(100000):
        for _ in range(3):
            rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
            q.enqueue(Frame(rgb, None, None, n, "cam"), teacher=inst, student=inst, score=0.5,
                      reasons=[], source="loop")
        flush(q, Path(sys.argv[2]) / f"batch_{sys.argv[3]}_{n:05d}.zip",
              class_names=("box", "can", "bottle"))
        print("FLUSHED", n, flush=True)
""")


def kill_loop_at_random(queue_dir: Path, out_dir: Path, seed: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _LOOP, str(queue_dir), str(out_dir), str(seed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for _ in range(2):  # let it flush a couple of times, then kill at a random moment
            assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
        time.sleep(random.Random(seed).uniform(0.0, 0.15))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def check_exactly_once(queue_dir: Path, out_dir: Path, seed: int) -> None:
    with AnnotationQueue(queue_dir) as q:
        flush(q, out_dir / f"final_{seed}.zip", class_names=CLASSES)
        assert q.stats().pending == 0 and q.unfinished_exports() == []
    zips = sorted(out_dir.glob("*.zip"))
    assert sorted(exported_ids(zips)) == row_ids(queue_dir, "exported") == row_ids(queue_dir)
    assert list(out_dir.glob(".*tmp*")) == []


def test_kill_9_at_a_random_moment_of_a_flush_loop(tmp_path: Path) -> None:
    kill_loop_at_random(tmp_path / "q", tmp_path, seed=1)
    check_exactly_once(tmp_path / "q", tmp_path, seed=1)


@pytest.mark.slow
def test_kill_9_at_many_random_moments_of_a_flush_loop(tmp_path: Path) -> None:
    for seed in range(2, 12):
        kill_loop_at_random(tmp_path / "q", tmp_path, seed)
        check_exactly_once(tmp_path / "q", tmp_path, seed)


def test_flush_from_another_thread_while_enqueuing(queue: AnnotationQueue,
                                                   tmp_path: Path) -> None:
    done = threading.Event()
    ids: list[int] = []

    def worker() -> None:
        for i in range(30):
            ids.append(add(queue, i, instances([rect(i, 1, 4, 4)], ["can"])))
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    n = 0
    while not done.is_set():
        flush(queue, tmp_path / f"b{n:03d}.zip", class_names=CLASSES)
        n += 1
    thread.join()
    flush(queue, tmp_path / "last.zip", class_names=CLASSES)
    assert sorted(exported_ids(sorted(tmp_path.glob("*.zip")))) == sorted(ids)


def test_a_flush_limit_below_one_is_refused(queue: AnnotationQueue, tmp_path: Path) -> None:
    add(queue, 0, instances([rect(0, 0, 3, 3)], ["can"]))
    with pytest.raises(CocoError, match="limit must be at least 1"):
        flush(queue, tmp_path / "b.zip", class_names=CLASSES, limit=0)
    assert len(queue.pending()) == 1 and not (tmp_path / "b.zip").exists()
