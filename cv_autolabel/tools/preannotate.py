"""``cv-autolabel preannotate``: run a teacher over a frame pool into a CVAT-ready COCO zip.

Frames of an image folder (sorted paths, recursive) or a ROS 2 bag (recorded order) are
numbered 0, 1, ...; shard ``i/n`` keeps the frames with ``index % n == i - 1`` so n machines
can split one pool. Each frame's teacher instances (same-class overlaps merged) are queued in
an ``AnnotationQueue`` in the work directory with source ``"<SRC>#<index>"``, and at the end
the queue is flushed to the COCO zip exactly like the active-learning node's flush.

Resumable: the sources already queued (pending entries, plus ``done.txt`` in the work
directory, appended and fsynced after each enqueue) are skipped, so an interrupted run
re-run with the same arguments continues where it stopped and never queues a frame twice.
``merge_zips`` combines the shards' zips into one.
"""

from __future__ import annotations

import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import (IMAGES_ARCDIR, FlushResult, flush, read_coco_zip,
                                    recover_exports, write_coco_zip)
from cv_autolabel.core.disagreement import merge_overlapping
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CocoError, CvAutolabelError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import FrameStats, iter_frames
from cv_autolabel.ros.topics import CameraTopics
from cv_autolabel.tools.dedup import image_files, is_bag, iter_image_frames
from cv_autolabel.tools.teachers import Teacher, make_teacher

DONE_FILE = "done.txt"
#: Pending entries the work queue holds: in effect unbounded (a pool is exported whole).
_MAX_ENTRIES = 2**62


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/n"`` (1-based) into ``(i, n)``.

    Example:
        >>> parse_shard("2/4")
        (2, 4)
    """
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise CvAutolabelError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise CvAutolabelError(f"--shard i/n needs 1 <= i <= n, got {text!r}")
    return i, n


def preannotate(src: Path, out_zip: Path, *, teacher: str = "groundtruth",
                teacher_weights: Path | None = None,
                prompts: dict[str, list[str]] | None = None, work: Path | None = None,
                shard: tuple[int, int] = (1, 1), merge_iou: float = 0.6,
                topics: CameraTopics = CameraTopics(), slop_s: float = 0.05,
                progress: Callable[[int], None] | None = None,
                warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pre-annotate the frames of ``src`` in ``shard`` and write them to ``out_zip``.

    Args:
        src: image folder (recursive) or ROS 2 bag.
        out_zip: the COCO 1.0 zip to write (must not exist unless nothing is left to export).
        teacher: ``"groundtruth"`` (synthetic bags) or ``"sam3"``.
        teacher_weights: sam3.pt (None: ``$CV_AUTOLABEL_SAM3``, else
            ``~/cv_autolabel_data/models/sam3.pt``).
        prompts: class -> text prompts (SAM3), or the class order (groundtruth).
        work: work directory holding the queue (default ``<out_zip>.work``).
        shard: (i, n), 1-based; frames with ``index % n == i - 1`` are processed.
        merge_iou: same-class teacher instances overlapping by more merge.
        topics, slop_s: colour/depth/info topics and sync slop of a bag.
        progress: called with 1 per frame seen.
        warn: called with one-line warnings.

    Returns:
        Summary: frames_total, frames_in_shard, processed, skipped_done, unreadable,
        failed, instances, zip (None when nothing was exported and no zip exists), ...

    Raises:
        CvAutolabelError: missing SRC, bad shard, teacher set-up errors, COCO errors.
    """
    src, out_zip = Path(src), Path(out_zip)
    _check_source(src)
    i, n = shard
    if not 1 <= i <= n:
        raise CvAutolabelError(f"shard must satisfy 1 <= i <= n, got {i}/{n}")
    teach, class_names = make_teacher(teacher, src, weights=teacher_weights, prompts=prompts)
    work = Path(work) if work is not None else out_zip.with_name(out_zip.name + ".work")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = {"frames_total": 0, "frames_in_shard": 0, "processed": 0, "skipped_done": 0,
              "failed": 0, "instances": 0}
    stats = FrameStats()
    with AnnotationQueue(work, max_entries=_MAX_ENTRIES, policy="reject_new") as queue:
        done = _done_sources(queue, work)
        with open(work / DONE_FILE, "a", encoding="utf-8") as log, \
                _indexed_frames(src, topics, slop_s, stats, warn) as frames:
            for index, load in frames:
                counts["frames_total"] += 1
                if progress:
                    progress(1)
                if index % n != i - 1:
                    continue
                counts["frames_in_shard"] += 1
                source = f"{src}#{index}"
                if source in done:
                    counts["skipped_done"] += 1
                    continue
                frame = load()
                if frame is None:
                    continue
                found = _annotate(frame, teach, class_names, merge_iou, counts, warn, source)
                if found is None:
                    continue
                _enqueue(queue, frame, found, class_names, source)
                _mark_done(log, source)
                counts["processed"] += 1
                counts["instances"] += len(found)
        result = _export(queue, out_zip, class_names)
    return {"src": str(src), "teacher": teacher, "shard": f"{i}/{n}", **counts,
            "unreadable": stats.rejected, "class_names": list(class_names),
            "exported_images": result.images, "exported_annotations": result.annotations,
            "zip": str(out_zip) if out_zip.exists() else None, "work": str(work),
            "seconds": round(time.perf_counter() - started, 2)}


