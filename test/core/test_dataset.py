"""Dataset versions: content addressing, manifests, grouping, merging, tamper detection."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cv_autolabel.core.coco import mask_annotation, write_coco_zip
from cv_autolabel.core.dataset import (
    create_version,
    list_versions,
    merge_versions,
    open_version,
    version_from_zip,
)
from cv_autolabel.errors import DatasetError

CLASSES = ["red_can", "blue_box"]
H, W = 48, 64
SECOND = 200_000_000  # one tick (0.2 s): frames of a sequence are a tick apart, under GROUP_WINDOW_S


def _png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 255, (H, W, 3), np.uint8)
    return cv2.imencode(".png", image)[1].tobytes()


def _mask(x: int, y: int, size: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def flush_coco(stamps: list[int], *, first_id: int = 1, seed: int = 0,
               classes: list[str] = CLASSES) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Return a COCO dict and image bytes named as our flush names them, one box per class."""
    coco: dict[str, Any] = {"categories": [{"id": i + 1, "name": n}
                                           for i, n in enumerate(classes)],
                            "images": [], "annotations": []}
    images: dict[str, bytes] = {}
    for k, stamp in enumerate(stamps):
        image_id = first_id + k
        name = f"{image_id:06d}_{stamp}.png"
        images[name] = _png(seed * 1000 + image_id)
        coco["images"].append({"id": image_id, "file_name": name, "width": W, "height": H})
        for c in range(len(classes)):
            coco["annotations"].append(mask_annotation(
                _mask(4 + 28 * c, 8, 20), ann_id=len(coco["annotations"]) + 1,
                image_id=image_id, category_id=c + 1))
    return coco, images


def _stamps() -> list[int]:
    # two sequences of three frames 1 s apart, 100 s between the sequences
    return [t * SECOND for t in (0, 1, 2, 100, 101, 102)]


def test_create_version_stores_images_by_hash_and_counts(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps())
    version = create_version(tmp_path, coco, images, source="a.zip")
    assert version.path == tmp_path / "v0001" and version.class_names == CLASSES
    for record in version.manifest["images"]:
        data = images[record["file_name"]]
        assert record["hash"] == hashlib.sha256(data).hexdigest()[:16]
        assert version.image_path(record["hash"]).read_bytes() == data
    assert version.manifest["counts"] == {n: {"instances": 6, "images": 6} for n in CLASSES}
    assert version.manifest["source"] == "a.zip" and version.manifest["parents"] == []
    files = {img["file_name"] for img in version.coco["images"]}
    assert files == {f"images/{r['hash']}.png" for r in version.manifest["images"]}


def test_groups_follow_stamp_sequences(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps())
    coco["images"][0]["file_name"] = "free.png"  # no stamp: a group of its own
    images["free.png"] = images.pop(next(iter(images)))
    coco["images"][5]["attributes"] = {"group": "shelf-3"}  # explicit group wins
    version = create_version(tmp_path, coco, images, source="a.zip")
    groups = [r["group"] for r in version.manifest["images"]]
    assert groups[0].startswith("image:")
    assert groups[1:3] == [f"a.zip@{SECOND}"] * 2
    assert groups[3:5] == [f"a.zip@{100 * SECOND}"] * 2 and groups[5] == "shelf-3"
    assert [r["stamp_ns"] for r in version.manifest["images"]][1] == SECOND


def test_class_names_reorder_category_ids(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps()[:1])
    version = create_version(tmp_path, coco, images, source="s",
                             class_names=["blue_box", "red_can"])
    by_id = {c["id"]: c["name"] for c in version.coco["categories"]}
    assert by_id == {1: "blue_box", 2: "red_can"}
    # the red_can box sits left (x 4..24): it must keep its mask under its new id 2
    red = next(a for a in version.coco["annotations"] if a["category_id"] == 2)
    assert red["bbox"][0] == 4.0


