"""``cv-autolabel demo``: what exists of the pipeline, end to end, on a synthetic recording.

Today: the synthetic RGB-D world writes a real ROS 2 bag, the bag is inspected, its
synchronised frames are extracted, the dedup stage keeps the novel ones, and the detector
(with the ground-truth masks standing in for a model) locates the objects in 3D. Active learning
and the offline loop (flush, prepare, train, export, replay) join here as they land.
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
from cv_autolabel.tools.replay import replay
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
    _say(f"[1/5] simulating {frames} RGB-D frames of a bin of cans (seed {seed}) ...")
    with progress_bar(frames, "sim") as advance:
        sim = simulate(SimConfig(frames=frames, seed=seed, width=width, height=height), bag,
                       progress=advance)
    _say(f"      wrote ROS 2 bag {bag} ({sim['seconds']} s)")
    _say("[2/5] reading it back:")
    with BagReader(bag) as reader:
        for topic, (msgtype, count) in sorted(reader.topics.items()):
            _say(f"      {topic:<50} {count:>5}  {msgtype}")
    frames_dir = run_dir / "frames"
    _say(f"[3/5] extracting synchronised RGB-D frames to {frames_dir} ...")
    with progress_bar(None, "extract") as advance:
        ext = extract(bag, frames_dir, progress=advance)
    _say(f"      {ext['frames']} colour images, {ext['frames']} 16-bit depth PNGs, index.jsonl")
    dedup_dir = run_dir / "dedup"
    _say(f"[4/5] keeping only novel frames (dedup, threshold 0.95) into {dedup_dir} ...")
    with progress_bar(frames, "dedup") as advance:
        dd = run_dedup(bag, db=str(dedup_dir / "milvus.db"), out=dedup_dir / "frames",
                       settings=DedupSettings(data_dir=dedup_dir), progress=advance)
    _say(f"      kept {dd['frames_kept']} of {dd['frames_in']} frames "
         f"({dd['frames_per_second']} frames/s, embedder {dd['embedder']})")
    replayed = run_dir / "detector_bag"
    _say(f"[5/5] replaying the detector (ground-truth masks + depth fusion) into {replayed} ...")
    with progress_bar(frames, "replay") as advance:
        rp = replay(bag, replayed, segmenter="gt", progress=advance)
    _say(f"      {rp['objects']} objects located in 3D ({rp['invalid_objects']} without usable "
         f"depth), {rp['latency_ms_p50']} ms per frame")
    seconds = round(time.perf_counter() - started, 1)
    _say(f"done in {seconds} s. Next: `cv-autolabel info {bag}`, or play it on a ROS 2 machine "
         f"with `ros2 bag play {bag}`.")
    sys.stdout.flush()
    return {"workspace": str(workspace), "bag": str(bag), "frames": ext["frames"],
            "frames_kept": dd["frames_kept"], "sim": sim, "extract": ext, "dedup": dd,
            "detector": rp, "seconds": seconds}
