"""``cv-autolabel extract``: write a bag's synchronised RGB-D frames as image files + index.

The job ``ros2_bag_exporter`` does in the hand-made workflow, without ROS: colour images,
16-bit depth PNGs in millimetres (0 = invalid, as RealSense writes them) and ``index.jsonl``,
one line per frame with its stamp, frame_id, intrinsics and file names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


from cv_autolabel.core.fsio import depth_to_png_mm, write_image_atomic
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import FrameStats, iter_frames
from cv_autolabel.ros.topics import CameraTopics

IMAGE_FORMATS = ("png", "jpg")


def _frame_record(i: int, frame: Frame, color: str, depth: str | None) -> dict[str, Any]:
    k = frame.intrinsics
    return {
        "index": i, "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id,
        "color": color, "depth": depth,
        "intrinsics": None if k is None else {
            "width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy, "cx": k.cx,
            "cy": k.cy, "distortion_model": k.distortion_model, "d": list(k.distortion)},
    }


def extract(bag_path: Path, out: Path, *, topics: CameraTopics = CameraTopics(),
            image_format: str = "png", every: int = 1, overwrite: bool = False,
            slop_s: float = 0.05, progress: Callable[[int], None] | None = None,
            warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Extract every ``every``-th synchronised frame of ``bag_path`` into ``out``."""
    if image_format not in IMAGE_FORMATS:
        raise CvAutolabelError(f"unknown image format {image_format!r}; use png or jpg")
    if every < 1:
        raise CvAutolabelError("--every must be at least 1")
    stats, started = FrameStats(), time.perf_counter()
    with BagReader(bag_path) as bag:
        bag.check_topics(topics.names())  # fail on a wrong topic before touching `out`
        _prepare_out(out, overwrite)
        written = _write_frames(bag, out, topics, image_format, every, slop_s, stats, progress)
        damage = bag.damage
    if damage and warn:
        warn(f"bag {bag_path} is damaged; extracted the readable prefix ({written} frames): "
             f"{damage}")
    return {"bag": str(bag_path), "out": str(out), "frames": written, "sets": stats.sets,
            "rejected": stats.rejected, "errors": stats.errors, "damaged": damage is not None,
            "damage": damage, "seconds": round(time.perf_counter() - started, 2)}


def _write_frames(bag: BagReader, out: Path, topics: CameraTopics, image_format: str,
                  every: int, slop_s: float, stats: FrameStats,
                  progress: Callable[[int], None] | None) -> int:
    written = 0
    with open(out / "index.jsonl", "w") as index:
        for n, frame in enumerate(iter_frames(bag, topics, slop_s=slop_s, stats=stats)):
            if progress:
                progress(1)
            if n % every:
                continue
            color = f"color/{written:06d}.{image_format}"
            write_image_atomic(out / color, frame.rgb)
            depth = None
            if frame.depth is not None:
                depth = f"depth/{written:06d}.png"
                write_image_atomic(out / depth, depth_to_png_mm(frame.depth))
            # One flushed line per frame: a crash leaves an index of the files that exist.
            index.write(json.dumps(_frame_record(written, frame, color, depth)) + "\n")
            index.flush()
            written += 1
    return written


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CvAutolabelError(f"{out} is not empty (pass --overwrite to replace its contents)")
    for sub in ("color", "depth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        if overwrite:  # stale frames from a longer earlier run would not be in the new index
            for stale in (out / sub).iterdir():
                stale.unlink()
