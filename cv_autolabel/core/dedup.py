"""The dedup engine: embed a frame, decide novelty in memory, persist novel frames durably.

Decision and persistence are split so the decision path stays real time:

1. ``process(frame)`` embeds the frame and asks the in-memory :class:`NoveltyIndex`
   (exact, a few ms even with 100k stored). A novel frame is added to the index at once,
   so the next frame is judged against it, and handed to the persister.
2. A persister thread writes each novel frame's directory (colour, depth, embedding,
   metadata; atomic and fsynced) and then inserts its embedding into the vector store
   (Milvus Lite file or server: the durable record), in batches.
3. Only then is the frame *acknowledged*: ``on_stored`` is called (the node publishes the
   novel frame; the CLI counts it). A ``kill -9`` at any moment loses nothing acknowledged.

On start-up the index is rebuilt from the vector store, and frame directories written just
before a crash but never inserted are re-checked and inserted (or dropped if a stored frame
now covers them), so the store and the archive agree again.

Reading every vector back out of Milvus Lite is slow (~30 s at 100k x 2048-d), so a clean
shutdown also writes the index to a snapshot file. The next start-up uses it when it still
describes the store: same embedder and dimension, same record count, and a sample of
records (the newest, the oldest and a few in between) identical in the store. Anything else
(a crash after new inserts, a store changed by other tools, a damaged file) falls back to
the full scan with a log line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cv_autolabel.core.embedders import Embedder
from cv_autolabel.core.frame_archive import FrameArchive
from cv_autolabel.core.fsio import atomic_file
from cv_autolabel.core.novelty import NoveltyIndex
from cv_autolabel.core.types import Frame
from cv_autolabel.core.vectorstores import VectorRecord, VectorStore
from cv_autolabel.errors import CvAutolabelError

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.95
_FALLBACK_WARNED: list[bool] = []  # warn about the missing weights once per process


@dataclass(frozen=True)
class DedupConfig:
    """Settings of the dedup engine (ROS parameters ``dedup.*``)."""

    threshold: float = DEFAULT_THRESHOLD
    projection_dim: int = 128
    persist_queue: int = 64
    persist_batch: int = 16

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise CvAutolabelError(f"dedup threshold must be in (0, 1], got {self.threshold}")


@dataclass(frozen=True)
class DedupResult:
    """The decision for one frame.

    Attributes:
        novel: the frame shows something new and is being stored.
        frame_id: the id it is stored under (novel frames), else None.
        similarity: cosine similarity to the closest stored frame (an upper bound below the
            threshold when no stored frame came close).
        match_id: id of the stored frame it duplicates (duplicates), else the closest checked.
        embed_ms: embedding time; decide_ms: index query time.
    """

    novel: bool
    frame_id: int | None
    similarity: float
    match_id: int | None
    embed_ms: float
    decide_ms: float


@dataclass
class DedupStats:
    """Counters over the engine's life (what the node publishes as statistics)."""

    frames_in: int = 0
    novel: int = 0
    duplicates: int = 0
    stored: int = 0
    persist_errors: int = 0
    recovered: int = 0
    dropped_orphans: int = 0
    decide_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.array(self.decide_ms[-1000:] or [0.0])
        return {"frames_in": self.frames_in, "novel": self.novel, "duplicates": self.duplicates,
                "stored": self.stored, "persist_errors": self.persist_errors,
                "recovered": self.recovered, "dropped_orphans": self.dropped_orphans,
                "decide_ms_p50": round(float(np.percentile(lat, 50)), 3),
                "decide_ms_p99": round(float(np.percentile(lat, 99)), 3)}


@dataclass(frozen=True)
class _Pending:
    frame_id: int
    frame: Frame
    embedding: np.ndarray
    source: str
    context: Any = None


