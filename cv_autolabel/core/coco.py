"""Export queued frames as a zip that CVAT imports as "COCO 1.0", exactly once per frame.

Zip layout (as CVAT's own COCO 1.0 export, subset ``default``)::

    annotations/instances_default.json
    images/default/<entry id:06d>_<stamp_ns>.png

Each image's ``file_name`` is its path relative to ``images/default`` (CVAT matches it, minus
the extension, to a task frame of the same name); the COCO image id is the queue entry id.
Categories are 1-based in the order of the configured class names (``supercategory`` "").
Each instance becomes one annotation: a polygon (``iscrowd`` 0) when its mask is one piece
without holes and a polygon traced along pixel edges rasterises back to it (IoU >= 0.95), else
an uncompressed RLE ``{"counts": [...], "size": [h, w]}`` (``iscrowd`` 1), which CVAT imports
as a mask. ``area`` is the mask's pixel count, ``bbox`` its tight ``[x, y, w, h]``. Empty
masks and classes outside the configured list are skipped and counted.

Exactly once: ``flush`` reserves the entries in the queue's export journal, writes the zip
beside its final name, fsyncs and renames it, and only then marks the entries exported. The
next flush first settles any export whose writer died: if its zip exists the entries are
marked exported in it (rolled forward), otherwise they go back to pending and its temp file
is deleted. So every entry ends up in exactly one existing zip.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from cv_autolabel.core.annotation_queue import AnnotationQueue, ExportBatch, QueueEntry
from cv_autolabel.core.fsio import fsync_dir
from cv_autolabel.core.instances import masks_to_boxes
from cv_autolabel.core.rle import uncompressed_rle
from cv_autolabel.errors import CocoError, QueueError

log = logging.getLogger(__name__)

ANNOTATIONS_ARCNAME = "annotations/instances_default.json"
IMAGES_ARCDIR = "images/default"
#: Least IoU between a polygon annotation and its source mask that validation accepts.
POLYGON_MIN_IOU = 0.9
#: Least IoU for which a mask is written as a polygon rather than as an RLE.
_POLYGON_CHOICE_IOU = 0.95
#: Simplification tolerances tried in turn, pixels (0: exact staircase along pixel edges).
_POLYGON_EPSILONS = (0.5, 0.0)


@dataclass(frozen=True)
class FlushResult:
    """What one ``flush`` exported.

    Attributes:
        zip_path: the zip written, or None when nothing was pending (no zip is written).
        images: frames in the zip.
        annotations: annotations in the zip.
        skipped_empty: instances left out because their mask is empty.
        skipped_unknown_class: instances left out because their class is not configured.
        entry_ids: queue entries exported, in id order.
        recovered: exports of a dead writer settled first (rolled forward or back).
        annotations_per_class: annotations of each configured class, in category order (a
            batch that is mostly one class says so before anyone opens CVAT).
        review_images: review images written beside the batch, when they were asked for
            (set by the callers that write them), else None.
    """

    zip_path: Path | None
    images: int
    annotations: int
    skipped_empty: int
    skipped_unknown_class: int
    entry_ids: tuple[int, ...]
    recovered: int = 0
    annotations_per_class: dict[str, int] = field(default_factory=dict)
    review_images: int | None = None

    def class_counts(self) -> str:
        """``"red_can 12, blue_can 3"``: the per-class counts as one phrase."""
        return ", ".join(f"{name} {n}" for name, n in self.annotations_per_class.items())


@dataclass
class _Built:
    """A COCO dataset under construction plus the source masks to validate it against."""

    dataset: dict[str, Any]
    sources: dict[int, dict[str, Any]]
    skipped_empty: int = 0
    skipped_unknown_class: int = 0


def flush(queue: AnnotationQueue, out_zip: Path, *, class_names: Sequence[str],
          limit: int | None = None, diverse: bool = False,
          annotations: Literal["teacher", "student"] = "teacher") -> FlushResult:
    """Export pending entries to a CVAT-ready COCO 1.0 zip and mark them exported.

    Args:
        queue: the annotation queue.
        out_zip: the zip to write; it must not exist. The batch is named after it.
        class_names: CVAT's labels, in category id order (id 1 = ``class_names[0]``).
        limit: most entries to export, at least 1 (None: all pending); the highest-scoring
            are taken.
        diverse: with a ``limit`` smaller than the queue, take the highest-scoring entry of
            each of ``limit`` clusters of similar-looking frames instead
            (:func:`diverse_entry_ids`).
        annotations: which instances become the pre-annotations.

    Returns:
        What was exported; with nothing pending, no zip is written and ``zip_path`` is None.

    Raises:
        CocoError: invalid class names or limit, ``out_zip`` exists, or the dataset fails
            validation.
    """
    out_zip = Path(out_zip)
    _check_arguments(class_names, annotations)
    if limit is not None and limit < 1:
        raise CocoError(f"limit must be at least 1 (or None for all), got {limit}")
    with queue.export_lock():
        recovered = recover_exports(queue)
        if out_zip.exists():
            raise CocoError(f"{out_zip} exists; give each flush a new zip name")
        ids = diverse_entry_ids(queue, limit) if diverse and limit is not None else None
        batch = queue.begin_export(out_zip.name, out_zip.resolve(), limit, ids=ids)
        if batch is None:
            return FlushResult(None, 0, 0, 0, 0, (), recovered)
        try:
            built = _write_batch(queue, batch, class_names, annotations)
        except BaseException:
            _settle(queue, batch)  # the zip may be in place if only the directory fsync failed
            raise
        queue.finish_export(batch)
    per_class = dict.fromkeys(class_names, 0)
    for ann in built.dataset["annotations"]:
        per_class[class_names[ann["category_id"] - 1]] += 1
    return FlushResult(out_zip, len(built.dataset["images"]), len(built.dataset["annotations"]),
                       built.skipped_empty, built.skipped_unknown_class, batch.entry_ids,
                       recovered, per_class)


def diverse_entry_ids(queue: AnnotationQueue, k: int) -> list[int] | None:
    """Ids of ``k`` pending entries: the highest-scoring of each of ``k`` clusters of their
    images' thumbnail embeddings (:func:`cv_autolabel.core.selection.select_diverse`); None
    when at most ``k`` are pending (then all of them go). An entry whose image cannot be
    read is logged and left out of the choice (it stays pending).

    The thumbnail embedder needs no weights and is what the dedup compares frames with, so
    "diverse" means "looks different" here as it does there.
    """
    from cv_autolabel.core.embedders import create_embedder  # noqa: PLC0415
    from cv_autolabel.core.selection import select_diverse  # noqa: PLC0415

    entries = queue.pending()
    if len(entries) <= k:
        return None
    embedder = create_embedder("thumbnail")
    readable, vectors = [], []
    for entry in entries:
        try:
            vectors.append(embedder.embed(entry.rgb()))
        except QueueError as err:  # a damaged image must not block every later flush
            if queue.get(entry.id) is not None:  # else evicted meanwhile: nothing to say
                log.warning("flush --diverse: leaving entry %d out of the choice: %s",
                            entry.id, err)
            continue
        readable.append(entry)
    if not readable:  # nothing to compare: the top scores, as without --diverse
        return None
    chosen = select_diverse([e.score for e in readable], np.stack(vectors), k)
    return [readable[i].id for i in chosen]


def recover_exports(queue: AnnotationQueue) -> int:
    """Settle exports whose writer died; return how many (call under ``queue.export_lock``).

    An export whose zip exists was renamed into place complete, so its entries are marked
    exported (rolled forward); otherwise they return to pending and its temp file is deleted.
    """
    batches = queue.unfinished_exports()
    for batch in batches:
        _settle(queue, batch)
    return len(batches)


def _settle(queue: AnnotationQueue, batch: ExportBatch) -> None:
    """Roll an unfinished export forward if its zip is in place, else back; drop its temp."""
    for tmp in batch.path.parent.glob(f".{batch.path.name}.tmp*"):
        tmp.unlink(missing_ok=True)
    if batch.path.exists():
        queue.finish_export(batch)
    else:
        queue.cancel_export(batch)


def _check_arguments(class_names: Sequence[str], annotations: str) -> None:
    if not class_names or len(set(class_names)) != len(class_names):
        raise CocoError(f"class_names must be non-empty and unique, got {list(class_names)}")
    if annotations not in ("teacher", "student"):
        raise CocoError(f"annotations must be 'teacher' or 'student', got {annotations!r}")


def _write_batch(queue: AnnotationQueue, batch: ExportBatch, class_names: Sequence[str],
                 annotations: str) -> _Built:
    built = _Built(_empty_dataset(class_names), {})
    files: list[tuple[Path, str]] = []
    for entry_id in batch.entry_ids:
        entry = queue.get(entry_id)
        if entry is None:  # cannot happen: reserved entries are never evicted
            raise CocoError(f"queue entry {entry_id} vanished during export")
        files.append((entry.image_path, _add_entry(built, entry, class_names, annotations)))
    validate_coco(built.dataset, built.sources)
    write_coco_zip(batch.path, built.dataset, files)
    return built


def _empty_dataset(class_names: Sequence[str]) -> dict[str, Any]:
    """Return the skeleton CVAT's own COCO export has: info, licenses, categories."""
    return {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "",
                 "version": "", "year": ""},
        "categories": [{"id": i + 1, "name": name, "supercategory": ""}
                       for i, name in enumerate(class_names)],
        "images": [],
        "annotations": [],
    }


