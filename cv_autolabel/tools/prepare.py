"""Turn a dataset version into an Ultralytics YOLO segmentation dataset, split by group.

Output (``out_dir`` is built in a staging directory and renamed into place)::

    images/{train,val,test}/<hash>.<ext>   hardlinks to the version's images (copies across
                                           file systems); treat them as read-only
    labels/{train,val,test}/<hash>.txt     ``cls x1 y1 x2 y2 ...``, 0-based class, coordinates
                                           normalised by width and height
    data.yaml                              path, train, val, test, names, nc, dataset_version
    class_distribution.png                 instances per class and split

Split algorithm (deterministic for a version and a seed):

1. Groups (sequences, see :mod:`cv_autolabel.core.dataset`) are the unit: all images of a
   group go to one split, so near-identical neighbouring frames never straddle splits.
2. Greedy fill: the groups, sorted by name and shuffled by ``numpy.random.default_rng(seed)``,
   are dealt one by one to the split with the most room left, ``ratio * total_images -
   images_so_far`` (ties: train, val, test). This aims at the ratios by image count.
3. Repair: while some class is absent from val or test (ratio > 0), move into that split the
   smallest group holding the class whose removal leaves its current split with all of
   the classes it had (ties by shuffled order). Every move adds a (class, split) presence and
   removes none, so the repair terminates; a class in too few groups stays missing, with a
   warning. Moves favour coverage over ratios: a split may end up larger than its share.

Masks: every segmentation (polygons or RLE, either counts form) is decoded with pycocotools
and each external contour, largest first, becomes one line: a multi-part mask becomes several
YOLO instances of its class, and holes are filled (YOLO polygons have none). Contour points are
boundary pixel centres (index + 0.5), so ultralytics' rasteriser gives back the same pixels.
Parts with fewer than 3 points or no area are dropped; an annotation left with no part (empty
or 1-pixel-thin mask) gives no line and is counted in ``skipped_degenerate``.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from pycocotools import mask as mask_utils

from cv_autolabel.core.dataset import DatasetVersion, open_version
from cv_autolabel.core.fsio import atomic_directory
from cv_autolabel.errors import DatasetError

SPLITS = ("train", "val", "test")
#: A class with fewer instances than this fraction of the largest class's gets a warning.
IMBALANCE_FRACTION = 0.2
PLOT_NAME = "class_distribution.png"


def prepare(version_dir: Path, out_dir: Path, *,
            split: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> dict[str, Any]:
    """Split a version by group and write it as a YOLO segmentation dataset.

    Args:
        version_dir: the dataset version (verified with ``open_version``).
        out_dir: the output directory; it must not exist or must be empty.
        split: train, val, test ratios by image count (normalised; train must be > 0).
        seed: shuffles the groups; the same seed gives the same split.

    Returns:
        Summary: ``splits`` {split: {images, groups, instances}}, ``classes`` {split: {class:
        {instances, images}}}, ``groups`` and ``images`` (names, hashes) per split,
        ``warnings``, ``skipped_degenerate``, ``data_yaml``, ``plot``, ``version``, ``seed``.

    Raises:
        DatasetError: bad ratios, a non-empty ``out_dir``, or a version failing verification.
    """
    ratios = _check_ratios(split)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir} exists and is not an empty directory")
    version = open_version(Path(version_dir))
    groups = _group_table(version)
    assignment = assign_splits(groups, ratios, seed)
    with atomic_directory(out_dir) as staging:
        summary = _write_splits(version, staging, assignment)
        _write_data_yaml(staging / "data.yaml", out_dir, version.class_names,
                         str(version.manifest.get("version", version.path.name)))
        summary["warnings"] = _warnings(summary, version.class_names, ratios)
        plot_distribution(summary, version.class_names, staging / PLOT_NAME)
    summary.update(version=version.version, seed=seed, ratios=list(ratios),
                   data_yaml=str(out_dir / "data.yaml"), plot=str(out_dir / PLOT_NAME))
    return summary


def _check_ratios(split: Sequence[float]) -> tuple[float, float, float]:
    values = [float(r) for r in split]
    if len(values) != 3 or min(values) < 0 or values[0] <= 0:
        raise DatasetError(f"split must be 3 ratios >= 0 with train > 0, got {list(split)}")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


# --- splitting -------------------------------------------------------------------------------

def _group_table(version: DatasetVersion) -> dict[str, tuple[int, frozenset[str]]]:
    """Return each group's image count and the classes it holds."""
    names = version.class_names
    by_file = {r["file"]: r["group"] for r in version.manifest["images"]}
    image_group = {img["id"]: by_file[img["file_name"]] for img in version.coco["images"]}
    sizes: dict[str, int] = defaultdict(int)
    classes: dict[str, set[str]] = defaultdict(set)
    for group in image_group.values():
        sizes[group] += 1
    for ann in version.coco["annotations"]:
        classes[image_group[ann["image_id"]]].add(names[ann["category_id"] - 1])
    return {g: (sizes[g], frozenset(classes[g])) for g in sizes}


