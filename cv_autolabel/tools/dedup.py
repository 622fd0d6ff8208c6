"""``cv-autolabel dedup``: keep the novel frames of a bag or an image folder.

Runs the same engine as the dedup node over recorded data: frames are judged in recorded
order, novel ones are stored in ``--out`` (one directory per frame) and their embeddings in
the vector store ``--db``. Running it again with the same ``--db`` continues the store: frames
already seen in earlier runs count as duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2

from cv_autolabel.core.dedup import DedupSettings, open_deduplicator
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import FrameStats, iter_frames
from cv_autolabel.ros.topics import CameraTopics

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def is_bag(path: Path) -> bool:
    """Return True for a ROS 2 bag directory (metadata.yaml, or a lone mcap/db3 file)."""
    if not path.is_dir():
        return False
    return (path / "metadata.yaml").exists() or any(path.glob("*.mcap")) or any(
        path.glob("*.db3"))


def image_files(folder: Path) -> list[Path]:
    """Return the images under ``folder`` (recursive), sorted by path."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def iter_image_frames(files: list[Path], stats: FrameStats,
                      warn: Callable[[str], None] | None = None) -> Iterator[tuple[Frame, str]]:
    """Yield (Frame, source path) per readable image; unreadable files are counted, skipped."""
    for path in files:
        stats.sets += 1
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or bgr.size == 0:
            stats.rejected += 1
            stats.errors["UnreadableImage"] = stats.errors.get("UnreadableImage", 0) + 1
            if warn:
                warn(f"skipped unreadable image {path}")
            continue
        stats.frames += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        yield Frame(rgb, None, None, path.stat().st_mtime_ns, ""), str(path)


def _frames(src: Path, topics: CameraTopics, slop_s: float, stats: FrameStats,
            warn: Callable[[str], None] | None) -> tuple[Iterator[tuple[Frame, str]], Any, int | None]:
    if is_bag(src):
        bag = BagReader(src)
        bag.open()
        bag.check_topics(topics.names())
        total = bag.topics[topics.color][1]
        frames = ((f, str(src)) for f in iter_frames(bag, topics, slop_s=slop_s, stats=stats))
        return frames, bag, total
    if src.is_dir():
        files = image_files(src)
        if not files:
            raise CvAutolabelError(f"{src} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return iter_image_frames(files, stats, warn), None, len(files)
    if not src.exists():
        raise CvAutolabelError(f"source not found: {src}")
    raise CvAutolabelError(f"{src} is neither a ROS 2 bag directory nor an image folder")


def run_dedup(src: Path, *, db: str, out: Path, settings: DedupSettings,
              topics: CameraTopics = CameraTopics(), slop_s: float = 0.05,
              progress: Callable[[int], None] | None = None,
              set_total: Callable[[int | None], None] | None = None,
              warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Deduplicate ``src`` into the store ``db`` and the frame archive ``out``."""
    stats = FrameStats()
    frames, bag, total = _frames(src, topics, slop_s, stats, warn)
    if set_total:
        set_total(total)
    dedup = open_deduplicator(DedupSettings(**{**settings.__dict__, "db_uri": db}),
                              frames_dir=out)
    stored_before = len(dedup.index)
    started = time.perf_counter()
    try:
        for frame, source in frames:
            dedup.process(frame, source=source)
            if progress:
                progress(1)
        dedup.flush()
    finally:
        dedup.close_all()
        if bag is not None:
            bag.close()
    elapsed = time.perf_counter() - started
    s = dedup.stats
    if bag is not None and bag.damage and warn:
        warn(f"bag {src} is damaged; deduplicated the readable prefix: {bag.damage}")
    return {
        "source": str(src), "db": db, "out": str(out), "embedder": dedup.embedder.name,
        "threshold": settings.threshold, "frames_in": s.frames_in, "frames_kept": s.stored,
        "duplicates": s.duplicates, "rejected": stats.rejected, "errors": stats.errors,
        "stored_before": stored_before, "stored_total": len(dedup.index),
        "persist_errors": s.persist_errors, "recovered": s.recovered,
        "frames_per_second": round(s.frames_in / elapsed, 2) if elapsed > 0 else 0.0,
        "decide_ms_p50": s.as_dict()["decide_ms_p50"],
        "decide_ms_p99": s.as_dict()["decide_ms_p99"],
        "seconds": round(elapsed, 2),
    }