def _add_entry(built: _Built, entry: QueueEntry, class_names: Sequence[str],
               annotations: str) -> str:
    """Append one entry's image and annotations; return the image's file_name."""
    file_name = f"{entry.id:06d}_{entry.stamp_ns}{entry.image_path.suffix}"
    built.dataset["images"].append({
        "id": entry.id, "width": entry.width, "height": entry.height, "file_name": file_name,
        "license": 0, "flickr_url": "", "coco_url": "", "date_captured": 0})
    instances = entry.teacher if annotations == "teacher" else entry.student
    category = {name: i + 1 for i, name in enumerate(class_names)}
    for name, mask in zip(instances.names(), instances.masks):
        if name not in category:
            built.skipped_unknown_class += 1
        elif not mask.any():
            built.skipped_empty += 1
        else:
            ann_id = len(built.dataset["annotations"]) + 1
            built.dataset["annotations"].append(
                mask_annotation(mask, ann_id=ann_id, image_id=entry.id,
                                category_id=category[name]))
            built.sources[ann_id] = _encode(mask)
    return file_name


def mask_annotation(mask: np.ndarray, *, ann_id: int, image_id: int,
                    category_id: int) -> dict[str, Any]:
    """Return the COCO annotation of one non-empty (H, W) boolean mask.

    Example:
        >>> m = np.zeros((4, 5), bool); m[1:3, 1:4] = True
        >>> ann = mask_annotation(m, ann_id=1, image_id=7, category_id=2)
        >>> ann["segmentation"], ann["iscrowd"], ann["area"], ann["bbox"]
        ([[1.0, 1.0, 1.0, 3.0, 4.0, 3.0, 4.0, 1.0]], 0, 6, [1.0, 1.0, 3.0, 2.0])
    """
    polygon = simple_polygon(mask)
    segmentation: Any = [polygon] if polygon is not None else uncompressed_rle(mask)
    x1, y1, x2, y2 = masks_to_boxes(mask[None])[0].tolist()
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": segmentation, "area": int(mask.sum()),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0 if polygon is not None else 1,
            "attributes": {"occluded": False}}


