"""A crash-safe, bounded queue of frames waiting to be labelled (exported to CVAT as COCO).

Layout of ``queue_dir``: ``queue.sqlite3`` (SQLite in WAL mode, ``synchronous=FULL``),
``images/<id>.png`` (RGB) and ``images/<id>_depth.png`` (uint16 millimetres, 0 = invalid;
only when the frame has depth), and ``export.lock`` (serialises exports).

Durability: ``enqueue`` encodes the images, takes SQLite's write lock, inserts the row,
writes the images atomically (temp file, fsync, rename, fsync the directory) and only then
commits; the id is returned after the commit. So after ``kill -9`` at any moment every
acknowledged entry is there with readable images, and no row is ever visible without its
files. A crash before the commit leaves at most orphan image files, which opening the queue
deletes.

Bound: at most ``max_entries`` pending entries. Policy ``"drop_lowest"`` (default): when full,
a new entry scoring higher than the lowest-scored pending entry replaces it (the victim's
files are deleted after the commit), any other new entry is rejected. Policy
``"reject_new"``: when full, every new entry is rejected. ``enqueue`` returns None on
rejection; rejections and evictions are counted in ``stats()``. Entries reserved by an
export in progress are never evicted.

Exports are journalled (``begin_export`` / ``finish_export``) so that a writer killed between
writing its zip and marking the entries exported can be rolled forward by the next one:
see ``cv_autolabel.core.coco.flush``.

Concurrency: one connection behind a lock, so a worker thread may enqueue while a service
thread flushes. Other processes may open the same directory: SQLite serialises the writers
(WAL lets readers proceed), orphan cleanup runs under the write lock so it never deletes the
files of another process's uncommitted entry, and exports take the ``export.lock`` flock.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from cv_autolabel.core.fsio import depth_to_png_mm, encode_image, write_bytes_atomic
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.rle import instances_from_json, instances_to_json
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import QueueError

Policy = Literal["drop_lowest", "reject_new"]
POLICIES: tuple[str, ...] = ("drop_lowest", "reject_new")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('writing', 'done')),
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_ns INTEGER NOT NULL,
    source TEXT NOT NULL,
    stamp_ns INTEGER NOT NULL,
    frame_id TEXT NOT NULL,
    image_path TEXT NOT NULL,
    depth_path TEXT,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    teacher TEXT NOT NULL,
    student TEXT NOT NULL,
    score REAL NOT NULL,
    reasons TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'exported')),
    batch_id INTEGER REFERENCES batches(id),
    exported_batch TEXT
);
CREATE INDEX IF NOT EXISTS entries_state_score ON entries (state, score);
CREATE INDEX IF NOT EXISTS entries_batch ON entries (batch_id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_INSERT = """INSERT INTO entries (created_ns, source, stamp_ns, frame_id, image_path, width,
    height, teacher, student, score, reasons) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?)"""


@dataclass(frozen=True)
class QueueEntry:
    """One queued frame; images and instances are decoded on each access.

    Attributes:
        id: the entry's id (1-based, never reused once committed).
        created_ns: enqueue wall time, integer nanoseconds since the epoch.
        source: where the frame came from (bag path, node name).
        stamp_ns, frame_id: header stamp and optical frame of the colour image.
        image_path: absolute path of the RGB PNG.
        depth_path: absolute path of the uint16 millimetre depth PNG, or None.
        width, height: image size in pixels.
        score: labelling priority (higher = more worth labelling; the active-learning
            component queues ``core.selection.labelling_priority``).
        reasons: the JSON list of disagreement reasons given at enqueue.
        state: ``"pending"`` or ``"exported"``.
        exported_batch: name of the batch (zip) it was exported in, or None.
        teacher_json, student_json: the serialised instances (see ``core.rle``).
    """

    id: int
    created_ns: int
    source: str
    stamp_ns: int
    frame_id: str
    image_path: Path
    depth_path: Path | None
    width: int
    height: int
    score: float
    reasons: list[Any]
    state: str
    exported_batch: str | None
    teacher_json: str = field(repr=False)
    student_json: str = field(repr=False)

    @property
    def teacher(self) -> Instances:
        """The teacher's instances (the pre-annotations to correct)."""
        return instances_from_json(self.teacher_json)

    @property
    def student(self) -> Instances:
        """The student's predictions."""
        return instances_from_json(self.student_json)

    def rgb(self) -> np.ndarray:
        """Load the colour image, (H, W, 3) uint8 RGB."""
        bgr = cv2.imread(str(self.image_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise QueueError(f"cannot read queued image {self.image_path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def depth(self) -> np.ndarray | None:
        """Load the depth in metres, (H, W) float32 with NaN where invalid; None if absent."""
        if self.depth_path is None:
            return None
        mm = cv2.imread(str(self.depth_path), cv2.IMREAD_UNCHANGED)
        if mm is None:
            raise QueueError(f"cannot read queued depth {self.depth_path}")
        metres = mm.astype(np.float32) / 1000.0
        metres[mm == 0] = np.nan
        return metres


@dataclass(frozen=True)
class QueueStats:
    """Counts of a queue; ``rejected`` and ``evicted`` are the size policy's drops."""

    pending: int
    exported: int
    rejected: int
    evicted: int
    bytes_on_disk: int

    @property
    def dropped_by_policy(self) -> int:
        """Entries lost to the bound: new ones rejected plus pending ones evicted."""
        return self.rejected + self.evicted


@dataclass(frozen=True)
class ExportBatch:
    """Entries reserved for one export (zip) that has not been marked done yet."""

    id: int
    name: str
    path: Path
    entry_ids: tuple[int, ...]


class AnnotationQueue:
    """Crash-safe bounded queue of frames to label; see the module docstring.

    Args:
        queue_dir: directory of the queue (created if missing).
        max_entries: most pending entries kept.
        policy: what to do when full, ``"drop_lowest"`` or ``"reject_new"``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, AnnotationQueue(Path(d)) as q:
        ...     q.stats().pending
        0
    """

    def __init__(self, queue_dir: Path, *, max_entries: int = 5000,
                 policy: Policy = "drop_lowest") -> None:
        if max_entries < 1:
            raise QueueError(f"max_entries must be at least 1, got {max_entries}")
        if policy not in POLICIES:
            raise QueueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.queue_dir = Path(queue_dir)
        self.images_dir = self.queue_dir / "images"
        self.db_path = self.queue_dir / "queue.sqlite3"
        self.max_entries = max_entries
        self.policy = policy
        self._lock = threading.RLock()
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._conn: sqlite3.Connection | None = self._connect()
        #: Orphan files (of entries never committed) deleted when the queue was opened.
        self.orphans_removed = self._remove_orphans()

    def __enter__(self) -> AnnotationQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; further calls raise QueueError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writing ---------------------------------------------------------------------------

    def enqueue(self, frame: Frame, *, teacher: Instances, student: Instances, score: float,
                reasons: Sequence[Any], source: str) -> int | None:
        """Store a frame durably; return its id once committed, or None if the policy rejects it.

        Raises:
            QueueError: instances sized unlike the frame, a non-finite score, reasons that
                are not JSON-serialisable, or a database or file error.
        """
        values = self._row_values(frame, teacher, student, score, reasons, source)
        with self._read() as conn:  # a hint only: spares encoding a frame bound to be rejected
            hinted, _ = self._admission(conn, float(score))
        blobs = _encode_images(frame) if hinted else None
        written: list[Path] = []
        try:
            with self._write() as conn:
                accept, victim = self._admission(conn, float(score))
                if not accept or blobs is None:
                    self._bump(conn, "rejected")
                    return None
                victim_files = self._evict(conn, victim) if victim is not None else []
                entry_id = int(conn.execute(_INSERT, values).lastrowid or 0)
                written = self._write_images(entry_id, blobs)
                rel = [f"images/{p.name}" for p in written]
                conn.execute("UPDATE entries SET image_path = ?, depth_path = ? WHERE id = ?",
                             (rel[0], rel[1] if len(rel) > 1 else None, entry_id))
        except BaseException:
            _unlink_all(written)  # the row rolled back: its files are orphans now
            raise
        _unlink_all(victim_files)  # after the commit, so a crash never leaves a row without files
        return entry_id

    def mark_exported(self, ids: Sequence[int], batch_name: str) -> int:
        """Mark pending entries exported in ``batch_name`` (one transaction); return how many."""
        with self._write() as conn:
            cur = conn.executemany(
                "UPDATE entries SET state = 'exported', exported_batch = ? "
                "WHERE id = ? AND state = 'pending'", [(batch_name, int(i)) for i in ids])
            return cur.rowcount

    def purge_exported(self) -> int:
        """Delete exported entries and their files; return how many."""
        with self._write() as conn:
            rows = conn.execute("SELECT image_path, depth_path FROM entries "
                                "WHERE state = 'exported'").fetchall()
            conn.execute("DELETE FROM entries WHERE state = 'exported'")
        _unlink_all(self.queue_dir / p for row in rows for p in row if p)
        return len(rows)

    # -- reading ---------------------------------------------------------------------------

    def pending(self, limit: int | None = None) -> list[QueueEntry]:
        """Return pending entries in id (arrival) order, at most ``limit``."""
        return self._select("WHERE state = 'pending' ORDER BY id LIMIT ?",
                            (-1 if limit is None else int(limit),))

    def get(self, entry_id: int) -> QueueEntry | None:
        """Return one entry, or None if there is no such id."""
        rows = self._select("WHERE id = ?", (int(entry_id),))
        return rows[0] if rows else None

    def stats(self) -> QueueStats:
        """Return pending, exported, rejected and evicted counts and the bytes on disk."""
        with self._read() as conn:
            states = dict(conn.execute("SELECT state, COUNT(*) FROM entries GROUP BY state"))
            counters = dict(conn.execute("SELECT name, value FROM counters"))
        files = [*self.images_dir.iterdir(), *self.queue_dir.glob("queue.sqlite3*")]
        size = sum(_file_size(p) for p in files)
        return QueueStats(states.get("pending", 0), states.get("exported", 0),
                          counters.get("rejected", 0), counters.get("evicted", 0), size)

    # -- export journal (used by core.coco.flush) ------------------------------------------

    @contextmanager
    def export_lock(self) -> Iterator[None]:
        """Hold the queue's export lock (an flock; waits for another exporter to finish)."""
        fd = os.open(self.queue_dir / "export.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock; the kernel also drops it on kill -9

    def begin_export(self, name: str, path: Path, limit: int | None = None, *,
                     ids: Sequence[int] | None = None) -> ExportBatch | None:
        """Reserve unreserved pending entries for an export; None if there are none.

        With a ``limit``, the highest-scoring entries are taken (the oldest first among equal
        scores): a labelling budget goes to the frames the student gets most wrong. ``ids``
        chooses the entries instead (those no longer pending or already reserved are left
        out); with a ``limit`` too, a choice that lost entries meanwhile (evicted while it
        was being made) is topped up with the highest-scoring others, so the batch still
        holds ``limit`` frames when the queue has them. The batch lists its ids in arrival
        order.

        Raises:
            QueueError: ``limit`` below 1.
        """
        if limit is not None and limit < 1:
            raise QueueError(f"an export limit must be at least 1, got {limit}")
        with self._write() as conn:
            free = [r[0] for r in conn.execute(
                "SELECT id FROM entries WHERE state = 'pending' AND batch_id IS NULL "
                "ORDER BY score DESC, id LIMIT ?",
                (-1 if limit is None or ids is not None else int(limit),))]
            if ids is not None:
                wanted = {int(i) for i in ids}
                kept = [i for i in free if i in wanted]
                if limit is not None and len(kept) < limit:
                    kept += [i for i in free if i not in wanted][:limit - len(kept)]
                free = kept
            chosen = tuple(sorted(free))
            if not chosen:
                return None
            batch_id = int(conn.execute(
                "INSERT INTO batches (name, path, state, created_ns) VALUES (?, ?, 'writing', ?)",
                (name, str(path), time.time_ns())).lastrowid or 0)
            conn.executemany("UPDATE entries SET batch_id = ? WHERE id = ?",
                             [(batch_id, i) for i in chosen])
        return ExportBatch(batch_id, name, Path(path), chosen)

    def finish_export(self, batch: ExportBatch) -> int:
        """Mark a batch's entries exported and the batch done, in one transaction."""
        with self._write() as conn:
            cur = conn.execute("UPDATE entries SET state = 'exported', exported_batch = ? "
                               "WHERE batch_id = ? AND state = 'pending'", (batch.name, batch.id))
            conn.execute("UPDATE batches SET state = 'done' WHERE id = ?", (batch.id,))
            return cur.rowcount

    def cancel_export(self, batch: ExportBatch) -> None:
        """Release a batch's entries back to pending and forget the batch."""
        with self._write() as conn:
            conn.execute("UPDATE entries SET batch_id = NULL WHERE batch_id = ? "
                         "AND state = 'pending'", (batch.id,))
            conn.execute("DELETE FROM batches WHERE id = ?", (batch.id,))

    def unfinished_exports(self) -> list[ExportBatch]:
        """Return exports begun but neither finished nor cancelled (their writer died)."""
        with self._read() as conn:
            batches = conn.execute("SELECT id, name, path FROM batches WHERE state = 'writing' "
                                   "ORDER BY id").fetchall()
            return [ExportBatch(b, name, Path(path), tuple(r[0] for r in conn.execute(
                "SELECT id FROM entries WHERE batch_id = ? ORDER BY id", (b,))))
                for b, name, path in batches]

    # -- internals -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk when it returns, so an acknowledged id survives a
            # power cut too, not only kill -9
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise QueueError(f"cannot open annotation queue {self.db_path}: {err}") from err
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise QueueError(f"annotation queue {self.queue_dir} is closed")
            try:
                yield self._conn
            except sqlite3.Error as err:
                raise QueueError(f"annotation queue {self.db_path}: {err}") from err

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Run the block in an IMMEDIATE transaction, committed if it completes."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _row_values(self, frame: Frame, teacher: Instances, student: Instances, score: float,
                    reasons: Sequence[Any], source: str) -> tuple[Any, ...]:
        size = frame.rgb.shape[:2]
        for name, inst in (("teacher", teacher), ("student", student)):
            if inst.image_size != size:
                raise QueueError(f"{name} masks are {inst.image_size}, the frame is {size}")
        if not math.isfinite(score):
            raise QueueError(f"score must be finite, got {score}")
        try:
            reasons_json = json.dumps(list(reasons))
        except (TypeError, ValueError) as err:
            raise QueueError(f"reasons must be JSON-serialisable: {err}") from err
        return (time.time_ns(), source, int(frame.stamp_ns), frame.frame_id, size[1], size[0],
                instances_to_json(teacher), instances_to_json(student), float(score),
                reasons_json)

    def _admission(self, conn: sqlite3.Connection, score: float) -> tuple[bool, int | None]:
        """Return (accept, id of the entry to evict) for a new entry with ``score``."""
        pending = conn.execute("SELECT COUNT(*) FROM entries WHERE state = 'pending'").fetchone()
        if pending[0] < self.max_entries:
            return True, None
        if self.policy == "reject_new":
            return False, None
        lowest = conn.execute("SELECT id, score FROM entries WHERE state = 'pending' AND "
                              "batch_id IS NULL ORDER BY score, id LIMIT 1").fetchone()
        if lowest is None or score <= lowest[1]:
            return False, None
        return True, int(lowest[0])

    def _evict(self, conn: sqlite3.Connection, entry_id: int) -> list[Path]:
        row = conn.execute("SELECT image_path, depth_path FROM entries WHERE id = ?",
                           (entry_id,)).fetchone()
        conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
        self._bump(conn, "evicted")
        return [self.queue_dir / p for p in row if p]

    @staticmethod
    def _bump(conn: sqlite3.Connection, name: str) -> None:
        conn.execute("INSERT INTO counters (name, value) VALUES (?, 1) "
                     "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))

    def _write_images(self, entry_id: int, blobs: tuple[bytes, bytes | None]) -> list[Path]:
        """Write an entry's encoded images durably; return their paths (RGB first)."""
        rgb_path = self.images_dir / f"{entry_id}.png"
        depth_path = self.images_dir / f"{entry_id}_depth.png"
        rgb_png, depth_png = blobs
        write_bytes_atomic(rgb_path, rgb_png)
        if depth_png is None:
            # the id of a rolled-back enqueue is reused: drop that attempt's depth image
            depth_path.unlink(missing_ok=True)
            return [rgb_path]
        write_bytes_atomic(depth_path, depth_png)
        return [rgb_path, depth_path]

    def _remove_orphans(self) -> int:
        """Delete files no row references (under the write lock: no enqueue is in flight)."""
        with self._write() as conn:
            referenced = {p for row in conn.execute("SELECT image_path, depth_path FROM entries")
                          for p in row if p}
            orphans = [p for p in self.images_dir.iterdir()
                       if f"images/{p.name}" not in referenced]
            _unlink_all(orphans)
        return len(orphans)

    def _select(self, where: str, params: tuple[Any, ...]) -> list[QueueEntry]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, created_ns, source, stamp_ns, frame_id, image_path, depth_path, "
                "width, height, score, reasons, state, exported_batch, teacher, student "
                f"FROM entries {where}", params).fetchall()
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple[Any, ...]) -> QueueEntry:
        (entry_id, created, source, stamp, frame_id, image, depth, width, height, score,
         reasons, state, batch, teacher, student) = row
        return QueueEntry(entry_id, created, source, stamp, frame_id, self.queue_dir / image,
                          self.queue_dir / depth if depth else None, width, height, score,
                          json.loads(reasons), state, batch, teacher, student)


def _encode_images(frame: Frame) -> tuple[bytes, bytes | None]:
    """Return the RGB PNG and the uint16 millimetre depth PNG (None without depth)."""
    png = Path("image.png")
    depth = None if frame.depth is None else encode_image(png, depth_to_png_mm(frame.depth))
    return encode_image(png, frame.rgb), depth


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # deleted meanwhile by an eviction or another process
        return 0


def _unlink_all(paths: Any) -> None:
    for path in paths:
        Path(path).unlink(missing_ok=True)
