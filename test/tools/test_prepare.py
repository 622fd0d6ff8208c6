"""YOLO export of dataset versions: group splits, class coverage, label round trip, summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from cv_autolabel.core.coco import mask_annotation
from cv_autolabel.core.dataset import DatasetVersion, create_version
from cv_autolabel.errors import DatasetError
from cv_autolabel.tools.prepare import SPLITS, distribution_table, prepare

CLASSES = ["red_can", "blue_box", "green_ball"]
H, W = 96, 128
SECOND = 200_000_000  # one tick (0.2 s): frames of a sequence are a tick apart, under GROUP_WINDOW_S


def _masks(rng: np.random.Generator, frame: int, with_green: bool) -> list[tuple[int, np.ndarray]]:
    """Return non-overlapping (class id, mask) pairs: box, two-part or holed mask, disc."""
    red = np.zeros((H, W), np.uint8)
    x, y = rng.integers(2, 8), rng.integers(2, 40)
    red[y:y + 40, x:x + 34] = 1
    blue = np.zeros((H, W), np.uint8)
    if frame % 2:  # two parts: written as RLE
        blue[5:35, 46:80] = 1
        blue[55:90, 46:80] = 1
    else:  # a ring with a hole: RLE as well
        cv2.circle(blue, (63, 48), 20, 1, -1)
        cv2.circle(blue, (63, 48), 4, 0, -1)  # small: YOLO fills holes
    out = [(0, red.astype(bool)), (1, blue.astype(bool))]
    if with_green:
        green = np.zeros((H, W), np.uint8)
        cv2.ellipse(green, (106, 48), (16, 28), 10, 0, 360, 1, -1)
        out.append((2, green.astype(bool)))
    return out


def build_version(root: Path, *, sequences: int = 10, frames: int = 4,
                  green_sequences: tuple[int, ...] = (1, 4, 7),
                  ) -> tuple[DatasetVersion, dict[str, list[tuple[int, np.ndarray]]]]:
    """Store a flush-like dataset: ``sequences`` x ``frames`` stamped frames 1 s apart.

    Returns the version and the source masks of each image, keyed by the image's hash.
    """
    rng = np.random.default_rng(3)
    coco: dict[str, Any] = {"categories": [{"id": i + 1, "name": n}
                                           for i, n in enumerate(CLASSES)],
                            "images": [], "annotations": []}
    images, masks = {}, {}
    for s in range(sequences):
        for f in range(frames):
            image_id = len(coco["images"]) + 1
            name = f"{image_id:06d}_{(1000 * s + f) * SECOND}.png"
            images[name] = cv2.imencode(".png", rng.integers(0, 255, (H, W, 3), np.uint8))[1]
            coco["images"].append({"id": image_id, "file_name": name, "width": W, "height": H})
            # green_ball in one frame of a few sequences: rare, yet in 3 groups by default
            masks[name] = _masks(rng, f, s in green_sequences and f == 0)
            for cls, mask in masks[name]:
                coco["annotations"].append(mask_annotation(
                    mask, ann_id=len(coco["annotations"]) + 1, image_id=image_id,
                    category_id=cls + 1))
    version = create_version(root, coco, {k: v.tobytes() for k, v in images.items()},
                             source="flush.zip")
    by_hash = {r["hash"]: masks[r["file_name"]] for r in version.manifest["images"]}
    return version, by_hash


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetVersion, dict]:
    """The 40-image, 10-sequence version; green_ball in 3 frames of 3 sequences (imbalanced)."""
    return build_version(tmp_path_factory.mktemp("ds"))


def _split_of_images(summary: dict[str, Any]) -> dict[str, str]:
    return {h: s for s in SPLITS for h in summary["images"][s]}


def test_same_seed_same_split_other_seed_other_split(dataset, tmp_path: Path) -> None:
    version, _ = dataset
    a = prepare(version.path, tmp_path / "a", seed=0)
    b = prepare(version.path, tmp_path / "b", seed=0)
    c = prepare(version.path, tmp_path / "c", seed=1)
    assert _split_of_images(a) == _split_of_images(b)
    assert _split_of_images(a) != _split_of_images(c)
    assert (tmp_path / "a/labels/train").iterdir() and a["groups"] == b["groups"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_groups_do_not_straddle_and_classes_reach_val_and_test(dataset, tmp_path: Path,
                                                               seed: int) -> None:
    version, _ = dataset
    summary = prepare(version.path, tmp_path / "out", seed=seed)
    group_of = {r["hash"]: r["group"] for r in version.manifest["images"]}
    on_disk: dict[str, set[str]] = {}
    for split in SPLITS:
        for label in (tmp_path / "out/labels" / split).glob("*.txt"):
            on_disk.setdefault(group_of[label.stem], set()).add(split)
    assert len(on_disk) == 10 and all(len(s) == 1 for s in on_disk.values())
    for split in SPLITS:
        for name in CLASSES:
            assert summary["classes"][split][name]["instances"] > 0, (split, name)
    train = summary["splits"]["train"]["images"] / 40
    assert 0.5 <= train <= 0.85 and summary["splits"]["val"]["images"] >= 4


def test_labels_rasterise_back_to_the_source_masks(dataset, tmp_path: Path) -> None:
    version, masks = dataset
    prepare(version.path, tmp_path / "out")
    ious = []
    for label in (tmp_path / "out/labels").rglob("*.txt"):
        drawn = {c: np.zeros((H, W), np.uint8) for c in range(len(CLASSES))}
        for line in label.read_text().splitlines():
            cls, *coords = line.split()
            # rasterised as ultralytics' polygon2mask does: scale, truncate, fillPoly
            pts = (np.array(coords, float).reshape(-1, 2) * (W, H)).astype(np.int32)
            cv2.fillPoly(drawn[int(cls)], [pts], 1)
        for cls, source in masks[label.stem]:
            inter = np.logical_and(drawn[cls], source).sum()
            ious.append(inter / np.logical_or(drawn[cls], source).sum())
    assert len(ious) == 40 * 2 + 3 and min(ious) >= 0.9


def test_two_part_mask_becomes_one_line_per_part(dataset, tmp_path: Path) -> None:
    version, masks = dataset
    prepare(version.path, tmp_path / "out")
    odd = next(h for h, m in masks.items()
               if cv2.connectedComponents(m[1][1].astype(np.uint8))[0] == 3)  # bg + 2 parts
    label = next((tmp_path / "out/labels").rglob(f"{odd}.txt"))
    classes = [line.split()[0] for line in label.read_text().splitlines()]
    assert classes.count("1") == 2


def test_data_yaml_loads_in_ultralytics(dataset, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from ultralytics.data import utils as yolo_utils  # noqa: PLC0415

    # check_det_dataset ends by fetching a font when none is cached: never download in tests
    monkeypatch.setattr(yolo_utils, "check_font", lambda *a, **k: None)
    version, _ = dataset
    summary = prepare(version.path, tmp_path / "out")
    doc = yaml.safe_load(Path(summary["data_yaml"]).read_text())
    assert doc["path"] == str((tmp_path / "out").resolve()) and doc["nc"] == 3
    data = yolo_utils.check_det_dataset(summary["data_yaml"])
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == 3
    for split in SPLITS:
        assert Path(data[split]).is_dir() and any(Path(data[split]).iterdir())


def test_summary_plot_table_and_imbalance_warning(dataset, tmp_path: Path) -> None:
    version, _ = dataset
    summary = prepare(version.path, tmp_path / "out")
    assert Path(summary["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("green_ball" in w and "20%" in w for w in summary["warnings"])
    assert not any("missing" in w for w in summary["warnings"])
    assert sum(s["images"] for s in summary["splits"].values()) == 40
    assert sum(s["groups"] for s in summary["splits"].values()) == 10
    table = distribution_table(summary)
    assert "green_ball" in table and "val inst/img" in table


def test_class_in_too_few_groups_is_reported_missing(tmp_path: Path) -> None:
    version, _ = build_version(tmp_path / "ds", sequences=5, green_sequences=(2,))
    summary = prepare(version.path, tmp_path / "out")
    missing = [w for w in summary["warnings"] if "green_ball" in w and "missing" in w]
    assert len(missing) == 2  # one group can cover one split only


@pytest.mark.parametrize("split, message", [
    ((0.0, 0.5, 0.5), "train > 0"),
    ((0.7, 0.3), "3 ratios"),
    ((0.7, -0.1, 0.4), "3 ratios"),
])
def test_bad_ratios_are_rejected(dataset, tmp_path: Path, split: Any, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        prepare(dataset[0].path, tmp_path / "out", split=split)


def test_non_empty_out_dir_is_rejected(dataset, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not an empty directory"):
        prepare(dataset[0].path, tmp_path / "out")