class Deduplicator:
    """Keep only novel frames: exact in-memory decision, durable asynchronous storage.

    Args:
        embedder: turns a frame's RGB into a unit vector.
        store: the vector store (durable record of every kept frame's embedding).
        archive: where kept frames' files go.
        config: threshold and persistence settings.
        on_stored: called from the persister thread with ``(frame_id, frame, path, context)``
            once a novel frame is durable (its acknowledgement); ``context`` is whatever the
            caller passed to :meth:`process` (the node passes the original messages).
        snapshot: index snapshot file (``.npz``) read at start-up when it still matches the
            store and written by :meth:`close`; None: always scan the store.
    """

    def __init__(self, embedder: Embedder, store: VectorStore, archive: FrameArchive,
                 config: DedupConfig = DedupConfig(),
                 on_stored: Callable[[int, Frame, Path, Any], None] | None = None,
                 snapshot: Path | None = None) -> None:
        self.embedder, self.store, self.archive, self.config = embedder, store, archive, config
        self.on_stored = on_stored
        self.snapshot = snapshot
        self.loaded_from = "store"  # or "snapshot": how the index was rebuilt at start-up
        self.stats = DedupStats()
        self.index = NoveltyIndex(embedder.dim, threshold=config.threshold,
                                  projection_dim=config.projection_dim)
        self._lock = threading.Lock()
        self._next_id = self._load() + 1
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=config.persist_queue)
        self._thread = threading.Thread(target=self._persist_loop, name="dedup-persist",
                                        daemon=True)
        self._thread.start()

    # -- decision -----------------------------------------------------------------------------
    def process(self, frame: Frame, *, source: str = "", context: Any = None) -> DedupResult:
        """Decide whether ``frame`` is novel; queue it for durable storage if it is.

        Blocks only when the persister is ``persist_queue`` frames behind (backpressure
        instead of unbounded memory).
        """
        t0 = time.perf_counter()
        embedding = self.embedder.embed(frame.rgb)
        t1 = time.perf_counter()
        with self._lock:
            match = self.index.query(embedding)
            frame_id = None
            if not match.duplicate:
                frame_id = self._next_id
                self._next_id += 1
                self.index.add(frame_id, embedding)
        t2 = time.perf_counter()
        decide_ms = (t2 - t1) * 1000
        self._count(match.duplicate, decide_ms)
        if frame_id is not None:
            self._queue.put(_Pending(frame_id, frame, embedding, source, context))
        return DedupResult(frame_id is not None, frame_id, match.similarity, match.match_id,
                           (t1 - t0) * 1000, decide_ms)

    def _count(self, duplicate: bool, decide_ms: float) -> None:
        s = self.stats
        s.frames_in += 1
        s.duplicates += duplicate
        s.novel += not duplicate
        s.decide_ms.append(decide_ms)
        if len(s.decide_ms) > 4000:
            del s.decide_ms[:2000]

    # -- persistence ------------------------------------------------------------------------
    def _persist_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            batch = [item]
            while len(batch) < self.config.persist_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # re-post the stop marker after this batch
                    self._queue.task_done()
                    break
                batch.append(nxt)
            self._persist(batch)
            for _ in batch:
                self._queue.task_done()

    def _persist(self, batch: list[_Pending]) -> None:
        try:
            paths = [self.archive.write(p.frame_id, p.frame, p.embedding, source=p.source,
                                        embedder=self.embedder.name) for p in batch]
            self.store.insert([self._record(p, path) for p, path in zip(batch, paths)])
        except (CvAutolabelError, OSError) as err:
            log.error("dedup: could not store %d novel frame(s): %s", len(batch), err)
            self.stats.persist_errors += len(batch)
            with self._lock:
                self.index.discard([p.frame_id for p in batch])
            for p in batch:
                self.archive.remove(p.frame_id)
            return
        self.stats.stored += len(batch)
        if self.on_stored:
            for p, path in zip(batch, paths):
                self.on_stored(p.frame_id, p.frame, path, p.context)

    @staticmethod
    def _record(p: _Pending, path: Path) -> VectorRecord:
        return VectorRecord(id=p.frame_id, vector=p.embedding, stamp_ns=p.frame.stamp_ns,
                            frame_id=p.frame.frame_id, source=p.source, path=str(path))

    def flush(self) -> None:
        """Block until every queued novel frame is stored (and acknowledged)."""
        self._queue.join()

    def close(self) -> None:
        """Store what is queued, stop the persister and write the snapshot (store stays open)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self._write_snapshot()

    def close_all(self) -> None:
        """Close the engine and its vector store."""
        self.close()
        self.store.close()

    # -- start-up -----------------------------------------------------------------------------
    def _load(self) -> int:
        """Rebuild the index from the store and reconcile the archive; return the max id."""
        if self._read_snapshot():
            self.loaded_from = "snapshot"
        else:
            for ids, vectors in self.store.iter_vectors():
                self.index.add(ids, vectors)
        stored = set(self.index.ids.tolist())
        self.archive.clean_staging()
        top = max(stored, default=0)
        for frame_id in self.archive.ids():
            top = max(top, frame_id)
            if frame_id not in stored:
                self._recover(frame_id)
        return top

    def _read_snapshot(self) -> bool:
        """Fill the index from the snapshot if it still describes the store; say whether."""
        if self.snapshot is None or not self.snapshot.is_file():
            return False
        try:
            with np.load(self.snapshot, allow_pickle=False) as data:
                ids, vectors = data["ids"], data["vectors"]
                embedder, dim = str(data["embedder"]), int(data["dim"])
                basis = data["basis"] if "basis" in data.files else None
            why = _snapshot_mismatch(self.store, self.embedder, ids, vectors, embedder, dim)
            if why is None and basis is not None:
                self.index.use_basis(basis)  # no refit (an SVD of seconds at 2048-d)
        except (OSError, KeyError, ValueError, CvAutolabelError) as err:
            why = f"unreadable ({err})"
        if why:
            log.warning("dedup: index snapshot %s not used (%s); scanning the store",
                        self.snapshot, why)
            return False
        if len(ids):
            self.index.add(ids, vectors)
        return True

    def _write_snapshot(self) -> None:
        if self.snapshot is None:
            return
        basis = self.index.basis
        try:
            self.snapshot.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.snapshot) as f:  # streamed: no second copy of the vectors
                np.savez(f, ids=self.index.ids, vectors=self.index.vectors,
                         embedder=np.array(self.embedder.name), dim=np.array(self.embedder.dim),
                         **({} if basis is None else {"basis": basis}))
        except OSError as err:  # the snapshot only saves start-up time: never fail on it
            log.warning("dedup: could not write the index snapshot %s: %s", self.snapshot, err)

    def _recover(self, frame_id: int) -> None:
        # Files were written but the vector never reached the store: the frame was never
        # acknowledged. Keep it if it is still novel, so nothing the robot saw is lost.
        item = self.archive.read(frame_id)
        if item.meta.get("embedder") != self.embedder.name:
            log.warning("dedup: frame %d was embedded by %s, not %s; dropping it", frame_id,
                        item.meta.get("embedder"), self.embedder.name)
            self.archive.remove(frame_id)
            self.stats.dropped_orphans += 1
            return
        embedding = item.embedding
        if self.index.query(embedding).duplicate:
            self.archive.remove(frame_id)
            self.stats.dropped_orphans += 1
            return
        self.store.insert([VectorRecord(id=frame_id, vector=embedding,
                                        stamp_ns=int(item.meta["stamp_ns"]),
                                        frame_id=str(item.meta["frame_id"]),
                                        source=str(item.meta["source"]), path=str(item.path))])
        self.index.add(frame_id, embedding)
        self.stats.recovered += 1


def _snapshot_mismatch(store: VectorStore, embedder: Embedder, ids: np.ndarray,
                       vectors: np.ndarray, embedder_name: str, dim: int) -> str | None:
    """Why a snapshot no longer describes ``store`` (None: it does)."""
    if embedder_name != embedder.name or dim != embedder.dim:
        return f"made by {embedder_name} ({dim}-d), not {embedder.name} ({embedder.dim}-d)"
    if ids.ndim != 1 or vectors.shape != (len(ids), dim):
        return f"malformed arrays {ids.shape} and {vectors.shape}"
    count = store.count()
    if count != len(ids):
        return f"{len(ids)} records, the store has {count}"
    if not len(ids):
        return None
    order = np.argsort(ids)
    sample = np.unique(order[np.linspace(0, len(ids) - 1, min(len(ids), 8)).astype(int)])
    stored = {r.id: r.vector for r in store.get(ids[sample].tolist())}
    for i in sample:
        vector = stored.get(int(ids[i]))
        if vector is None or not np.allclose(vector, vectors[i], atol=1e-6):
            return f"record {int(ids[i])} differs from the store"
    return None


# -- assembling the engine from configuration ---------------------------------------------------
@dataclass(frozen=True)
class DedupSettings:
    """Where and how the dedup stage runs (ROS parameters ``data_dir`` and ``dedup.*``).

    Attributes:
        data_dir: root of everything the robot writes; frames go to ``data_dir/dedup/frames``.
        db_uri: vector store: a Milvus Lite file path, ``http(s)://host:port`` for a Milvus
            server, or ``:memory:``; empty means ``data_dir/dedup/milvus.db``.
        collection: Milvus collection name.
        embedder: ``resnet50``, ``thumbnail`` or ``auto`` (ResNet50 when its weights are
            found, else the weight-free thumbnail descriptor, with a warning).
        weights: ResNet50 weights: a ``.pth`` path or ``imagenet`` (torchvision's cache).
        precision: ResNet50 on OpenVINO: ``int8`` or ``fp32``.
        threshold: cosine similarity at or above which a frame is a duplicate.
    """

    data_dir: Path = Path("autolabel_workspace")
    db_uri: str = ""
    collection: str = "frames"
    embedder: str = "auto"
    weights: str = "imagenet"
    precision: str = "int8"
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> DedupSettings:
        """Read settings from flattened ROS parameters (see ``config/autolabel.yaml``)."""
        d = cls()
        return cls(
            data_dir=Path(str(params.get("data_dir", d.data_dir))).expanduser(),
            db_uri=str(params.get("dedup.db_uri", d.db_uri)),
            collection=str(params.get("dedup.collection", d.collection)),
            embedder=str(params.get("dedup.embedder", d.embedder)),
            weights=str(params.get("dedup.weights", d.weights)),
            precision=str(params.get("dedup.precision", d.precision)),
            threshold=float(params.get("dedup.threshold", d.threshold)),
        )

    @property
    def frames_dir(self) -> Path:
        return self.data_dir / "dedup" / "frames"

    @property
    def store_uri(self) -> str:
        return self.db_uri or str(self.data_dir / "dedup" / "milvus.db")

    @property
    def snapshot_path(self) -> Path | None:
        """The index snapshot: beside a Milvus Lite file, under ``data_dir`` for a server."""
        uri = self.store_uri
        if uri == ":memory:":
            return None
        if "://" in uri:
            return self.data_dir / "dedup" / f"index_{self.collection}.npz"
        return Path(uri).with_name(f"{Path(uri).name}.{self.collection}.index.npz")


def resolve_embedder(settings: DedupSettings) -> Embedder:
    """Create the configured embedder; ``auto`` falls back to ``thumbnail`` without weights."""
    from cv_autolabel.core.embedders import create_embedder  # noqa: PLC0415
    from cv_autolabel.errors import EmbedderError  # noqa: PLC0415

    if settings.embedder != "auto":
        options = ({"weights": settings.weights, "precision": settings.precision}
                   if settings.embedder == "resnet50" else {})
        return create_embedder(settings.embedder, **options)
    try:
        return create_embedder("resnet50", weights=settings.weights,
                               precision=settings.precision)
    except EmbedderError as err:
        if not _FALLBACK_WARNED:
            _FALLBACK_WARNED.append(True)
            log.warning("dedup: ResNet50 unavailable (%s); using the weight-free thumbnail "
                        "embedder (docs/dedup.md)", str(err).split(" (e.g.")[0][:160])
        return create_embedder("thumbnail")


def open_deduplicator(settings: DedupSettings, *, embedder: Embedder | None = None,
                      frames_dir: Path | None = None) -> Deduplicator:
    """Open store and archive and return a ready engine (close it with ``close_all``).

    ``frames_dir`` overrides where kept frames go (default ``settings.frames_dir``).
    """
    from cv_autolabel.core.vectorstores import open_vector_store  # noqa: PLC0415

    embedder = embedder or resolve_embedder(settings)
    if settings.store_uri != ":memory:" and "://" not in settings.store_uri:
        Path(settings.store_uri).parent.mkdir(parents=True, exist_ok=True)
    store = open_vector_store(settings.store_uri, collection=settings.collection,
                              dim=embedder.dim, embedder_name=embedder.name)
    try:
        return Deduplicator(embedder, store, FrameArchive(frames_dir or settings.frames_dir),
                            DedupConfig(threshold=settings.threshold),
                            snapshot=settings.snapshot_path)
    except BaseException:
        store.close()
        raise