def assign_splits(groups: Mapping[str, tuple[int, frozenset[str]]],
                  ratios: Sequence[float], seed: int) -> dict[str, str]:
    """Return the split of each group: greedy fill by ratio, then class-coverage repair.

    Args:
        groups: image count and class set of each group.
        ratios: normalised train, val, test ratios.
        seed: shuffles the group order.

    Example:
        >>> g = {"a": (5, frozenset({"x"})), "b": (1, frozenset({"x"})),
        ...      "c": (1, frozenset({"x"}))}
        >>> sorted(assign_splits(g, (0.6, 0.2, 0.2), 0).values())
        ['test', 'train', 'val']
    """
    names = sorted(groups)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    total = sum(size for size, _ in groups.values())
    filled = dict.fromkeys(SPLITS, 0)
    assignment: dict[str, str] = {}
    for name in order:
        room = {s: r * total - filled[s] for s, r in zip(SPLITS, ratios) if r > 0}
        target = max(room, key=lambda s: room[s])  # first of equals: train, val, test
        assignment[name] = target
        filled[target] += groups[name][0]
    _repair_coverage(assignment, groups, ratios, order)
    return assignment


def _repair_coverage(assignment: dict[str, str], groups: Mapping[str, tuple[int, frozenset[str]]],
                     ratios: Sequence[float], order: list[str]) -> None:
    """Move groups so every class reaches val and test where that costs no other presence."""
    rank = {name: i for i, name in enumerate(order)}
    classes = sorted(set().union(*(c for _, c in groups.values())))
    targets = [s for s, r in zip(SPLITS[1:], ratios[1:]) if r > 0]
    moved = True
    while moved:
        moved = False
        for cls in classes:
            for split in targets:
                if cls in _split_classes(assignment, groups, split):
                    continue
                candidates = [g for g in order if cls in groups[g][1] and assignment[g] != split
                              and _can_leave(g, assignment, groups)]
                if candidates:
                    best = min(candidates, key=lambda g: (groups[g][0], rank[g]))
                    assignment[best] = split
                    moved = True


def _split_classes(assignment: Mapping[str, str],
                   groups: Mapping[str, tuple[int, frozenset[str]]], split: str,
                   without: str | None = None) -> set[str]:
    return set().union(*(groups[g][1] for g, s in assignment.items()
                         if s == split and g != without))


def _can_leave(group: str, assignment: Mapping[str, str],
               groups: Mapping[str, tuple[int, frozenset[str]]]) -> bool:
    """Return whether ``group``'s split keeps all of its classes without it."""
    rest = _split_classes(assignment, groups, assignment[group], without=group)
    return groups[group][1] <= rest


# --- labels ----------------------------------------------------------------------------------

def segmentation_to_polygons(segmentation: Any, height: int, width: int) -> list[np.ndarray]:
    """Return (K, 2) float pixel polygons of a COCO segmentation: its external contours.

    Polygons and RLE alike are decoded with pycocotools and traced, so one mask gives the same
    lines however CVAT stored it. Points are boundary pixel centres (index + 0.5), which
    ultralytics' rasteriser (scale, truncate, fillPoly) maps back onto the same pixels. Parts
    come largest first; parts with < 3 points or zero area (1-pixel lines) are dropped, and
    holes are filled (a YOLO polygon has none).

    Example:
        >>> [p.tolist() for p in segmentation_to_polygons([[1, 1, 3, 1, 3, 3, 1, 3]], 4, 4)]
        [[[1.5, 1.5], [1.5, 2.5], [2.5, 2.5], [2.5, 1.5]]]
    """
    mask = _decode(segmentation, height, width)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    kept = [c for c in contours if len(c) >= 3 and cv2.contourArea(c) > 0]
    kept.sort(key=cv2.contourArea, reverse=True)
    return [c.reshape(-1, 2).astype(np.float64) + 0.5 for c in kept]


def _decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Return the (H, W) uint8 mask of a COCO polygon list or RLE (either counts form)."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(
            [p for p in segmentation if len(p) >= 6], height, width)) if segmentation else None
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        counts = segmentation["counts"]
        rle = {**segmentation, "counts": counts.encode("ascii") if isinstance(counts, str)
               else counts}
    if rle is None:
        return np.zeros((height, width), np.uint8)
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def yolo_label_lines(annotations: list[dict[str, Any]], height: int,
                     width: int) -> tuple[list[str], list[int], int]:
    """Return YOLO-seg label lines of COCO annotations of one image.

    Each annotation needs ``segmentation`` (polygons or RLE) and a 1-based ``category_id``.
    Returns the lines (one per polygon, normalised ``cls x y ...``), the class of each
    annotation that gave lines, and how many annotations gave none.
    """
    lines: list[str] = []
    kept: list[int] = []
    skipped = 0
    for ann in annotations:
        polygons = segmentation_to_polygons(ann["segmentation"], height, width)
        skipped += 0 if polygons else 1
        cls = ann["category_id"] - 1
        for poly in polygons:
            xy = np.clip(poly / (width, height), 0.0, 1.0).ravel()
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy))
        if polygons:
            kept.append(cls)
    return lines, kept, skipped


