"""Milvus backend: a Milvus Lite directory in-process, or a Milvus server, one pymilvus path.

Local paths are Milvus Lite 3 stores: pymilvus runs an in-process gRPC server thread per
path (``milvus_lite.server_manager``) and talks to it like to a server, so Lite and a real
server share every line below except start/stop, the lock file and one repair.

What Milvus Lite 3.2.2 (pymilvus 3.0.2) does, measured 2026-11 on a 2-core Linux VM with
2048-d float32 rows, and why this module is shaped the way it is:

Layout
    ``store.db`` is a directory: ``LOCK``, ``collections/<name>/`` with ``wal/*.arrow``,
    ``partitions/_default/data/*.parquet``, ``.../indexes/*.idx``, ``manifest.json``.
    ``MilvusClient.close()`` leaves the in-process server running; only
    ``server_manager_instance.release_server`` stops it (flushing the memtable), so
    :meth:`MilvusVectorStore.close` calls it.

Insert latency (one call, no flush)
    1 row p50 0.7 ms / p99 1.1 ms; 32 rows 9.3 / 22 ms; 256 rows 79 / 94 ms (0.3 ms/row).
    With ``flush`` after every call: 1 row 16.6 / 44 ms, 32 rows 30 / 119 ms, 256 rows
    205 / 348 ms, and one tiny Parquet segment per call. Every ~16k rows the 128 MB memtable
    (``MILVUS_LITE_MEMTABLE_MEMORY_LIMIT_BYTES``) is flushed *inside* the insert that crosses
    it: that one call stalls 2.5-3.9 s. So inserts belong on a worker thread, never on a
    camera callback. 100k rows in 256-row batches: 54-59 s; disk 1.64 GB = 2x the raw
    vectors (Parquet + a FLAT sidecar that copies them); before a flush the WAL is ~1x raw.

Durability (kill -9 right after an acknowledged insert, then reopen)
    Every insert appends to the WAL and flushes Python's buffer to the OS before it returns
    (no fsync). All acknowledged rows came back in every trial: 50 and 300 single-row
    inserts, 2,560-17,408 rows in 256-row batches, with and without ``flush``. The cheapest
    durable sequence is a plain ``insert``; ``flush`` costs ~16 ms and adds nothing against
    a process crash. Not power-loss safe: the WAL and the Parquet segments are not fsynced
    (only the manifest is, and the WAL when it is retired).
    Lite bug: index sidecars (``*.idx``) are written in place, without temp file + rename.
    A kill during that write (right after a memtable flush; 3 of 4 kills just after the
    16384th row hit it) leaves a truncated file, and every later load fails with "Failed to
    read all data for array ... (file seems not fully written?)". The data is intact, so
    :meth:`MilvusVectorStore.open` deletes the collection's sidecars and loads again; Lite
    rebuilds them from Parquet.

Locking
    Lite holds ``fcntl.flock`` on ``<db>/LOCK``. A second process gets, in ~70 ms, pymilvus's
    ``ConnectionConfigException: Open local milvus failed`` plus a logged traceback: no
    hang and no corruption, but no pid and no path. A second ``MilvusClient`` in the same
    process silently shares the first one's server. Hence our own lock file ``<db>.lock``
    (:class:`~cv_autolabel.core.vectorstores.filelock.PidLock`): a second opener, in this
    process or another, is refused in ~0.3 ms with the holder's pid; the kernel drops the
    lock when the holder dies, kill -9 included.

Restart
    A collection with an index reopens "released": query, get, search and ``count(*)`` fail
    with code 101 "call load() before search/get/query" until ``load_collection``, so open()
    always loads (20k rows: 0.02-0.06 s; 100k rows: open + load 1.2-1.8 s). Loaded, Lite keeps
    every vector in memory about three times over: 2.4-3.5 GB RSS at 100k x 2048-d.
    Full scan: ``query_iterator`` is the only pk-ordered cursor (a plain ``query`` with
    ``id > last`` is not ordered in Lite, and ``limit/offset`` re-reads everything: 20 s for
    20k rows). Each page re-scans and sorts all rows, so small pages are slow: 100k rows take
    46-50 s with 1000-row pages, 33-36 s with 4096, 30-31 s with 8192-16384; 10k rows take
    2.8-3.0 s. The floor, ~0.3 ms/row, is turning rows into Python floats (server side, in
    this process) and back into numpy. ``iter_vectors`` therefore reads ~8 M-float pages (4096
    rows at 2048-d, ~300 MB transient) whatever ``batch_size`` it yields.
    Search (FLAT, exact): 10k-20k rows 35-130 ms, 100k rows 300-530 ms.

Ids, get, delete
    ``get(ids)`` and ``delete(ids)`` work; ``count(*)`` is exact after deletes; deletes go
    through the same WAL. Inserting an existing id replaces the row in Lite (latest wins); a
    server may keep both, so ids must be unique. ``upsert`` costs the same as insert in Lite.

Other details
    Lite keeps collection properties but drops the schema description: the embedding space
    (embedder name, dim) is stored in properties (and in the description for servers).
    ``AUTOINDEX`` in Lite is faiss HNSW (approximate) when faiss-cpu imports; FLAT is exact
    everywhere. A synchronous ``create_index`` polls ``AllocTimestamp``, which Lite does not
    implement, so Lite's index is created with ``sync=False``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cv_autolabel.core.vectorstores.base import (
    OpenCloseContext, VectorRecord, check_query, check_rows,
)
from cv_autolabel.core.vectorstores.filelock import PidLock, flock_held
from cv_autolabel.errors import VectorStoreError

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

#: Collection properties that record which embedding space a collection holds.
PROP_EMBEDDER = "cv_autolabel.embedder"
PROP_DIM = "cv_autolabel.dim"
PROP_SCHEMA = "cv_autolabel.schema"
SCHEMA_VERSION = "1"

#: VARCHAR fields and their max_length (checked on insert, in UTF-8 bytes).
VARCHAR_LIMITS = {"frame_id": 512, "source": 1024, "path": 4096, "extra": 16384}
#: Milvus caps top-k and a query page at 16384 rows.
MAX_ROWS_PER_CALL = 16384
#: Rows per scan page: ~8 M floats (32 MB float32; the rows arrive as Python floats first,
#: ~270 MB transient). Bigger pages cut Lite's per-page re-scan cost (see module docstring).
SCAN_FLOATS_PER_PAGE = 1 << 23
_ID_CHUNK = 1024

_OUTPUT_FIELDS = ["id", "embedding", "stamp_ns", "frame_id", "source", "path", "extra"]


class MilvusVectorStore(OpenCloseContext):
    """:class:`~cv_autolabel.core.vectorstores.base.VectorStore` on Milvus (Lite or server).

    ``uri`` is a local path (a Milvus Lite data directory, e.g. ``data/frames.db``, served
    in-process; one process at a time) or ``http://``, ``https://``, ``tcp://`` of a Milvus
    server. All calls are serialised by one lock: Milvus Lite's engine does not take
    concurrent writes to one collection.

    Args:
        uri: Milvus Lite path or Milvus server URL.
        collection: collection name (letters, digits, underscores).
        dim: embedding dimension.
        embedder_name: embedder that produced the vectors; recorded in the collection and
            checked on every open.
        token: server token (``user:password`` or API key); unused for Lite.
        timeout_s: timeout of every Milvus call.
    """

    def __init__(self, uri: str, *, collection: str, dim: int, embedder_name: str,
                 token: str = "", timeout_s: float = 60.0) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise VectorStoreError(f"{uri}: dim must be a positive integer, got {dim!r}")
        if not embedder_name:
            raise VectorStoreError(f"{uri}: embedder_name must be non-empty")
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.embedder_name = embedder_name
        self.token = token
        self.timeout_s = float(timeout_s)
        self.is_lite = "://" not in uri
        self.lite_path = Path(os.path.abspath(os.path.expanduser(uri))) if self.is_lite else None
        self._client: MilvusClient | None = None
        self._pid_lock: PidLock | None = None
        self._lite_started = False
        self._lock = threading.RLock()

    # ── lifecycle ───────────────────────────────────────────────

    def open(self) -> None:
        """Connect, create the collection if missing or check its embedding space, load it.

        Raises:
            VectorStoreError: the Lite store is in use by another process (or another store
                in this one), the collection holds another embedder's or dimension's
                vectors, or Milvus cannot be reached or fails.
        """
        with self._lock:
            if self._client is not None:
                return
            try:
                self._connect()
                self._ensure_collection()
                self._load()
            except BaseException:
                self._teardown()
                raise

    def close(self) -> None:
        """Release the connection (and, for Lite, flush and stop its server, free the lock)."""
        with self._lock:
            self._teardown()

    # ── data ────────────────────────────────────────────────────

    def insert(self, rows: Sequence[VectorRecord]) -> None:
        """Store ``rows``; when this returns they survive a kill -9 of this process.

        An id that is already stored is replaced on Milvus Lite; a Milvus server may keep
        both rows, so ids must be unique (the caller assigns them).
        """
        check_rows(rows, self.dim, self._where("insert"))
        if not rows:
            return
        data = [self._row_dict(row) for row in rows]
        with self._call("insert") as client:
            result = client.insert(self.collection, data, timeout=self.timeout_s)
        if int(result.get("insert_count", len(rows))) != len(rows):
            raise VectorStoreError(f"{self._where('insert')}: Milvus stored "
                                   f"{result.get('insert_count')} of {len(rows)} rows")

    def count(self) -> int:
        """Return the number of stored records (exact, deletes included)."""
        with self._call("count") as client:
            res = client.query(self.collection, filter="", output_fields=["count(*)"],
                               timeout=self.timeout_s)
        return int(res[0]["count(*)"])

    def iter_vectors(self, batch_size: int = 1000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (B,) int64, vectors (B, dim) float32)`` of every record, by id.

        Reads pages of up to ``max(batch_size, SCAN_FLOATS_PER_PAGE // dim)`` rows and cuts
        them into ``batch_size`` batches; rows inserted during the scan may or may not show.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VectorStoreError(f"{self._where('iter_vectors')}: bad batch_size {batch_size!r}")
        page = min(max(batch_size, SCAN_FLOATS_PER_PAGE // self.dim), MAX_ROWS_PER_CALL)
        with self._call("iter_vectors") as client:
            iterator = client.query_iterator(self.collection, batch_size=page,
                                             output_fields=["embedding"], timeout=self.timeout_s)
        try:
            while True:
                with self._call("iter_vectors"):
                    rows = iterator.next()
                if not rows:
                    return
                ids, vectors = self._page_arrays(rows)
                for start in range(0, len(ids), batch_size):
                    yield ids[start:start + batch_size], vectors[start:start + batch_size]
        finally:
            with suppress(Exception):  # the store may be closed by now; nothing to release
                iterator.close()

    def get(self, ids: Sequence[int]) -> list[VectorRecord]:
        """Return the stored records of ``ids``, in the order asked; unknown ids are skipped."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, VectorRecord] = {}
        for start in range(0, len(wanted), _ID_CHUNK):
            with self._call("get") as client:
                rows = client.get(self.collection, ids=wanted[start:start + _ID_CHUNK],
                                  output_fields=_OUTPUT_FIELDS, timeout=self.timeout_s)
            found.update((int(r["id"]), self._record(r)) for r in rows)
        return [found[i] for i in wanted if i in found]

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """Return up to ``limit`` (<= 16384) ``(id, cosine similarity)``, most similar first.

        Exact (FLAT index) but slow on Milvus Lite: tens to hundreds of ms per call, growing
        with the store. Not for a per-frame hot path.
        """
        query = check_query(vector, self.dim, limit, self._where("search"))
        if limit > MAX_ROWS_PER_CALL:
            msg = f"{self._where('search')}: limit {limit} exceeds Milvus's {MAX_ROWS_PER_CALL}"
            raise VectorStoreError(msg)
        with self._call("search") as client:
            hits = client.search(self.collection, data=[query], limit=int(limit),
                                 anns_field="embedding", output_fields=["id"],
                                 search_params={"metric_type": "COSINE"},
                                 timeout=self.timeout_s)[0]
        pairs = [(int(h["id"]), float(h["distance"])) for h in hits]
        return sorted(pairs, key=lambda p: -p[1])

    def delete(self, ids: Sequence[int]) -> None:
        """Delete the records of ``ids``; unknown ids are ignored."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        for start in range(0, len(unique), _ID_CHUNK):
            with self._call("delete") as client:
                client.delete(self.collection, ids=unique[start:start + _ID_CHUNK],
                              timeout=self.timeout_s)

    # ── open / close helpers ────────────────────────────────────

    def _connect(self) -> None:
        pymilvus = _import_pymilvus()
        uri = self.uri
        if self.lite_path is not None:
            self._check_lite_path()
            self._pid_lock = PidLock(self.lite_path.with_name(self.lite_path.name + ".lock"))
            self._pid_lock.acquire(self.uri)
            uri = self._start_lite()
        with self._errors("connect to"):
            self._client = pymilvus.MilvusClient(uri=uri, token=self.token,
                                                 timeout=self.timeout_s)

    def _check_lite_path(self) -> None:
        assert self.lite_path is not None
        if not self.lite_path.parent.is_dir():
            msg = f"cannot open {self.uri}: directory {self.lite_path.parent} does not exist"
            raise VectorStoreError(msg)
        if self.lite_path.exists() and not self.lite_path.is_dir():
            msg = (f"cannot open {self.uri}: it is a file, but a Milvus Lite 3 store is a "
                   "directory (a file from milvus-lite 2.x cannot be read by milvus-lite 3)")
            raise VectorStoreError(msg)

    def _start_lite(self) -> str:
        """Start (or reuse) this process's Lite gRPC server for the path; return its URL."""
        from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

        assert self.lite_path is not None
        if flock_held(self.lite_path / "LOCK"):
            # Our pid lock is free, so something that is not a cv_autolabel store (another
            # program, or a bare MilvusClient in this process) holds Lite's own lock.
            msg = (f"cannot open {self.uri}: it is in use by another Milvus Lite client "
                   f"(its {self.lite_path / 'LOCK'} is held)")
            raise VectorStoreError(msg)
        url = server_manager_instance.start_and_get_uri(str(self.lite_path))
        if url is None:
            raise VectorStoreError(f"cannot open {self.uri}: Milvus Lite failed to start "
                                   "(see the log for its traceback)")
        self._lite_started = True
        return url

    def _teardown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with suppress(Exception):
                client.close()
        if self._lite_started and self.lite_path is not None:
            from milvus_lite.server_manager import server_manager_instance  # noqa: PLC0415

            # Stopping the server flushes the memtable to Parquet and frees Lite's LOCK, so
            # the path can be reopened (by this or another process) right away.
            server_manager_instance.release_server(str(self.lite_path))
            self._lite_started = False
        if self._pid_lock is not None:
            self._pid_lock.release()
            self._pid_lock = None

    def _ensure_collection(self) -> None:
        with self._call("open", need_open=False) as client:
            exists = client.has_collection(self.collection, timeout=self.timeout_s)
            if exists:
                desc = client.describe_collection(self.collection, timeout=self.timeout_s)
        if not exists:
            self._create_collection()
            return
        self._check_embedding_space(desc)
        with self._call("open", need_open=False) as client:
            indexed = client.list_indexes(self.collection, field_name="embedding")
        if not indexed:  # a crash between create_collection and create_index
            self._create_index()

    def _create_collection(self) -> None:
        pymilvus = _import_pymilvus()
        data_type = pymilvus.DataType
        marker = {PROP_EMBEDDER: self.embedder_name, PROP_DIM: str(self.dim),
                  PROP_SCHEMA: SCHEMA_VERSION}
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                                     description=json.dumps(marker))
        schema.add_field("id", data_type.INT64, is_primary=True)
        schema.add_field("embedding", data_type.FLOAT_VECTOR, dim=self.dim)
        schema.add_field("stamp_ns", data_type.INT64)
        for name, max_length in VARCHAR_LIMITS.items():
            schema.add_field(name, data_type.VARCHAR, max_length=max_length)
        with self._call("create collection in", need_open=False) as client:
            # Strong consistency: a server must show a row to count/get/scan right after
            # its insert returned, as Lite does.
            client.create_collection(self.collection, schema=schema, properties=marker,
                                     consistency_level="Strong", timeout=self.timeout_s)
        self._create_index()
        log.info("created collection %r in %s (%s, %d-d)", self.collection, self.uri,
                 self.embedder_name, self.dim)

    def _create_index(self) -> None:
        """Create the exact (FLAT, cosine) index, which Lite and servers both support."""
        index = _import_pymilvus().MilvusClient.prepare_index_params()
        index.add_index("embedding", index_type="FLAT", metric_type="COSINE")
        with self._call("create index in", need_open=False) as client:
            # A synchronous create_index polls AllocTimestamp, which Lite does not implement
            # (its gRPC server logs a traceback); Lite builds the index in the call anyway.
            client.create_index(self.collection, index, timeout=self.timeout_s,
                                sync=not self.is_lite)

    def _check_embedding_space(self, desc: dict[str, Any]) -> None:
        """Refuse a collection made by another embedder or dimension (or not by us)."""
        marker = _marker(desc)
        fields = {f["name"]: f for f in desc.get("fields", [])}
        where = f"collection {self.collection!r} in {self.uri}"
        if PROP_EMBEDDER not in marker or set(_OUTPUT_FIELDS) - set(fields):
            raise VectorStoreError(f"{where} was not created by cv_autolabel (no embedder "
                                   "recorded or missing fields); use another collection name")
        stored_dim = int(fields["embedding"].get("params", {}).get("dim", -1))
        stored = (marker[PROP_EMBEDDER], stored_dim)
        if stored != (self.embedder_name, self.dim):
            raise VectorStoreError(
                f"{where} holds {stored_dim}-d {stored[0]!r} embeddings, but this run makes "
                f"{self.dim}-d {self.embedder_name!r} ones; mixing embedding spaces would "
                "break dedup: use another collection or store, or the same embedder")

    def _load(self) -> None:
        """Load the collection (needed after every restart before query or search)."""
        try:
            with self._call("load", need_open=False) as client:
                client.load_collection(self.collection, timeout=self.timeout_s)
        except VectorStoreError as err:
            if not self._repair_lite_indexes(err):
                raise
            with self._call("load (after rebuilding index files)", need_open=False) as client:
                client.load_collection(self.collection, timeout=self.timeout_s)

    def _repair_lite_indexes(self, err: VectorStoreError) -> bool:
        """Delete this collection's Lite index sidecars so that load rebuilds them.

        Milvus Lite 3.2.2 writes ``*.idx`` sidecars in place (no temp file + rename): a kill
        during that write leaves a truncated file that fails every later load. The sidecars
        are derived from the Parquet data (the durable copy), so rebuilding loses nothing.
        """
        if self.lite_path is None:
            return False
        root = self.lite_path / "collections" / self.collection / "partitions"
        sidecars = sorted(root.glob("*/indexes/*.idx"))
        if not sidecars:
            return False
        log.warning("%s: load failed (%s); rebuilding %d index file(s)", self.uri, err,
                    len(sidecars))
        for path in sidecars:
            path.unlink(missing_ok=True)
        return True

    # ── call helpers ────────────────────────────────────────────

    @contextmanager
    def _call(self, action: str, *, need_open: bool = True) -> Iterator[MilvusClient]:
        """Hold the store lock, check it is open, and wrap Milvus errors for ``action``."""
        with self._lock:
            client = self._client
            if client is None:
                if need_open:
                    raise VectorStoreError(f"{self._where(action)}: the store is not open")
                raise VectorStoreError(f"{self._where(action)}: not connected")
            with self._errors(action):
                yield client

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except _milvus_errors() as err:
            raise VectorStoreError(f"{self._where(action)}: {_reason(err)}") from err

    def _where(self, action: str) -> str:
        return f"{action} {self.uri} (collection {self.collection!r})"

    def _row_dict(self, row: VectorRecord) -> dict[str, Any]:
        values = {"frame_id": row.frame_id, "source": row.source, "path": row.path,
                  "extra": row.extra_json()}
        for name, text in values.items():
            if len(text.encode()) > VARCHAR_LIMITS[name]:
                raise VectorStoreError(f"{self._where('insert')}: record {row.id}: {name} is "
                                       f"longer than {VARCHAR_LIMITS[name]} bytes")
        return {"id": row.id, "embedding": row.vector, "stamp_ns": row.stamp_ns, **values}

    def _record(self, row: dict[str, Any]) -> VectorRecord:
        extra = json.loads(row.get("extra") or "{}")
        return VectorRecord(id=int(row["id"]), vector=np.asarray(row["embedding"], np.float32),
                            stamp_ns=int(row["stamp_ns"]), frame_id=row["frame_id"],
                            source=row["source"], path=row["path"], extra=extra)

    def _page_arrays(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        vectors = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
        if vectors.shape != (len(rows), self.dim):
            msg = f"{self._where('iter_vectors')}: got vectors of shape {vectors.shape}"
            raise VectorStoreError(msg)
        return ids, vectors


def _marker(desc: dict[str, Any]) -> dict[str, str]:
    """Return the embedding-space marker from a collection's properties or description."""
    props = dict(desc.get("properties") or {})
    if PROP_EMBEDDER in props:
        return props
    # Milvus Lite keeps properties but drops the description; a server keeps both.
    with suppress(ValueError, TypeError):
        described = json.loads(desc.get("description") or "")
        if isinstance(described, dict):
            return {str(k): str(v) for k, v in described.items()}
    return props


def _reason(err: BaseException) -> str:
    message = getattr(err, "message", None)
    return str(message) if message else str(err)


_ERRORS: tuple[type[BaseException], ...] | None = None


def _milvus_errors() -> tuple[type[BaseException], ...]:
    """Return the exception types a Milvus call raises (pymilvus's and gRPC's)."""
    global _ERRORS
    if _ERRORS is None:
        import grpc  # noqa: PLC0415
        from pymilvus.exceptions import MilvusException  # noqa: PLC0415

        _ERRORS = (MilvusException, grpc.RpcError)
    return _ERRORS


class _DropMvccWarning(logging.Filter):
    """Drop pymilvus's per-scan warning that Milvus Lite returns no MVCC timestamp."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to get mvccTs" not in record.getMessage()


def _import_pymilvus() -> Any:
    """Import pymilvus on first use (it is heavy, and only this backend needs it)."""
    try:
        import pymilvus  # noqa: PLC0415
    except ImportError as err:
        raise VectorStoreError("the Milvus vector store needs pymilvus and milvus-lite "
                               "(pip install pymilvus milvus-lite)") from err
    iterator_log = logging.getLogger("pymilvus.client.iterator.query_iterator")
    if not any(isinstance(f, _DropMvccWarning) for f in iterator_log.filters):
        iterator_log.addFilter(_DropMvccWarning())
    return pymilvus