def _export(queue: AnnotationQueue, out_zip: Path, class_names: Sequence[str]) -> FlushResult:
    """Flush the pending entries to ``out_zip``; a no-op when an earlier run exported all."""
    with queue.export_lock():
        recover_exports(queue)  # a flush killed after writing its zip: roll it forward
    if out_zip.exists() and queue.stats().pending == 0:
        return FlushResult(None, 0, 0, 0, 0, ())
    return flush(queue, out_zip, class_names=class_names)


def _check_source(src: Path) -> None:
    if not src.exists():
        raise CvAutolabelError(f"source not found: {src}")
    if not (is_bag(src) or src.is_dir()):
        raise CvAutolabelError(f"{src} is neither a ROS 2 bag directory nor an image folder")


def _done_sources(queue: AnnotationQueue, work: Path) -> set[str]:
    """Sources already queued: pending entries plus the ``done.txt`` log."""
    done = {entry.source for entry in queue.pending()}
    log = work / DONE_FILE
    if log.exists():
        done.update(line for line in log.read_text(encoding="utf-8").splitlines() if line)
    return done


def _mark_done(log: Any, source: str) -> None:
    log.write(source + "\n")
    log.flush()
    os.fsync(log.fileno())


def _annotate(frame: Frame, teach: Teacher, class_names: Sequence[str], merge_iou: float,
              counts: dict[str, int], warn: Callable[[str], None] | None,
              source: str) -> Instances | None:
    """Return the teacher's merged instances; None (counted, warned) on a teacher error."""
    try:
        found = teach(frame)
    except CvAutolabelError as err:
        counts["failed"] += 1
        if warn:
            warn(f"teacher failed on {source}: {err}")
        return None
    if tuple(found.class_names) != tuple(class_names):
        raise CvAutolabelError(f"teacher returned classes {found.class_names}, "
                               f"expected {tuple(class_names)}")
    return merge_overlapping(found, iou=merge_iou)


def _enqueue(queue: AnnotationQueue, frame: Frame, teacher: Instances,
             class_names: Sequence[str], source: str) -> None:
    h, w = frame.rgb.shape[:2]
    entry = queue.enqueue(frame, teacher=teacher, student=Instances.empty(h, w, class_names),
                          score=1.0, reasons=[], source=source)
    if entry is None:  # cannot happen with an unbounded reject_new queue
        raise CvAutolabelError(f"the work queue refused {source}")


