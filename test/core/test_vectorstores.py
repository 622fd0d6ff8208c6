"""Vector stores: the same contract on the in-memory store and on real Milvus Lite files.

Milvus Lite stores live in ``tmp_path``; crash and lock tests run real child processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.vectorstores import (
    VECTOR_STORES,
    MemoryVectorStore,
    VectorRecord,
    VectorStore,
    backend_for_uri,
    open_vector_store,
)
from cv_autolabel.core.vectorstores import milvus as milvus_backend
from cv_autolabel.errors import VectorStoreError

DIM = 64

# A child process that opens a store, then inserts rows one by one ("ack" mode: one line per
# returned insert) or just holds the store open until its stdin closes ("hold" mode).
CHILD = r"""
import sys
import numpy as np
from cv_autolabel.core.vectorstores import VectorRecord, open_vector_store

uri, mode, dim, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = open_vector_store(uri, collection="frames", dim=dim, embedder_name="toy")
print("ready", flush=True)
if mode == "hold":
    sys.stdin.read()
    store.close()
    sys.exit(0)
next_id = 0
while True:
    ids = range(next_id, next_id + batch)
    store.insert([VectorRecord(id=i, vector=np.random.default_rng(i).standard_normal(dim))
                  for i in ids])
    next_id += batch
    print(f"acked {next_id}", flush=True)
