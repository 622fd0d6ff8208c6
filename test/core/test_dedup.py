"""The dedup engine on the synthetic world: what it keeps, what it drops, what survives."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.dedup import DedupConfig, Deduplicator, DedupSettings, open_deduplicator
from cv_autolabel.core.embedders import create_embedder, l2_normalise
from cv_autolabel.core.frame_archive import FrameArchive
from cv_autolabel.core.types import Frame
from cv_autolabel.core.vectorstores import MemoryVectorStore, VectorRecord
from cv_autolabel.errors import VectorStoreError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.tools.sim.run import SimConfig, simulate


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Frame], list[np.ndarray]]:
    """40 frames (two piles) and the camera position of each, from a real synthetic bag."""
    bag = tmp_path_factory.mktemp("dedup") / "bag"
    simulate(SimConfig(frames=40, width=320, height=240, seed=11, scenes=2,
                       pick_probability=0.0), bag)
    with BagReader(bag) as reader:
        frames = list(iter_frames(reader))
    with BagReader(bag) as reader:
        eyes = [np.array([t.transform.translation.x, t.transform.translation.y,
                          t.transform.translation.z])
                for m in reader.messages([T.TF]) for t in m.msg.transforms]
    return frames, eyes


class _Embedder:
    """Embeds a frame as the unit vector stored in its first pixels (exact control)."""

    name, dim = "fixed-test", 3

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        return l2_normalise(rgb[0, :3, 0].astype(np.float32) - 100.0)

    def embed_batch(self, images):  # pragma: no cover - protocol completeness
        return np.stack([self.embed(i) for i in images])


def _frame_for(vector: np.ndarray, stamp: int = 0) -> Frame:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :3, 0] = np.clip(np.round(np.asarray(vector) + 100), 0, 255)
    return Frame(rgb, None, None, stamp, "cam")


def _engine(tmp_path: Path, embedder=None, store=None, **config) -> Deduplicator:
    embedder = embedder or create_embedder("thumbnail")
    store = store or MemoryVectorStore(collection="f", dim=embedder.dim,
                                       embedder_name=embedder.name)
    store.open()
    return Deduplicator(embedder, store, FrameArchive(tmp_path / "frames"),
                        DedupConfig(**config))


def test_still_camera_frames_are_dropped_and_new_views_kept(world, tmp_path: Path) -> None:
    frames, eyes = world
    dedup = _engine(tmp_path)
    results = [dedup.process(f) for f in frames]
    dedup.flush()
    kept = [i for i, r in enumerate(results) if r.novel]
    assert kept[0] == 0
    for i in range(1, len(frames)):
        moved = np.linalg.norm(eyes[i] - eyes[i - 1])
        if moved < 1e-6 and i != 20:  # camera still, same pile: a near-duplicate
            assert not results[i].novel, i
    assert results[20].novel  # frame 20 starts the second pile
    assert 3 <= len(kept) <= len(frames) // 2
    assert dedup.stats.stored == len(kept) == len(FrameArchive(tmp_path / "frames").ids())
    dedup.close()


def test_no_two_stored_frames_reach_the_threshold(world, tmp_path: Path) -> None:
    frames, _ = world
    dedup = _engine(tmp_path, threshold=0.9)
    for f in frames:
        dedup.process(f)
    dedup.close()
    vectors = np.vstack([v for _, v in dedup.store.iter_vectors()])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    assert sims.max() < 0.9


@pytest.mark.parametrize(("similarity", "threshold", "novel"), [
    (0.95, 0.95, False),   # at the threshold: a duplicate (inclusive)
    (0.9499, 0.95, True),
    (1.0, 1.0, False),     # threshold 1: only identical embeddings are duplicates
    (0.999, 1.0, True),
    (0.1, 0.05, False),
])
def test_threshold_edges(tmp_path: Path, similarity: float, threshold: float,
                         novel: bool) -> None:
    base = np.array([100.0, 0.0, 0.0])
    other = 100.0 * np.array([similarity, np.sqrt(max(0.0, 1 - similarity**2)), 0.0])
    dedup = _engine(tmp_path, embedder=_Embedder(), threshold=threshold)
    # Build the vectors exactly rather than through pixels for the tight cases.
    dedup.embedder.embed = lambda rgb, v=iter([base, other]): l2_normalise(next(v))
    assert dedup.process(_frame_for(base)).novel
    assert dedup.process(_frame_for(other)).novel is novel
    dedup.close()


def test_restart_reloads_the_store_and_continues_ids(world, tmp_path: Path) -> None:
    frames, _ = world
    settings = DedupSettings(data_dir=tmp_path, embedder="thumbnail")
    dedup = open_deduplicator(settings)
    first = [dedup.process(f) for f in frames[:20]]
    dedup.close_all()
    dedup = open_deduplicator(settings)
    assert dedup.loaded_from == "snapshot"  # written by the clean shutdown
    again = [dedup.process(f) for f in frames[:20]]
    later = [dedup.process(f) for f in frames[20:]]
    dedup.close_all()
    assert not any(r.novel for r in again)  # everything seen before the restart
    old_ids = {r.frame_id for r in first if r.novel}
    new_ids = [r.frame_id for r in later if r.novel]
    assert new_ids and min(new_ids) > max(old_ids)


def _snapshot_engine(tmp_path: Path, store: MemoryVectorStore) -> Deduplicator:
    return Deduplicator(_Embedder(), store, FrameArchive(tmp_path / "frames"),
                        snapshot=tmp_path / "index.npz")


def test_the_index_snapshot_is_used_only_while_it_describes_the_store(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryVectorStore(collection="f", dim=3, embedder_name=_Embedder.name)
    store.open()
    vectors = l2_normalise(np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32))
    first = _snapshot_engine(tmp_path, store)
    kept = [first.process(_frame_for(v * 60)).novel for v in vectors]
    first.close()
    second = _snapshot_engine(tmp_path, store)
    assert second.loaded_from == "snapshot" and len(second.index) == sum(kept)
    assert not any(second.process(_frame_for(v * 60)).novel for v in vectors)
    second.close()
    # A record the snapshot does not know (another tool, or a crash after new inserts).
    store.insert([VectorRecord(id=999, vector=np.array([0, 0, 1], np.float32), stamp_ns=0,
                               frame_id="cam", source="other", path="-")])
    third = _snapshot_engine(tmp_path, store)
    assert third.loaded_from == "store" and 999 in third.index.ids
    assert "records, the store has" in caplog.text
    third.close()
    # A damaged file, then a snapshot whose vectors differ from the store's.
    (tmp_path / "index.npz").write_bytes(b"not a snapshot")
    damaged = _snapshot_engine(tmp_path, store)
    assert damaged.loaded_from == "store"
    damaged.close()  # writes a good one again
    with np.load(tmp_path / "index.npz") as data:
        parts = dict(data)
    assert _snapshot_engine(tmp_path, store).loaded_from == "snapshot"
    parts["vectors"] = parts["vectors"][::-1].copy()
    np.savez(tmp_path / "index.npz", **parts)
    assert _snapshot_engine(tmp_path, store).loaded_from == "store"
    assert "differs from the store" in caplog.text


def test_second_process_on_the_same_store_is_refused(tmp_path: Path) -> None:
    settings = DedupSettings(data_dir=tmp_path, embedder="thumbnail")
    dedup = open_deduplicator(settings)
    try:
        code = textwrap.dedent(f"""
            from pathlib import Path
            from cv_autolabel.core.dedup import DedupSettings, open_deduplicator
            open_deduplicator(DedupSettings(data_dir=Path({str(tmp_path)!r}),
                                            embedder="thumbnail"))
        """)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, check=False)
        assert time.monotonic() - started < 30
        assert result.returncode != 0 and "in use by process" in result.stderr
    finally:
        dedup.close_all()


def test_orphan_frames_are_recovered_or_dropped(tmp_path: Path) -> None:
    embedder = _Embedder()
    archive = FrameArchive(tmp_path / "frames")
    a, b = l2_normalise(np.array([1.0, 0, 0])), l2_normalise(np.array([0, 1.0, 0]))
    # Crash between writing the files and inserting the vector: files exist, store does not.
    archive.write(5, _frame_for(100 * a), a, source="t", embedder=embedder.name)
    archive.write(6, _frame_for(100 * a), a, source="t", embedder=embedder.name)
    archive.write(7, _frame_for(100 * b), b, source="t", embedder="another-model")
    store = MemoryVectorStore(collection="f", dim=3, embedder_name=embedder.name)
    store.open()
    dedup = Deduplicator(embedder, store, archive)
    assert dedup.stats.recovered == 1 and dedup.stats.dropped_orphans == 2
    assert archive.ids() == [5] and store.count() == 1
    assert dedup.process(_frame_for(100 * b)).frame_id == 8  # ids continue past the orphans
    dedup.close()


def test_failed_persistence_forgets_the_frame(tmp_path: Path) -> None:
    embedder = _Embedder()

    class FailingStore(MemoryVectorStore):
        fail = True

        def insert(self, rows):
            if self.fail:
                raise VectorStoreError("disk full")
            super().insert(rows)

    store = FailingStore(collection="f", dim=3, embedder_name=embedder.name)
    store.open()
    dedup = Deduplicator(embedder, store, FrameArchive(tmp_path / "frames"))
    v = np.array([50.0, 10.0, 0.0])
    assert dedup.process(_frame_for(v)).novel
    dedup.flush()
    assert dedup.stats.persist_errors == 1 and len(dedup.index) == 0
    assert FrameArchive(tmp_path / "frames").ids() == []
    store.fail = False
    assert dedup.process(_frame_for(v)).novel  # not silently suppressed by a lost frame
    dedup.close()
    assert store.count() == 1


_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from cv_autolabel.core.dedup import DedupSettings, open_deduplicator
    from cv_autolabel.core.types import Frame

    dedup = open_deduplicator(DedupSettings(data_dir=Path(sys.argv[1]), embedder="thumbnail"))
    dedup.on_stored = lambda fid, frame, path, ctx: print("ACK", fid, flush=True)
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(100000):
        rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # every frame novel
        dedup.process(Frame(rgb, None, None, i, "cam"))
""")


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    acked = []
    try:
        assert proc.stdout is not None
        while len(acked) < 40:
            line = proc.stdout.readline()
            assert line, "writer died before acknowledging 40 frames"
            acked.append(int(line.split()[1]))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    dedup = open_deduplicator(DedupSettings(data_dir=tmp_path, embedder="thumbnail"))
    try:
        stored = set(dedup.index.ids.tolist())
        on_disk = set(dedup.archive.ids())
        assert set(acked) <= stored and set(acked) <= on_disk
        assert stored == on_disk  # store and archive agree after recovery
        for fid in acked[-3:]:
            meta = json.loads((dedup.archive.root / f"{fid:08d}" / "meta.json").read_text())
            assert meta["id"] == fid
    finally:
        dedup.close_all()