def test_merge_stores_shared_image_once_with_newest_annotations(tmp_path: Path) -> None:
    coco1, images1 = flush_coco(_stamps()[:4])
    coco2, images2 = flush_coco(_stamps()[2:], first_id=3, classes=["blue_box", "green_ball"])
    v1 = create_version(tmp_path, coco1, images1, source="one.zip")
    v2 = create_version(tmp_path, coco2, images2, source="two.zip")
    merged = merge_versions(tmp_path, [v2.path, v1])
    assert merged.path.name == "v0003" and merged.manifest["parents"] == ["v0001", "v0002"]
    assert merged.class_names == ["red_can", "blue_box", "green_ball"]
    assert len(merged.manifest["images"]) == 6
    assert len(list((merged.path / "images").iterdir())) == 6
    shared = v1.manifest["images"][2]["hash"]  # 000003_2 s: in both versions
    image_id = next(i["id"] for i in merged.coco["images"] if shared in i["file_name"])
    classes = sorted(merged.class_names[a["category_id"] - 1]
                     for a in merged.coco["annotations"] if a["image_id"] == image_id)
    assert classes == ["blue_box", "green_ball"]  # v2's labels, remapped to the union
    assert merged.manifest["counts"]["red_can"] == {"instances": 2, "images": 2}


def test_merge_joins_groups_linked_by_a_shared_image(tmp_path: Path) -> None:
    coco1, images1 = flush_coco(_stamps()[:3])
    coco2, images2 = flush_coco(_stamps()[:1], first_id=1)  # frame 1 again, other source
    coco2["images"][0]["file_name"] = "relabelled.png"
    images2 = {"relabelled.png": images2.popitem()[1]}
    v1 = create_version(tmp_path, coco1, images1, source="one.zip")
    v2 = create_version(tmp_path, coco2, images2, source="two.zip")
    assert v2.manifest["images"][0]["group"].startswith("image:")
    merged = merge_versions(tmp_path, [v1, v2])
    assert len({r["group"] for r in merged.manifest["images"]}) == 1


def test_open_version_detects_a_tampered_image(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps()[:2])
    version = create_version(tmp_path, coco, images, source="s")
    assert open_version(version.path).manifest == version.manifest
    target = version.path / version.manifest["images"][1]["file"]
    target.write_bytes(target.read_bytes()[:-1] + b"\0")
    with pytest.raises(DatasetError, match="content hash"):
        open_version(version.path)


def test_open_version_detects_edited_annotations(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps()[:2])
    version = create_version(tmp_path, coco, images, source="s")
    doc = json.loads((version.path / "annotations.json").read_text())
    doc["annotations"].pop()
    (version.path / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="annotations.json"):
        open_version(version.path)


@pytest.mark.parametrize("mutate, message", [
    (lambda c, i: i.popitem(), "no image bytes"),
    (lambda c, i: c["annotations"][0].update(category_id=9), "unknown image or category"),
    (lambda c, i: c.pop("images"), "malformed"),
])
def test_create_version_rejects_bad_input(tmp_path: Path, mutate: Any, message: str) -> None:
    coco, images = flush_coco(_stamps()[:2])
    mutate(coco, images)
    with pytest.raises(DatasetError, match=message):
        create_version(tmp_path, coco, images, source="s")
    assert list_versions(tmp_path) == []  # nothing half-written left behind
    assert [p.name for p in tmp_path.iterdir()] == []


def test_unknown_category_name_is_rejected(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps()[:1])
    with pytest.raises(DatasetError, match="not among class_names"):
        create_version(tmp_path, coco, images, source="s", class_names=["red_can"])


def test_version_from_flush_zip(tmp_path: Path) -> None:
    coco, images = flush_coco(_stamps())
    files = []
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        files.append((tmp_path / name, name))
    zip_path = tmp_path / "batch.zip"
    write_coco_zip(zip_path, coco, files)
    version = version_from_zip(tmp_path / "ds", zip_path)
    assert version.manifest["source"] == str(zip_path)
    assert len({r["group"] for r in version.manifest["images"]}) == 2
    assert version.manifest["counts"]["blue_box"]["instances"] == 6


def test_version_from_zip_rejects_a_non_zip(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read"):
        version_from_zip(tmp_path / "ds", bad)