"""


def vec(i: int, dim: int = DIM) -> np.ndarray:
    """Return the deterministic float32 vector of id ``i`` (the child process uses the same)."""
    return np.random.default_rng(i).standard_normal(dim).astype(np.float32)


def records(ids: range | list[int], dim: int = DIM) -> list[VectorRecord]:
    """Return records with distinct metadata for ``ids``."""
    return [VectorRecord(id=i, vector=vec(i, dim), stamp_ns=1_700_000_000_000_000_000 + i,
                         frame_id="camera_color_optical_frame", source="/camera/color",
                         path=f"frames/{i:06d}", extra={"scene": i % 3, "note": "ü"})
            for i in ids]


def lite_uri(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture(params=["memory", "milvus"])
def make_store(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[Callable[..., VectorStore]]:
    """Open stores of the parametrized backend (closed at teardown)."""
    opened: list[VectorStore] = []

    def make(dim: int = DIM, embedder_name: str = "toy") -> VectorStore:
        uri = ":memory:" if request.param == "memory" else lite_uri(tmp_path)
        store = open_vector_store(uri, collection="frames", dim=dim,
                                  embedder_name=embedder_name)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def reopen(tmp_path: Path, dim: int = DIM, embedder_name: str = "toy") -> VectorStore:
    return open_vector_store(lite_uri(tmp_path), collection="frames", dim=dim,
                             embedder_name=embedder_name)


def scan(store: VectorStore, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    batches = list(store.iter_vectors(batch_size))
    assert all(len(ids) <= batch_size for ids, _ in batches)
    if not batches:
        return np.empty(0, np.int64), np.empty((0, store.dim), np.float32)
    return (np.concatenate([ids for ids, _ in batches]),
            np.concatenate([v for _, v in batches]))


def assert_same(record: VectorRecord, expected: VectorRecord) -> None:
    assert (record.id, record.stamp_ns, record.frame_id, record.source, record.path,
            record.extra) == (expected.id, expected.stamp_ns, expected.frame_id,
                              expected.source, expected.path, expected.extra)
    assert record.vector.dtype == np.float32
    np.testing.assert_array_equal(record.vector, expected.vector)


# ── the contract, on both backends ──────────────────────────────────


def test_round_trip_is_bit_identical(make_store: Callable[..., VectorStore]) -> None:
    store = make_store(dim=2048)
    rows = records(range(40), dim=2048)
    store.insert(rows[:1])
    store.insert(rows[1:])
    assert store.count() == 40
    for got, want in zip(store.get([7, 3, 39]), [rows[7], rows[3], rows[39]]):
        assert_same(got, want)
    ids, vectors = scan(store, batch_size=16)
    assert ids.dtype == np.int64 and vectors.dtype == np.float32
    assert ids.tolist() == list(range(40))
    np.testing.assert_array_equal(vectors, np.stack([r.vector for r in rows]))


def test_search_ranks_by_cosine_similarity(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    base = vec(0)
    near = base + 0.1 * vec(1)
    far = vec(2)
    store.insert([VectorRecord(id=10, vector=near), VectorRecord(id=20, vector=far),
                  VectorRecord(id=30, vector=-base)])
    hits = store.search(3.0 * base, limit=2)  # scale must not matter for cosine
    assert [i for i, _ in hits] == [10, 20]
    cos = float(near @ base / np.linalg.norm(near) / np.linalg.norm(base))
    assert hits[0][1] == pytest.approx(cos, abs=1e-5)
    assert store.search(base, limit=10)[-1][0] == 30


def test_get_keeps_order_and_skips_unknown_ids(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    store.insert(records([5, 1, 9]))
    assert [r.id for r in store.get([9, 404, 1, 9])] == [9, 1]
    assert store.get([]) == []


def test_delete_removes_rows_everywhere(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    store.insert(records(range(10)))
    store.delete([2, 3, 404])
    assert store.count() == 8
    assert store.get([2, 3]) == []
    assert 2 not in scan(store)[0].tolist()
    assert 3 not in [i for i, _ in store.search(vec(3), limit=10)]


def test_empty_store(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    assert store.count() == 0
    assert list(store.iter_vectors()) == []
    assert store.search(vec(0), limit=5) == []
    store.insert([])
    assert store.count() == 0


@pytest.mark.parametrize(("bad", "match"), [
    (lambda: [VectorRecord(id=1, vector=np.zeros(DIM + 1))], "store is 64-d"),
    (lambda: [VectorRecord(id=1, vector=vec(1)), VectorRecord(id=1, vector=vec(2))],
     "appears twice"),
    (lambda: [np.zeros(DIM)], "expected VectorRecord"),
])
def test_bad_inserts_are_refused(make_store: Callable[..., VectorStore],
                                 bad: Callable[[], list], match: str) -> None:
    store = make_store()
    with pytest.raises(VectorStoreError, match=match):
        store.insert(bad())
    assert store.count() == 0


@pytest.mark.parametrize(("query", "limit", "match"), [
    (np.zeros(DIM), 3, "non-zero"),
    (np.full(DIM, np.nan), 3, "finite"),
    (np.ones(DIM - 1), 3, "64-d"),
    (np.ones(DIM), 0, "limit"),
])
def test_bad_searches_are_refused(make_store: Callable[..., VectorStore], query: np.ndarray,
                                  limit: int, match: str) -> None:
    store = make_store()
    with pytest.raises(VectorStoreError, match=match):
        store.search(query, limit)


def test_closed_store_refuses_calls(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    store.close()
    store.close()  # idempotent
    with pytest.raises(VectorStoreError, match="not open"):
        store.count()
    with pytest.raises(VectorStoreError, match="not open"):
        store.insert(records([1]))


def test_stores_satisfy_the_protocol(make_store: Callable[..., VectorStore]) -> None:
    store = make_store()
    assert isinstance(store, VectorStore)
    assert (store.dim, store.embedder_name, store.collection) == (DIM, "toy", "frames")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"id": 1.5}, "integer"),
    ({"id": True}, "integer"),
    ({"id": 2**63}, "64-bit"),
    ({"vector": np.array([1.0, np.inf])}, "NaN or infinite"),
    ({"vector": np.zeros((2, 2))}, "1-D"),
    ({"extra": {"x": object()}}, "not JSON"),
    ({"path": 5}, "str"),
])
def test_vector_record_validates(kwargs: dict, match: str) -> None:
    args = {"id": 1, "vector": np.ones(3), **kwargs}
    with pytest.raises(VectorStoreError, match=match):
        VectorRecord(**args)


def test_vector_record_owns_a_read_only_float32_copy() -> None:
    source = np.ones(3, dtype=np.float64)
    record = VectorRecord(id=np.int64(4), vector=source)
    source[0] = 5.0
    assert record.id == 4 and type(record.id) is int
    assert record.vector.dtype == np.float32 and record.vector[0] == 1.0
    with pytest.raises(ValueError):
        record.vector[0] = 2.0


@pytest.mark.parametrize(("uri", "backend"), [
    (":memory:", "memory"),
    ("data/frames.db", "milvus"),
    ("/var/lib/robot/store", "milvus"),
    ("http://milvus:19530", "milvus"),
    ("HTTPS://zilliz.example:443", "milvus"),
    ("tcp://10.0.0.2:19530", "milvus"),
    ("s3://bucket/frames", VectorStoreError),
    ("", VectorStoreError),
])
def test_backend_for_uri(uri: str, backend: str | type[Exception]) -> None:
    if isinstance(backend, str):
        assert backend_for_uri(uri) == backend
        assert backend in VECTOR_STORES
    else:
        with pytest.raises(backend):
            backend_for_uri(uri)


def test_memory_uri_opens_a_memory_store() -> None:
    store = open_vector_store(":memory:", collection="c", dim=3, embedder_name="toy")
    assert isinstance(store, MemoryVectorStore)
    store.close()


# ── Milvus Lite: persistence, crashes, locking, embedding spaces ────


def test_restart_brings_every_row_back_and_search_needs_no_manual_load(tmp_path: Path) -> None:
    rows = records(range(300))
    with reopen(tmp_path) as store:
        store.insert(rows[:150])
        store.insert(rows[150:])
        store.delete([0])
    with reopen(tmp_path) as store:
        assert store.count() == 299
        ids, vectors = scan(store, batch_size=64)
        assert ids.tolist() == list(range(1, 300))
        np.testing.assert_array_equal(vectors, np.stack([r.vector for r in rows[1:]]))
        assert store.search(vec(42), limit=1)[0][0] == 42
        assert_same(store.get([299])[0], rows[299])


def test_scan_pages_follow_ids_across_page_boundaries(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(milvus_backend, "SCAN_FLOATS_PER_PAGE", 8 * DIM)  # 8-row pages
    ids_in = [int(i) for i in np.random.default_rng(3).permutation(1000)[:57]]
    with reopen(tmp_path) as store:
        store.insert(records(ids_in))
        ids, vectors = scan(store, batch_size=5)
    assert ids.tolist() == sorted(ids_in)
    np.testing.assert_array_equal(vectors, np.stack([vec(i) for i in sorted(ids_in)]))


def spawn(tmp_path: Path, mode: str, dim: int = DIM, batch: int = 1) -> subprocess.Popen[str]:
    """Start the CHILD process on the store in ``tmp_path`` and wait until it has it open."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, lite_uri(tmp_path), mode, str(dim), str(batch)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        pytest.fail(f"child did not open the store (said {line!r})")
    return child


