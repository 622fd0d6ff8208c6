"""Dedup benchmark: our path vs the straightforward baseline, same frames, one run.

Our path: ResNet50 on OpenVINO INT8 (and, second row, the weight-free thumbnail embedder),
exact in-memory novelty index, novel frames persisted asynchronously (files + Milvus Lite).
Baseline (what a user would write from the original description): torch ResNet50 per frame,
then ``MilvusClient.search`` on Milvus Lite, then ``insert`` when novel.

Both run over the same 640x480 synthetic frames with 1k, 10k and 100k vectors already stored.
Prefilled vectors are embeddings of frames from another synthetic recording, perturbed to be
distinct, so the store is dense in the same region of embedding space as the queries.

Run:  .venv/bin/python benchmarks/dedup/bench_dedup.py [--sizes 1000,10000,100000]
No pretrained weights exist on these machines: ResNet50 runs with random weights, which cost
exactly the same compute; its *decisions* are not meaningful (see README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cv_autolabel.core.dedup import DedupSettings, open_deduplicator
from cv_autolabel.core.embedders import create_embedder, l2_normalise
from cv_autolabel.core.vectorstores import VectorRecord, open_vector_store
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.tools.machine import cpu_model
from cv_autolabel.tools.sim.run import SimConfig, simulate

HERE = Path(__file__).resolve().parent


def sim_frames(cache: Path, seed: int, frames: int) -> list[np.ndarray]:
    bag = cache / f"sim_seed{seed}_{frames}"
    if not bag.exists():
        simulate(SimConfig(frames=frames, seed=seed), bag)
    with BagReader(bag) as reader:
        return [f.rgb for f in iter_frames(reader)]


def prefill_vectors(embedder, images: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    base = embedder.embed_batch(images)
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), n)]
    noise = rng.normal(size=picks.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return l2_normalise(picks + 0.8 * noise)  # ~0.78 cosine to its source frame


def fill_store(uri: str, embedder, vectors: np.ndarray) -> None:
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    store = open_vector_store(uri, collection="frames", dim=embedder.dim,
                              embedder_name=embedder.name)
    with store:
        for lo in range(0, len(vectors), 2048):
            chunk = vectors[lo:lo + 2048]
            store.insert([VectorRecord(id=10_000_000 + lo + i, vector=v, stamp_ns=0,
                                       frame_id="", source="prefill", path="")
                          for i, v in enumerate(chunk)])


def run_ours(workdir: Path, embedder, frames: list[np.ndarray]) -> dict:
    from cv_autolabel.core.types import Frame

    t_open = time.perf_counter()
    dedup = open_deduplicator(DedupSettings(data_dir=workdir), embedder=embedder)
    open_s = time.perf_counter() - t_open
    decide, total = [], []
    started = time.perf_counter()
    for i, rgb in enumerate(frames):
        t0 = time.perf_counter()
        r = dedup.process(Frame(rgb, None, None, i, "cam"), source="bench")
        total.append(time.perf_counter() - t0)
        decide.append(r.decide_ms)
    dedup.flush()
    elapsed = time.perf_counter() - started
    kept = dedup.stats.stored
    dedup.close_all()  # writes the index snapshot
    t_open = time.perf_counter()
    dedup = open_deduplicator(DedupSettings(data_dir=workdir), embedder=embedder)
    reopen_s = time.perf_counter() - t_open
    assert dedup.loaded_from == "snapshot"
    dedup.close_all()
    return {"fps": len(frames) / elapsed, "decide_p50_ms": float(np.percentile(decide, 50)),
            "decide_p99_ms": float(np.percentile(decide, 99)),
            "frame_p50_ms": 1000 * float(np.percentile(total, 50)),
            "frame_p99_ms": 1000 * float(np.percentile(total, 99)), "kept": kept,
            "open_s": open_s, "reopen_s": reopen_s}


def run_baseline(uri: str, vectors: np.ndarray, frames: list[np.ndarray],
                 threshold: float = 0.95) -> dict:
    """torch ResNet50 per frame -> MilvusClient.search -> insert if novel."""
    import torch
    import torchvision
    from pymilvus import MilvusClient
    from torchvision.transforms import v2

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model.eval()
    prep = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.CenterCrop(224),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    client = MilvusClient(uri)
    client.create_collection("frames", dimension=vectors.shape[1], metric_type="COSINE")
    for lo in range(0, len(vectors), 2048):
        client.insert("frames", [{"id": lo + i, "vector": v.tolist()}
                                 for i, v in enumerate(vectors[lo:lo + 2048])])
    next_id, per_frame, search_ms, kept = len(vectors), [], [], 0
    started = time.perf_counter()
    for rgb in frames:
        t0 = time.perf_counter()
        with torch.no_grad():
            emb = torch.nn.functional.normalize(model(prep(rgb).unsqueeze(0)), dim=1)[0]
        t1 = time.perf_counter()
        hits = client.search("frames", data=[emb.tolist()], limit=1,
                             search_params={"metric_type": "COSINE"})
        search_ms.append(1000 * (time.perf_counter() - t1))
        if not hits[0] or hits[0][0]["distance"] < threshold:
            client.insert("frames", [{"id": next_id, "vector": emb.tolist()}])
            next_id += 1
            kept += 1
        per_frame.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    client.close()
    from milvus_lite.server_manager import server_manager_instance
    server_manager_instance.release_server(uri)
    return {"fps": len(frames) / elapsed, "decide_p50_ms": float(np.percentile(search_ms, 50)),
            "decide_p99_ms": float(np.percentile(search_ms, 99)),
            "frame_p50_ms": 1000 * float(np.percentile(per_frame, 50)),
            "frame_p99_ms": 1000 * float(np.percentile(per_frame, 99)), "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--frames", type=int, default=300, help="query frames for our path")
    ap.add_argument("--baseline-frames", type=int, default=30,
                    help="frames for the (slow) baseline; its fps is per frame, comparable")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cv_bench")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    queries = sim_frames(args.cache, seed=100, frames=args.frames)
    sources = sim_frames(args.cache, seed=200, frames=100)
    embedders = {
        "ours: ResNet50 OpenVINO INT8": create_embedder("resnet50", weights=None,
                                                        precision="int8"),
        "ours: thumbnail (no weights)": create_embedder("thumbnail"),
    }
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for label, embedder in embedders.items():
            work = Path(tempfile.mkdtemp(prefix="dedup_", dir=args.cache))
            vectors = prefill_vectors(embedder, sources, n, seed=n)
            t0 = time.perf_counter()
            fill_store(str(work / "dedup" / "milvus.db"), embedder, vectors)
            print(f"[{n}] prefilled {label} store in {time.perf_counter() - t0:.0f} s", flush=True)
            rows.append({"stored": n, "path": label, **run_ours(work, embedder, queries)})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(work, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="base_", dir=args.cache))
        vectors = prefill_vectors(embedders["ours: ResNet50 OpenVINO INT8"], sources, n, seed=n)
        rows.append({"stored": n, "path": "baseline: torch ResNet50 + Milvus Lite search",
                     **run_baseline(str(work / "baseline.db"), vectors,
                                    queries[: args.baseline_frames])})
        print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args.out)


def report(rows: list[dict], out: Path) -> None:
    print(f"\n{'stored':>7}  {'path':<46} {'fps':>7} {'decide p50':>11} {'decide p99':>11} "
          f"{'frame p99':>10}  vs baseline")
    for r in rows:
        base = next(b for b in rows if b["stored"] == r["stored"] and b["path"].startswith("base"))
        print(f"{r['stored']:>7}  {r['path']:<46} {r['fps']:>7.1f} {r['decide_p50_ms']:>9.2f}ms "
              f"{r['decide_p99_ms']:>9.2f}ms {r['frame_p99_ms']:>8.1f}ms  "
              f"{r['fps'] / base['fps']:>6.1f}x fps")
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "python": platform.python_version()}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
