"""``cv-autolabel demo``: what exists of the pipeline, end to end, on a synthetic recording.

Today: the synthetic RGB-D world writes a real ROS 2 bag, the bag is inspected, its
synchronised frames are extracted, the dedup stage keeps the novel ones, the detector (with
the ground-truth masks standing in for a model) locates the objects in 3D, and active learning
queues the novel frames and flushes them as a CVAT-ready COCO batch. Training, export and the
second iteration join here as they land.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cv_autolabel.core.dedup import DedupSettings
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.tools.dedup import run_dedup
from cv_autolabel.tools.extract import extract
from cv_autolabel.tools.replay import replay, replay_active_learning
from cv_autolabel.tools.sim.run import SimConfig, simulate


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(workspace: Path, *, frames: int = 120, seed: int = 0, width: int = 640,
             height: int = 480) -> dict[str, Any]:
    """Run the demo in ``workspace`` (recreated each run); return a summary."""
    from cv_autolabel.cli import progress_bar  # noqa: PLC0415

    started = time.perf_counter()
    run_dir = workspace / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    bag = run_dir / "synthetic_bag"
    _say(f"[1/6] simulating {frames} RGB-D frames of a bin of cans (seed {seed}) ...")
    with progress_bar(frames, "sim") as advance:
        sim = simulate(SimConfig(frames=frames, seed=seed, width=width, height=height), bag,
                       progress=advance)
    _say(f"      wrote ROS 2 bag {bag} ({sim['seconds']} s)")
    _say("[2/6] reading it back:")
    with BagReader(bag) as reader:
        for topic, (msgtype, count) in sorted(reader.topics.items()):
            _say(f"      {topic:<50} {count:>5}  {msgtype}")
    frames_dir = run_dir / "frames"
    _say(f"[3/6] extracting synchronised RGB-D frames to {frames_dir} ...")
    with progress_bar(None, "extract") as advance:
        ext = extract(bag, frames_dir, progress=advance)
    _say(f"      {ext['frames']} colour images, {ext['frames']} 16-bit depth PNGs, index.jsonl")
    dedup_dir = run_dir / "dedup"
    _say(f"[4/6] keeping only novel frames (dedup, threshold 0.95) into {dedup_dir} ...")
    with progress_bar(frames, "dedup") as advance:
        dd = run_dedup(bag, db=str(dedup_dir / "milvus.db"), out=dedup_dir / "frames",
                       settings=DedupSettings(data_dir=dedup_dir), progress=advance)
    _say(f"      kept {dd['frames_kept']} of {dd['frames_in']} frames "
         f"({dd['frames_per_second']} frames/s, embedder {dd['embedder']})")
    replayed = run_dir / "detector_bag"
    _say(f"[5/6] replaying the detector (ground-truth masks + depth fusion) into {replayed} ...")
    with progress_bar(frames, "replay") as advance:
        rp = replay(bag, replayed, segmenter="gt", progress=advance)
    _say(f"      {rp['objects']} objects located in 3D ({rp['invalid_objects']} without usable "
         f"depth), {rp['latency_ms_p50']} ms per frame")
    al = _active_learning(bag, run_dir, frames)
    seconds = round(time.perf_counter() - started, 1)
    _say(f"done in {seconds} s. Next: `cv-autolabel info {bag}`, or play it on a ROS 2 machine "
         f"with `ros2 bag play {bag}`.")
    sys.stdout.flush()
    return {"workspace": str(workspace), "bag": str(bag), "frames": ext["frames"],
            "frames_kept": dd["frames_kept"], "sim": sim, "extract": ext, "dedup": dd,
            "detector": rp, "active_learning": al, "seconds": seconds}


def _active_learning(bag: Path, run_dir: Path, frames: int) -> dict[str, Any]:
    from cv_autolabel.cli import progress_bar  # noqa: PLC0415
    from cv_autolabel.core.annotation_queue import AnnotationQueue  # noqa: PLC0415
    from cv_autolabel.core.coco import flush  # noqa: PLC0415

    queue_dir = run_dir / "queue"
    _say("[6/6] active learning (teacher: ground truth, no student model yet) and flush ...")
    with progress_bar(frames, "active learning") as advance:
        al = replay_active_learning(bag, queue_dir, progress=advance)
    with AnnotationQueue(queue_dir) as queue:
        batch = flush(queue, run_dir / "cvat_batch_001.zip", class_names=("red_can", "blue_can"))
    _say(f"      {al['queued']} of {al['novel']} novel frames queued for labelling; "
         f"wrote {batch.images} frames with {batch.annotations} pre-annotations to "
         f"{batch.zip_path} (import into CVAT as COCO 1.0)")
    return {**al, "batch": str(batch.zip_path), "batch_images": batch.images}