def kill_after_acks(child: subprocess.Popen[str], acks: int) -> int:
    """SIGKILL ``child`` right after its ``acks``-th acknowledged insert; return rows acked."""
    assert child.stdout is not None
    acked = 0
    for line in child.stdout:
        acked = int(line.split()[1])
        if acked >= acks:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    return acked


def test_rows_acknowledged_before_kill_9_survive(tmp_path: Path) -> None:
    child = spawn(tmp_path, "ack")
    acked = kill_after_acks(child, 60)
    assert acked == 60
    with reopen(tmp_path) as store:  # the dead child's locks are gone with it
        got = {r.id: r for r in store.get(list(range(acked)))}
        assert sorted(got) == list(range(acked))
        for i in range(acked):
            np.testing.assert_array_equal(got[i].vector, vec(i))
        assert store.count() >= acked  # an insert in flight at the kill may also be there


def test_second_process_is_refused_quickly_with_its_pid(tmp_path: Path) -> None:
    holder = spawn(tmp_path, "hold")
    try:
        start = time.monotonic()
        with pytest.raises(VectorStoreError, match=rf"in use by process {holder.pid}\b"):
            reopen(tmp_path)
        assert time.monotonic() - start < 5.0
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder closes its store and exits
        assert holder.wait(timeout=30) == 0
    with reopen(tmp_path) as store:  # and the store is free again
        assert store.count() == 0


def test_second_store_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with reopen(tmp_path) as store:
        store.insert(records([1]))
        with pytest.raises(VectorStoreError, match="already open in this process"):
            reopen(tmp_path)
        assert store.count() == 1  # the refused opener did not disturb the first


@pytest.mark.parametrize(("dim", "embedder_name", "match"), [
    (DIM, "resnet50", "holds 64-d 'toy' embeddings, but this run makes 64-d 'resnet50'"),
    (32, "toy", "holds 64-d 'toy' embeddings, but this run makes 32-d 'toy'"),
])
def test_other_embedding_space_is_refused(tmp_path: Path, dim: int, embedder_name: str,
                                          match: str) -> None:
    with reopen(tmp_path) as store:
        store.insert(records([1]))
    with pytest.raises(VectorStoreError, match=match):
        reopen(tmp_path, dim=dim, embedder_name=embedder_name)
    with reopen(tmp_path) as store:  # a refused open leaves the store usable
        assert store.count() == 1


