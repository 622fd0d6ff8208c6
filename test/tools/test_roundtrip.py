"""Flush -> CVAT import -> prepare: the labelled masks survive every hop."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import flush
from cv_autolabel.tools.replay import replay_active_learning


def _decode(ann: dict, h: int, w: int) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    return mask_utils.decode(rle).astype(bool)


def _masks(coco: dict) -> list[np.ndarray]:
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    anns = sorted(coco["annotations"], key=lambda a: (a["image_id"], a["id"]))
    return [_decode(a, *sizes[a["image_id"]]) for a in anns]


def _cli(*argv: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", *argv, "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_flush_import_prepare_keeps_every_mask(sim_bag: Path, tmp_path: Path) -> None:
    replay_active_learning(sim_bag, tmp_path / "queue")
    with AnnotationQueue(tmp_path / "queue") as queue:
        batch = flush(queue, tmp_path / "batch.zip", class_names=("red_can", "blue_can"))
    with zipfile.ZipFile(batch.zip_path) as z:
        flushed = json.loads(z.read("annotations/instances_default.json"))

    imported = _cli("import-cvat", str(batch.zip_path), "--into", str(tmp_path / "ds"))
    assert imported["rejected"] == [] and imported["images"] == batch.images
    version = json.loads((Path(imported["version"]) / "annotations.json").read_text())
    before, after = _masks(flushed), _masks(version)
    assert len(before) == len(after) == batch.annotations
    assert sum(m.sum() for m in before) == sum(m.sum() for m in after)
    assert sorted(int(m.sum()) for m in before) == sorted(int(m.sum()) for m in after)

    summary = _cli("prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "yolo"))
    assert Path(summary["data_yaml"]).is_file()
    labels = sorted((tmp_path / "yolo" / "labels").rglob("*.txt"))
    lines = [ln for p in labels for ln in p.read_text().splitlines() if ln.strip()]
    assert len(lines) >= batch.annotations  # one line per instance (or per part)
    # Rasterise one label file back and compare with the version's masks of that image.
    label = labels[0]
    image = next((tmp_path / "yolo" / "images").rglob(label.stem + ".*"))
    h, w = cv2.imread(str(image)).shape[:2]
    drawn = np.zeros((h, w), np.uint8)
    for ln in label.read_text().splitlines():
        xy = (np.array(ln.split()[1:], float).reshape(-1, 2) * [w, h]).round().astype(np.int32)
        cv2.fillPoly(drawn, [xy], 1)
    rec = next(im for im in version["images"] if Path(im["file_name"]).stem == label.stem)
    truth = np.zeros((h, w), bool)
    for a in version["annotations"]:
        if a["image_id"] == rec["id"]:
            truth |= _decode(a, h, w)
    iou = (truth & (drawn > 0)).sum() / (truth | (drawn > 0)).sum()
    assert iou > 0.9


def test_a_second_batch_is_merged_so_prepare_trains_on_every_label(sim_bag: Path,
                                                                     tmp_path: Path) -> None:
    replay_active_learning(sim_bag, tmp_path / "queue")
    with AnnotationQueue(tmp_path / "queue") as queue:
        first = flush(queue, tmp_path / "a.zip", class_names=("red_can", "blue_can"), limit=1)
        second = flush(queue, tmp_path / "b.zip", class_names=("red_can", "blue_can"))
    assert first.images == 1 and second.images > 0
    ds = tmp_path / "ds"

    a = _cli("import-cvat", str(first.zip_path), "--into", str(ds))
    assert a["version"].endswith("v0001") and a["merged"] is None  # nothing to merge with
    b = _cli("import-cvat", str(second.zip_path), "--into", str(ds))
    assert b["version"].endswith("v0002") and b["images"] == second.images
    assert b["merged"].endswith("v0003") and b["merged_images"] == first.images + second.images
    summary = _cli("prepare", str(ds), "--out", str(tmp_path / "yolo"))  # the newest: v0003
    assert sum(s["images"] for s in summary["splits"].values()) == first.images + second.images

    # The same batch again adds no image; --no-merge leaves the newest version the batch.
    again = _cli("import-cvat", str(second.zip_path), "--into", str(ds))
    assert again["merged_images"] == first.images + second.images
    only = _cli("import-cvat", str(first.zip_path), "--into", str(ds), "--no-merge")
    assert only["merged"] is None and only["version"].endswith("v0006")