@contextmanager
def _indexed_frames(src: Path, topics: CameraTopics, slop_s: float, stats: FrameStats,
                    warn: Callable[[str], None] | None,
                    ) -> Iterator[Iterator[tuple[int, Callable[[], Frame | None]]]]:
    """Yield an iterator of (index, load) where ``load()`` returns the frame or None.

    Images are only read when loaded (frames of other shards are never decoded); bag
    frames are decoded in order anyway.
    """
    if is_bag(src):
        with BagReader(src) as bag:
            bag.check_topics(topics.names())
            frames = iter_frames(bag, topics, slop_s=slop_s, stats=stats)
            yield ((k, (lambda f=f: f)) for k, f in enumerate(frames))
            if bag.damage and warn:
                warn(f"bag {src} is damaged; used the readable prefix: {bag.damage}")
        return
    files = image_files(src)
    if not files:
        raise CvAutolabelError(f"{src} holds no images")

    def loader(path: Path) -> Callable[[], Frame | None]:
        return lambda: next((f for f, _ in iter_image_frames([path], stats, warn)), None)

    yield ((k, loader(p)) for k, p in enumerate(files))


def merge_zips(zips: Sequence[Path], out_zip: Path) -> dict[str, Any]:
    """Merge COCO 1.0 zips (e.g. the shards of one pool) into one CVAT-ready zip.

    Images are renamed ``<zip number>_<file name>`` (unique), image and annotation ids are
    renumbered and categories are united by name (first zip's order first).

    Returns:
        ``{"zip", "images", "annotations", "class_names"}``.

    Raises:
        CocoError: a zip is unreadable, or ``out_zip`` exists.
    """
    out_zip = Path(out_zip)
    if out_zip.exists():
        raise CocoError(f"{out_zip} exists; choose a new zip name")
    datasets = [read_coco_zip(Path(z)) for z in zips]
    if not datasets:
        raise CocoError("merge needs at least one zip")
    merged = {**{k: v for k, v in datasets[0].items() if k not in ("images", "annotations")},
              "categories": [], "images": [], "annotations": []}
    with tempfile.TemporaryDirectory(dir=out_zip.parent) as tmp:
        files: list[tuple[Path, str]] = []
        for k, (path, dataset) in enumerate(zip(zips, datasets), start=1):
            files += _merge_one(merged, dataset, Path(path), k, Path(tmp))
        write_coco_zip(out_zip, merged, files)
    return {"zip": str(out_zip), "images": len(merged["images"]),
            "annotations": len(merged["annotations"]),
            "class_names": [c["name"] for c in merged["categories"]]}


def _merge_one(merged: dict[str, Any], dataset: dict[str, Any], path: Path, k: int,
               tmp: Path) -> list[tuple[Path, str]]:
    """Append one zip's images and annotations to ``merged``; return its extracted files."""
    names = {c["name"]: c["id"] for c in merged["categories"]}
    category: dict[int, int] = {}
    for cat in dataset.get("categories", []):
        if cat["name"] not in names:
            names[cat["name"]] = len(merged["categories"]) + 1
            merged["categories"].append({**cat, "id": names[cat["name"]]})
        category[cat["id"]] = names[cat["name"]]
    image_ids: dict[int, int] = {}
    files: list[tuple[Path, str]] = []
    with zipfile.ZipFile(path) as zf:
        for img in dataset.get("images", []):
            new_name = f"{k:03d}_{img['file_name']}"
            image_ids[img["id"]] = len(merged["images"]) + 1
            merged["images"].append({**img, "id": image_ids[img["id"]], "file_name": new_name})
            target = tmp / new_name
            target.write_bytes(zf.read(f"{IMAGES_ARCDIR}/{img['file_name']}"))
            files.append((target, new_name))
    for ann in dataset.get("annotations", []):
        merged["annotations"].append({**ann, "id": len(merged["annotations"]) + 1,
                                      "image_id": image_ids[ann["image_id"]],
                                      "category_id": category[ann["category_id"]]})
    return files