def _write_splits(version: DatasetVersion, out: Path,
                  assignment: Mapping[str, str]) -> dict[str, Any]:
    """Link images and write labels per split; return the per-split counts."""
    names = version.class_names
    groups = {r["file"]: r["group"] for r in version.manifest["images"]}
    anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in version.coco["annotations"]:
        anns[ann["image_id"]].append(ann)
    summary = _empty_summary(names)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
    for img in version.coco["images"]:
        group = groups[img["file_name"]]
        split = assignment[group]
        src = version.path / img["file_name"]
        _link(src, out / "images" / split / src.name)
        lines, kept, skipped = yolo_label_lines(anns[img["id"]], img["height"], img["width"])
        (out / "labels" / split / f"{src.stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
        _count(summary, split, group, src.stem, [names[c] for c in kept])
        summary["skipped_degenerate"] += skipped
    for split in SPLITS:
        summary["groups"][split] = sorted(set(summary["groups"][split]))
        summary["splits"][split]["groups"] = len(summary["groups"][split])
    return summary


def _empty_summary(names: Sequence[str]) -> dict[str, Any]:
    return {"splits": {s: {"images": 0, "groups": 0, "instances": 0} for s in SPLITS},
            "classes": {s: {n: {"instances": 0, "images": 0} for n in names} for s in SPLITS},
            "groups": {s: [] for s in SPLITS}, "images": {s: [] for s in SPLITS},
            "skipped_degenerate": 0}


def _count(summary: dict[str, Any], split: str, group: str, image: str,
           classes: list[str]) -> None:
    summary["splits"][split]["images"] += 1
    summary["splits"][split]["instances"] += len(classes)
    summary["groups"][split].append(group)
    summary["images"][split].append(image)
    for name in classes:
        summary["classes"][split][name]["instances"] += 1
    for name in set(classes):
        summary["classes"][split][name]["images"] += 1


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(src, dst)


def _write_data_yaml(path: Path, final_dir: Path, class_names: Sequence[str],
                     dataset_version: str) -> None:
    # ultralytics ignores extra keys; `train` reads dataset_version to record the run.
    doc = {"path": str(final_dir), "train": "images/train", "val": "images/val",
           "test": "images/test", "names": dict(enumerate(class_names)),
           "nc": len(class_names), "dataset_version": dataset_version}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# --- summary ---------------------------------------------------------------------------------

def _warnings(summary: dict[str, Any], class_names: Sequence[str],
              ratios: Sequence[float]) -> list[str]:
    totals = {n: sum(summary["classes"][s][n]["instances"] for s in SPLITS) for n in class_names}
    largest = max(totals, key=lambda n: totals[n]) if totals else None
    warnings = []
    for name in class_names:
        if largest and totals[name] < IMBALANCE_FRACTION * totals[largest]:
            warnings.append(f"class {name!r} has {totals[name]} instances, under "
                            f"{IMBALANCE_FRACTION:.0%} of {largest!r} ({totals[largest]})")
        for split, ratio in zip(SPLITS, ratios):
            if ratio > 0 and summary["classes"][split][name]["instances"] == 0:
                warnings.append(f"class {name!r} is missing from {split}")
    if summary["skipped_degenerate"]:
        warnings.append(f"{summary['skipped_degenerate']} empty or degenerate masks skipped")
    return warnings


def distribution_table(summary: Mapping[str, Any]) -> str:
    """Return the instances/images per class and split of a ``prepare`` summary as text."""
    classes = summary["classes"]
    names = list(classes[SPLITS[0]])
    width = max([5, *map(len, names)])
    header = f"{'class':<{width}}" + "".join(f" {s + ' inst/img':>16}" for s in SPLITS)
    rows = [header, "-" * len(header)]
    for name in names:
        cells = "".join(f" {classes[s][name]['instances']:>9}/{classes[s][name]['images']:<6}"
                        for s in SPLITS)
        rows.append(f"{name:<{width}}{cells}")
    return "\n".join(rows)


def plot_distribution(summary: Mapping[str, Any], class_names: Sequence[str],
                      path: Path) -> None:
    """Save a grouped bar plot of instances per class and split as a PNG."""
    # the Agg canvas directly: no global backend switch, no display needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(max(4.0, 1.2 * len(class_names)), 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(class_names))
    for i, split in enumerate(SPLITS):
        values = [summary["classes"][split][n]["instances"] for n in class_names]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=split)
    ax.set_xticks(x, list(class_names), rotation=30, ha="right")
    ax.set_ylabel("instances")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