def test_other_collection_in_the_same_file_may_hold_another_space(tmp_path: Path) -> None:
    with reopen(tmp_path) as store:
        store.insert(records([1]))
    other = open_vector_store(lite_uri(tmp_path), collection="thumbs", dim=16,
                              embedder_name="thumbnail")
    with other:
        assert other.count() == 0


def test_collection_not_made_by_us_is_refused(tmp_path: Path) -> None:
    from milvus_lite.server_manager import server_manager_instance
    from pymilvus import MilvusClient

    uri = lite_uri(tmp_path)
    client = MilvusClient(uri=uri)
    client.create_collection("frames", dimension=DIM)
    client.close()
    server_manager_instance.release_server(uri)
    with pytest.raises(VectorStoreError, match="not created by cv_autolabel"):
        reopen(tmp_path)


def test_truncated_index_file_is_rebuilt_on_open(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    rows = records(range(50))
    with reopen(tmp_path) as store:
        store.insert(rows)
    sidecars = list((tmp_path / "store.db").glob("collections/frames/partitions/*/indexes/*.idx"))
    assert sidecars, "closing should have flushed a segment and indexed it"
    with open(sidecars[0], "r+b") as f:  # what a kill during Lite's in-place write leaves
        f.truncate(200)
    with reopen(tmp_path) as store:
        assert "rebuilding 1 index file" in caplog.text
        assert store.count() == 50
        assert store.search(vec(7), limit=1)[0][0] == 7
        np.testing.assert_array_equal(scan(store)[1], np.stack([r.vector for r in rows]))


def test_missing_parent_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VectorStoreError, match="does not exist"):
        open_vector_store(str(tmp_path / "missing" / "store.db"), collection="frames",
                          dim=DIM, embedder_name="toy")


def test_a_plain_file_is_not_taken_for_a_lite_store(tmp_path: Path) -> None:
    (tmp_path / "store.db").write_bytes(b"SQLite format 3\x00")  # e.g. a milvus-lite 2.x file
    with pytest.raises(VectorStoreError, match="is a file"):
        reopen(tmp_path)
    assert (tmp_path / "store.db").read_bytes() == b"SQLite format 3\x00"


def test_unreachable_server_fails_fast_with_the_uri() -> None:
    start = time.monotonic()
    with pytest.raises(VectorStoreError, match="http://127.0.0.1:9"):
        open_vector_store("http://127.0.0.1:9", collection="frames", dim=DIM,
                          embedder_name="toy", timeout_s=3)
    assert time.monotonic() - start < 10


def test_too_long_metadata_is_refused(tmp_path: Path) -> None:
    with reopen(tmp_path) as store:
        with pytest.raises(VectorStoreError, match="path is longer than 4096 bytes"):
            store.insert([VectorRecord(id=1, vector=vec(1), path="x" * 5000)])
        assert store.count() == 0


def test_the_collection_records_its_embedding_space(tmp_path: Path) -> None:
    with reopen(tmp_path, dim=DIM, embedder_name="resnet50-int8") as store:
        assert isinstance(store, milvus_backend.MilvusVectorStore)
    schema = json.loads((tmp_path / "store.db/collections/frames/schema.json").read_text())
    assert schema["properties"][milvus_backend.PROP_EMBEDDER] == "resnet50-int8"
    assert schema["properties"][milvus_backend.PROP_DIM] == str(DIM)


@pytest.mark.slow
def test_kill_9_across_a_memtable_flush_loses_no_acknowledged_row(tmp_path: Path) -> None:
    """Kill while Lite flushes its 128 MB memtable and indexes the new segment (2048-d)."""
    child = spawn(tmp_path, "ack", dim=2048, batch=256)
    acked = kill_after_acks(child, 16_384)  # that insert flushed; the index is being written
    with reopen(tmp_path, dim=2048) as store:
        assert store.count() >= acked
        ids, vectors = scan(store)
        assert set(range(acked)) <= set(ids.tolist())
        for i in (0, 16_383, acked - 1):
            np.testing.assert_array_equal(vectors[ids.tolist().index(i)], vec(i, 2048))
