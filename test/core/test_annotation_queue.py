"""The annotation queue keeps every acknowledged frame, bounded, across threads and kill -9."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import QueueError

NAMES = ("can", "box", "bottle")
H, W = 48, 64


def make_frame(seed: int, *, depth: bool = True) -> Frame:
    """Return a deterministic random frame (depth in metres with NaN holes)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    metres = None
    if depth:
        metres = rng.uniform(0.3, 3.0, (H, W)).astype(np.float32)
        metres[rng.random((H, W)) < 0.1] = np.nan
    return Frame(rgb, metres, None, 1_000_000 + seed, "cam_optical")


def make_instances(seed: int, n: int = 3) -> Instances:
    """Return ``n`` deterministic instances: ellipses, one of them with a hole."""
    rng = np.random.default_rng(seed + 10_000)
    masks = np.zeros((n, H, W), np.uint8)
    for m in masks:
        centre = (int(rng.integers(10, W - 10)), int(rng.integers(10, H - 10)))
        axes = (int(rng.integers(3, 12)), int(rng.integers(3, 12)))
        cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    masks[0, H // 2, :] = 0  # a cut: some masks end up in two parts
    return Instances.from_masks(masks.astype(bool), rng.integers(0, len(NAMES), n),
                                rng.uniform(0, 1, n), NAMES)


def enqueue(queue: AnnotationQueue, seed: int, score: float = 0.5, *,
            depth: bool = True) -> int | None:
    return queue.enqueue(make_frame(seed, depth=depth), teacher=make_instances(seed),
                         student=make_instances(seed + 1, n=2), score=score,
                         reasons=[{"kind": "missed", "iou": 0.1, "seed": seed}],
                         source="test.bag")


def assert_same_instances(a: Instances, b: Instances) -> None:
    assert np.array_equal(a.masks, b.masks)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert a.names() == b.names() and a.class_names == b.class_names


def row_ids(queue_dir: Path, state: str | None = None) -> list[int]:
    """Return the ids of the rows in the queue's database, read with a connection of our own."""
    with contextlib.closing(sqlite3.connect(queue_dir / "queue.sqlite3")) as conn:
        rows = conn.execute("SELECT id, state FROM entries ORDER BY id").fetchall()
    return [i for i, s in rows if state in (None, s)]


def assert_consistent(queue_dir: Path) -> None:
    """Every row has readable images and decodable masks; no file lacks a row."""
    with AnnotationQueue(queue_dir) as q:  # opening deletes orphans
        referenced = set()
        for entry in map(q.get, row_ids(queue_dir)):
            assert entry.rgb().shape == (entry.height, entry.width, 3)
            assert entry.teacher.image_size == (entry.height, entry.width)
            referenced.add(entry.image_path.name)
            if entry.depth_path is not None:
                assert entry.depth().shape == (entry.height, entry.width)
                referenced.add(entry.depth_path.name)
        assert {p.name for p in q.images_dir.iterdir()} == referenced


# -- behaviour ---------------------------------------------------------------------------------


def test_round_trip_keeps_images_masks_and_metadata(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path / "q") as q:
        entry_id = enqueue(q, 3, 0.75)
        entry = q.get(entry_id)
    frame = make_frame(3)
    assert entry is not None and entry.state == "pending" and entry.exported_batch is None
    assert np.array_equal(entry.rgb(), frame.rgb)
    depth = entry.depth()
    assert np.array_equal(np.isnan(depth), np.isnan(frame.depth))
    assert np.nanmax(np.abs(depth - frame.depth)) <= 0.0005 + 1e-6  # millimetre PNG
    assert_same_instances(entry.teacher, make_instances(3))
    assert_same_instances(entry.student, make_instances(4, n=2))
    assert (entry.source, entry.stamp_ns, entry.frame_id) == ("test.bag", 1_000_003, "cam_optical")
    assert (entry.width, entry.height, entry.score) == (W, H, 0.75)
    assert entry.reasons == [{"kind": "missed", "iou": 0.1, "seed": 3}]


def test_frame_without_depth_and_without_instances(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path) as q:
        empty = Instances.empty(H, W, NAMES)
        entry = q.get(q.enqueue(make_frame(1, depth=False), teacher=empty, student=empty,
                                score=0.1, reasons=[], source="node"))
    assert entry.depth_path is None and entry.depth() is None
    assert len(entry.teacher) == 0 and entry.teacher.class_names == NAMES


def test_pending_is_in_arrival_order_and_honours_limit(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path) as q:
        ids = [enqueue(q, s, score) for s, score in enumerate([0.9, 0.1, 0.5, 0.7])]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert [e.id for e in q.pending()] == ids
        assert [e.id for e in q.pending(limit=2)] == ids[:2]
        assert q.mark_exported(ids[:2], "b1.zip") == 2
        assert q.mark_exported(ids[:2], "b2.zip") == 0  # already exported: untouched
        assert [e.id for e in q.pending()] == ids[2:]
        assert q.get(ids[0]).exported_batch == "b1.zip"


def test_drop_lowest_replaces_the_lowest_scored_entry_only_for_a_higher_score(
        tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path, max_entries=3) as q:
        ids = [enqueue(q, s, score) for s, score in enumerate([0.5, 0.2, 0.8])]
        victim_image = q.get(ids[1]).image_path
        assert enqueue(q, 10, 0.2) is None  # not higher than the lowest (ties lose)
        new = enqueue(q, 11, 0.9)
        assert new is not None and q.get(ids[1]) is None and not victim_image.exists()
        assert [e.id for e in q.pending()] == [ids[0], ids[2], new]
        stats = q.stats()
    assert (stats.pending, stats.rejected, stats.evicted, stats.dropped_by_policy) == (3, 1, 1, 2)
    assert_consistent(tmp_path)


def test_reject_new_keeps_the_old_entries(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path, max_entries=2, policy="reject_new") as q:
        ids = [enqueue(q, 0, 0.1), enqueue(q, 1, 0.2)]
        assert enqueue(q, 2, 0.99) is None
        assert [e.id for e in q.pending()] == ids
        q.mark_exported(ids[:1], "b.zip")  # exporting frees room
        assert enqueue(q, 3, 0.3) is not None
        stats = q.stats()
    assert (stats.pending, stats.exported, stats.rejected, stats.evicted) == (2, 1, 1, 0)


def test_stats_and_purge_exported(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path) as q:
        ids = [enqueue(q, s) for s in range(3)]
        images = sum(p.stat().st_size for p in q.images_dir.iterdir())
        before = q.stats()
        assert before.bytes_on_disk > images > 0
        q.mark_exported(ids[:2], "b.zip")
        assert (q.stats().pending, q.stats().exported) == (1, 2)
        assert q.purge_exported() == 2
        assert q.get(ids[0]) is None and len(list(q.images_dir.iterdir())) == 2  # rgb + depth
        assert q.stats().exported == 0
    assert_consistent(tmp_path)


def test_reserved_entries_are_never_evicted(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path, max_entries=2) as q:
        ids = [enqueue(q, 0, 0.1), enqueue(q, 1, 0.2)]
        batch = q.begin_export("b.zip", tmp_path / "b.zip")
        assert batch is not None and batch.entry_ids == tuple(ids)
        assert q.begin_export("c.zip", tmp_path / "c.zip") is None  # nothing unreserved left
        assert enqueue(q, 2, 0.9) is None  # full, and every pending entry is reserved
        assert [b.id for b in q.unfinished_exports()] == [batch.id]
        q.cancel_export(batch)
        assert q.unfinished_exports() == [] and enqueue(q, 3, 0.9) is not None
        assert q.get(ids[0]) is None  # the lowest went once released


@pytest.mark.parametrize(("change", "message"), [
    ({"teacher": Instances.empty(10, 10, NAMES)}, "teacher masks"),
    ({"student": Instances.empty(H, W + 1, NAMES)}, "student masks"),
    ({"score": float("nan")}, "finite"),
    ({"reasons": [{"bad": object()}]}, "JSON"),
])
def test_invalid_entries_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    kwargs = {"teacher": make_instances(0), "student": make_instances(1), "score": 0.5,
              "reasons": [], "source": "s", **change}
    with AnnotationQueue(tmp_path) as q:
        with pytest.raises(QueueError, match=message):
            q.enqueue(make_frame(0), **kwargs)
        assert q.stats().pending == 0 and list(q.images_dir.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_entries": 0}, "max_entries"),
    ({"policy": "drop_oldest"}, "policy"),
])
def test_invalid_settings(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(QueueError, match=message):
        AnnotationQueue(tmp_path, **kwargs)


def test_closed_queue_raises(tmp_path: Path) -> None:
    q = AnnotationQueue(tmp_path)
    q.close()
    q.close()  # idempotent
    with pytest.raises(QueueError, match="closed"):
        q.pending()


def test_orphans_are_deleted_on_open(tmp_path: Path) -> None:
    with AnnotationQueue(tmp_path) as q:
        keep = enqueue(q, 0, depth=False)
    images = tmp_path / "images"
    stray = [images / "99.png", images / f"{keep}_depth.png", images / ".7.png.tmp4242"]
    for path in stray:
        path.write_bytes(b"half")
    with AnnotationQueue(tmp_path) as q:
        assert q.orphans_removed == 3
        assert not any(p.exists() for p in stray)
        assert np.array_equal(q.get(keep).rgb(), make_frame(0).rgb)


def test_threads_and_a_second_instance_share_the_queue(tmp_path: Path) -> None:
    q1, q2 = AnnotationQueue(tmp_path), AnnotationQueue(tmp_path)  # like two processes
    ids: list[int] = []
    errors: list[BaseException] = []

    def work(q: AnnotationQueue, base: int) -> None:
        try:
            for i in range(8):
                ids.append(enqueue(q, base + i, depth=i % 2 == 0))
                q.stats()
                q.mark_exported([e.id for e in q.pending(limit=1)], f"t{base}")
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(q, 100 * k))
               for k, q in enumerate([q1, q1, q2, q2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stats = q2.stats()
    q1.close()
    q2.close()
    assert errors == [] and len(ids) == 32 and len(set(ids)) == 32
    assert stats.pending + stats.exported == 32
    assert_consistent(tmp_path)


# -- kill -9 ------------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_annotation_queue import enqueue
    from cv_autolabel.core.annotation_queue import AnnotationQueue

    q = AnnotationQueue(Path(sys.argv[1]), max_entries=int(sys.argv[3]))
    for seed in range(100000):
        entry_id = enqueue(q, seed, (seed * 37 % 101) / 101, depth=seed % 3 != 0)
        print("ACK", entry_id, seed, flush=True)
""")


def run_writer_and_kill(queue_dir: Path, acks: int, *, delay_s: float = 0.0,
                        max_entries: int = 5000,
                        on_ack: Callable[[], None] = lambda: None) -> dict[int, int]:
    """Run an enqueuing process, SIGKILL it ``delay_s`` after ``acks`` acknowledgements.

    Returns:
        id -> seed of every entry it acknowledged, including those acknowledged in the delay.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(queue_dir), str(Path(__file__).parent),
         str(max_entries)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while len(lines) < acks:
            lines.append(proc.stdout.readline())
            assert lines[-1], f"writer died early: {proc.stderr.read() if proc.stderr else ''}"
            on_ack()
        time.sleep(delay_s)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # somewhere inside an enqueue, most likely
        lines += proc.stdout.read().splitlines(keepends=True) if proc.stdout else []
        proc.wait()
    # a line cut by the kill was never an acknowledgement
    fields = [line.split() for line in lines if line.endswith("\n")]
    return {int(i): int(seed) for _, i, seed in fields if i != "None"}


@pytest.mark.parametrize(("acks", "delay_s"), [(3, 0.0), (7, 0.002), (11, 0.005), (23, 0.011)])
def test_kill_9_during_enqueue_loses_no_acknowledged_entry(tmp_path: Path, acks: int,
                                                           delay_s: float) -> None:
    acked = run_writer_and_kill(tmp_path, acks, delay_s=delay_s)
    assert_consistent(tmp_path)  # opens the queue (orphan cleanup), then checks every file
    with AnnotationQueue(tmp_path) as q:
        for entry_id, seed in acked.items():
            entry = q.get(entry_id)
            assert entry is not None, f"acknowledged entry {entry_id} lost"
            assert np.array_equal(entry.rgb(), make_frame(seed).rgb)
            assert_same_instances(entry.teacher, make_instances(seed))
        assert q.stats().pending in (len(acked), len(acked) + 1)  # + one committed, unprinted


def test_kill_9_with_evictions_keeps_the_queue_consistent(tmp_path: Path) -> None:
    acked = run_writer_and_kill(tmp_path, 30, delay_s=0.003, max_entries=8)
    assert_consistent(tmp_path)
    with AnnotationQueue(tmp_path, max_entries=8) as q:
        pending = q.pending()
        assert len(pending) == 8 and q.stats().evicted > 0
        for entry in pending:
            if entry.id in acked:
                assert np.array_equal(entry.rgb(), make_frame(acked[entry.id]).rgb)


def test_a_second_process_enqueues_while_this_one_opens_and_enqueues(tmp_path: Path) -> None:
    mine: list[int] = []

    def open_and_enqueue() -> None:  # each open runs the orphan cleanup mid-writer
        with AnnotationQueue(tmp_path) as q:
            mine.append(enqueue(q, 1000 + len(mine)))

    theirs = run_writer_and_kill(tmp_path, 12, on_ack=open_and_enqueue)
    assert not set(mine) & set(theirs) and len(mine) == 12
    assert_consistent(tmp_path)
    with AnnotationQueue(tmp_path) as q:
        for entry_id, seed in [*theirs.items(), *((i, 1000 + k) for k, i in enumerate(mine))]:
            assert np.array_equal(q.get(entry_id).rgb(), make_frame(seed).rgb)


@pytest.mark.slow
def test_kill_9_at_many_moments(tmp_path: Path) -> None:
    rng = random.Random(0)
    for round_ in range(30):
        queue_dir = tmp_path / f"q{round_}"
        acked = run_writer_and_kill(queue_dir, rng.randint(1, 30), delay_s=rng.uniform(0, 0.02))
        assert_consistent(queue_dir)
        with AnnotationQueue(queue_dir) as q:
            assert all(q.get(i) is not None for i in acked)


def test_a_chosen_batch_that_lost_entries_is_topped_up_to_its_limit(tmp_path: Path) -> None:
    q = AnnotationQueue(tmp_path / "q")
    ids = [enqueue(q, n, score) for n, score in enumerate((0.9, 0.8, 0.7, 0.6))]
    # a flush --diverse chose ids[1] and entry 999, which was evicted while it chose
    batch = q.begin_export("b.zip", tmp_path / "b.zip", 2, ids=[ids[1], 999])
    assert batch.entry_ids == (ids[0], ids[1])  # the choice kept, the best other added
    q.cancel_export(batch)
    assert q.begin_export("c.zip", tmp_path / "c.zip", ids=[ids[3]]).entry_ids == (ids[3],)
    with pytest.raises(QueueError, match="at least 1"):
        q.begin_export("d.zip", tmp_path / "d.zip", 0)
    q.close()