def simple_polygon(mask: np.ndarray) -> list[float] | None:
    """Return a flat ``[x, y, ...]`` polygon along the pixel edges of a one-piece, hole-free mask.

    Coordinates are pixel corners (pixel ``(x, y)`` spans ``[x, x+1) x [y, y+1)``), as
    pycocotools and CVAT rasterise polygons. Returns None when the mask has several parts or a
    hole, or when no polygon reaches IoU 0.95 with it; such masks are written as RLE.

    Example:
        >>> m = np.zeros((3, 3), bool); m[1, 1] = True
        >>> simple_polygon(m)
        [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 1.0]
    """
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        return None
    crop = mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    contours = _edge_contours(crop)
    if len(contours) != 1:  # several parts, or holes (RETR_CCOMP lists them too)
        return None
    source = _encode(mask)
    for epsilon in _POLYGON_EPSILONS:
        # contours are on a 2x grid: halve back and shift to the crop's place
        points = cv2.approxPolyDP(contours[0], 2 * epsilon, True).reshape(-1, 2) / 2.0
        polygon = (points + (xs[0], ys[0])).ravel().tolist()
        if len(polygon) >= 6 and _polygon_iou(polygon, source) >= _POLYGON_CHOICE_IOU:
            return polygon
    return None


def _edge_contours(mask: np.ndarray) -> Sequence[np.ndarray]:
    """Return the contours of ``mask`` traced along pixel edges, on a grid twice as fine.

    findContours follows the centres of boundary pixels, half a pixel inside the edge. On the
    mask upsampled 2x and grown by one fine cell right and down, a contour point ``p`` lies at
    ``p / 2`` in pixel-corner coordinates, exactly on the edge.
    """
    h, w = mask.shape
    fine = np.zeros((2 * h + 1, 2 * w + 1), np.uint8)
    fine[:-1, :-1] = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    fine[1:, :] |= fine[:-1, :].copy()
    fine[:, 1:] |= fine[:, :-1].copy()
    contours, _ = cv2.findContours(fine, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return contours


def _encode(mask: np.ndarray) -> dict[str, Any]:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _polygon_iou(polygon: list[float], source: dict[str, Any]) -> float:
    height, width = source["size"]
    rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
    return float(mask_utils.iou([rle], [source], [0])[0, 0])


def validate_coco(dataset: dict[str, Any], sources: dict[int, dict[str, Any]]) -> None:
    """Load ``dataset`` with pycocotools and check every annotation decodes back to its source.

    Args:
        dataset: the COCO instances dict.
        sources: compressed RLE of each annotation's source mask, by annotation id.

    Raises:
        CocoError: listing the annotations whose mask differs (polygons: IoU below 0.9;
            RLE: any pixel), whose image or category is unknown, or duplicate file names.
    """
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    problems = _structure_problems(dataset)
    for ann in dataset["annotations"]:
        rle = coco.annToRLE(ann)
        iou = float(mask_utils.iou([rle], [sources[ann["id"]]], [0])[0, 0])
        exact = rle["counts"] == sources[ann["id"]]["counts"]
        if (ann["iscrowd"] and not exact) or iou < POLYGON_MIN_IOU:
            problems.append(f"annotation {ann['id']} decodes to IoU {iou:.3f} with its mask")
    if problems:
        raise CocoError("invalid COCO dataset: " + "; ".join(problems[:10]))


def _structure_problems(dataset: dict[str, Any]) -> list[str]:
    images = {img["id"] for img in dataset["images"]}
    categories = {cat["id"] for cat in dataset["categories"]}
    names = [img["file_name"] for img in dataset["images"]]
    problems = [f"duplicate file_name {n}" for n in sorted(set(names)) if names.count(n) > 1]
    problems += [f"annotation {a['id']} has unknown image or category"
                 for a in dataset["annotations"]
                 if a["image_id"] not in images or a["category_id"] not in categories]
    return problems


def write_coco_zip(out_zip: Path, dataset: dict[str, Any],
                   files: Sequence[tuple[Path, str]]) -> None:
    """Write the zip beside ``out_zip`` (``.<name>.tmp<pid>``), fsync it and rename it in place.

    Args:
        out_zip: final path; the parent directory must exist.
        dataset: the COCO instances dict, stored as ``annotations/instances_default.json``.
        files: (image on disk, its ``file_name``) pairs, stored under ``images/default/``.
    """
    tmp = out_zip.with_name(f".{out_zip.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w") as zf:
                for path, name in files:  # PNGs are compressed already: store them
                    zf.write(path, f"{IMAGES_ARCDIR}/{name}", zipfile.ZIP_STORED)
                zf.writestr(ANNOTATIONS_ARCNAME, json.dumps(dataset), zipfile.ZIP_DEFLATED)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_zip)
        fsync_dir(out_zip.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CocoError(f"cannot write {out_zip}: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_coco_zip(path: Path) -> dict[str, Any]:
    """Return the instances dict of a COCO 1.0 zip, checking every listed image is inside.

    Raises:
        CocoError: the file is not a zip, lacks the annotation file, or lacks an image.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            dataset: dict[str, Any] = json.loads(zf.read(ANNOTATIONS_ARCNAME))
            members = set(zf.namelist())
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as err:
        raise CocoError(f"cannot read COCO zip {path}: {err}") from err
    missing = [img["file_name"] for img in dataset.get("images", [])
               if f"{IMAGES_ARCDIR}/{img['file_name']}" not in members]
    if missing:
        raise CocoError(f"COCO zip {path} lacks images {missing[:5]}")
    return dataset
