"""A CVAT COCO 1.0 zip imports safely: hostile archives fail whole, bad annotations drop alone."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import flush, read_coco_zip
from cv_autolabel.core.cvat_import import ImportLimits, ImportResult, load_cvat_zip, unsafe_name
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.rle import encode_masks, uncompressed_rle
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvatImportError, CvAutolabelError

H, W = 60, 80
ANNS = "annotations/instances_default.json"


def png(height: int = H, width: int = W, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    return buf.tobytes()


def rect_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y:y + h, x:x + w] = True
    return m


def base_dataset() -> dict[str, Any]:
    """Two 80x60 images; a polygon and an uncompressed RLE on one, a compressed RLE on the other."""
    ring = rect_mask(30, 20, 20, 20) & ~rect_mask(35, 25, 5, 5)
    return {
        "licenses": [], "info": {},
        "categories": [{"id": 1, "name": "box", "supercategory": ""},
                       {"id": 2, "name": "can", "supercategory": ""}],
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                   {"id": 2, "file_name": "b.png", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100,
             "segmentation": [[10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]],
             "bbox": [10.0, 10.0, 10.0, 10.0]},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 1, "area": int(ring.sum()),
             "segmentation": uncompressed_rle(ring), "bbox": [30.0, 20.0, 20.0, 20.0]},
            {"id": 3, "image_id": 2, "category_id": 2, "iscrowd": 1, "area": 50,
             "segmentation": {"counts": encode_masks(rect_mask(0, 0, 5, 10)[None])[0],
                              "size": [H, W]},
             "bbox": [0.0, 0.0, 5.0, 10.0]},
        ],
    }


def base_files() -> dict[str, bytes]:
    return {"images/default/a.png": png(seed=1), "images/default/b.png": png(seed=2)}


def write_zip(path: Path, dataset: dict[str, Any] | None, files: dict[str, bytes],
              extra: Callable[[zipfile.ZipFile], None] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if dataset is not None:
            zf.writestr(ANNS, json.dumps(dataset), zipfile.ZIP_DEFLATED)
        for name, data in files.items():
            zf.writestr(name, data)
        if extra is not None:
            extra(zf)
    return path


def load(path: Path, **limits: Any) -> ImportResult:
    return load_cvat_zip(path, limits=ImportLimits(**limits))


def test_unsafe_name_examples() -> None:
    assert unsafe_name("images/default/a b.png") is None
    for bad in ("../x", "a/../../x", "/etc/passwd", "C:x", "a\\..\\x", "a//b", "./a", "a\x00b"):
        assert unsafe_name(bad) is not None, bad


def test_valid_zip_imports_everything(tmp_path: Path) -> None:
    result = load(write_zip(tmp_path / "ok.zip", base_dataset(), base_files()))
    report = result.report
    assert report.rejections == [] and report.subsets == ["default"]
    assert (report.images_accepted, report.annotations_accepted) == (2, 3)
    assert sorted(result.images) == ["a.png", "b.png"]
    assert result.images["a.png"] == base_files()["images/default/a.png"]
    assert [img["file_name"] for img in result.coco["images"]] == ["a.png", "b.png"]
    assert result.class_names == ["box", "can"]
    assert report.unreferenced_images == [] and report.ignored_members == []


# -- the whole zip is refused --------------------------------------------------------------------


def _member(name: str, data: bytes = b"x", mode: int = 0) -> Callable[[zipfile.ZipFile], None]:
    def add(zf: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # set after construction: the constructor would cut a NUL
        info.external_attr = mode << 16
        zf.writestr(info, data)
    return add


def _duplicate(zf: zipfile.ZipFile) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns, and writes it anyway
        zf.writestr("images/default/a.png", png(seed=9))


def _bomb(zf: zipfile.ZipFile) -> None:
    chunk = bytes(2**20)
    info = zipfile.ZipInfo("images/default/zeros.bin")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w") as fh:
        for _ in range(200):  # 200 MB of zeros, about 200 KB deflated
            fh.write(chunk)


HOSTILE = [
    ("traversal", _member("../x"), {}, "'..' component"),
    ("nested traversal", _member("images/default/../../../x"), {}, "'..' component"),
    ("absolute", _member("/etc/x"), {}, "absolute"),
    ("drive letter", _member("C:/windows/x"), {}, "drive letter"),
    ("backslash", _member("images\\..\\..\\x"), {}, "backslash"),
    ("nul", _member("images/default/c.png\x00.txt"), {}, "NUL"),
    ("symlink", _member("images/default/c.png", b"/etc/passwd", stat.S_IFLNK | 0o777), {},
     "symlink"),
    ("fifo", _member("images/default/c.png", b"", stat.S_IFIFO | 0o644), {}, "special file"),
    ("dir as file", _member("images/default/d", b"", stat.S_IFDIR | 0o755), {},
     "directory posing"),
    ("file and dir", lambda zf: (zf.writestr("extra/a", b"1"), zf.writestr("extra/a/b", b"2")),
     {}, "both a file and a directory"),
    ("duplicate", _duplicate, {}, "duplicate name"),
    ("too many members", lambda zf: [zf.writestr(f"x/{i}", b"") for i in range(5)],
     {"max_members": 6}, "max_members=6"),
    ("member too large", None, {"max_member_bytes": 1000}, "max_member_bytes=1000"),
    ("total too large", None, {"max_total_bytes": 20_000}, "max_total_bytes=20000"),
    ("zip bomb", _bomb, {}, "zip bomb"),
]


@pytest.mark.parametrize(("extra", "limits", "message"), [case[1:] for case in HOSTILE],
                         ids=[case[0] for case in HOSTILE])
def test_hostile_zip_is_refused_whole(tmp_path: Path, extra: Any, limits: dict[str, Any],
                                      message: str) -> None:
    path = write_zip(tmp_path / "bad.zip", base_dataset(), base_files(), extra)
    with pytest.raises(CvatImportError, match=message.replace("\\", "")) as err:
        load(path, **limits)
    assert isinstance(err.value, CvAutolabelError)


def test_refusal_names_the_member(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bad.zip", base_dataset(), base_files(), _member("../evil.sh"))
    with pytest.raises(CvatImportError, match=r"'\.\./evil\.sh'"):
        load(path)


def test_small_members_may_compress_well(tmp_path: Path) -> None:
    """A blank image or a small JSON deflates past the ratio, and is no bomb."""
    path = write_zip(tmp_path / "ok.zip", base_dataset(), base_files(),
                     lambda zf: zf.writestr("notes.txt", bytes(500_000), zipfile.ZIP_DEFLATED))
    assert load(path).report.ignored_members == ["notes.txt"]


@pytest.mark.parametrize(("dataset", "message"), [
    (None, "no annotations/instances_"),
    ("{not json", "not valid JSON"),
    ({"images": []}, "lacks the lists"),
    ({**base_dataset(), "categories": [{"id": "1", "name": "box"}]}, "categories"),
], ids=["missing", "not json", "no lists", "bad categories"])
def test_unusable_annotation_file_is_refused(tmp_path: Path, dataset: Any, message: str) -> None:
    path = tmp_path / "bad.zip"
    write_zip(path, None, base_files(),
              None if dataset is None else
              lambda zf: zf.writestr(ANNS, dataset if isinstance(dataset, str)
                                     else json.dumps(dataset)))
    with pytest.raises(CvatImportError, match=message):
        load(path)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CvatImportError, match="cannot read"):
        load(path)


# -- single annotations and images are dropped ---------------------------------------------------


def _ann(index: int, **changes: Any) -> Callable[[dict[str, Any], dict[str, bytes]], None]:
    def mutate(dataset: dict[str, Any], files: dict[str, bytes]) -> None:
        dataset["annotations"][index].update(changes)
    return mutate


def _poly(coords: list[float]) -> Callable[[dict[str, Any], dict[str, bytes]], None]:
    return _ann(0, segmentation=[coords])


def _image(index: int, **changes: Any) -> Callable[[dict[str, Any], dict[str, bytes]], None]:
    def mutate(dataset: dict[str, Any], files: dict[str, bytes]) -> None:
        dataset["images"][index].update(changes)
    return mutate


def _file(name: str, data: bytes | None) -> Callable[[dict[str, Any], dict[str, bytes]], None]:
    def mutate(dataset: dict[str, Any], files: dict[str, bytes]) -> None:
        if data is None:
            del files[name]
        else:
            files[name] = data
    return mutate


SQUARE = [10.0, 10.0, 20.0, 10.0, 20.0, 20.0, 10.0, 20.0]
NAN = float("nan")
# (id, mutation, rejected annotation ids, rejected image file or None, reason fragment)
MALFORMED = [
    ("odd polygon", _poly(SQUARE[:-1]), [1], None, "even number >= 6"),
    ("two points", _poly(SQUARE[:4]), [1], None, "even number >= 6"),
    ("nan polygon", _poly([NAN] + SQUARE[1:]), [1], None, "NaN"),
    ("string in polygon", _poly(["10"] + SQUARE[1:]), [1], None, "not a number"),
    ("polygon out of image", _poly([10.0, 10.0, W + 5.0, 10.0, 20.0, 20.0]), [1], None,
     "leaves the 80x60 image"),
    ("polygon without area", _poly([1.0, 1.0, 5.0, 5.0, 9.0, 9.0]), [1], None, "zero area"),
    ("no polygons", _ann(0, segmentation=[]), [1], None, "no polygon"),
    ("rle wrong size", _ann(1, segmentation={"counts": [H * W], "size": [W, H]}), [2], None,
     "RLE size"),
    ("rle wrong sum", _ann(1, segmentation={"counts": [10, 5], "size": [H, W]}), [2], None,
     "sum to 15"),
    ("rle negative run", _ann(1, segmentation={"counts": [H * W + 5, -5], "size": [H, W]}),
     [2], None, "negative"),
    ("rle empty", _ann(1, segmentation={"counts": [H * W], "size": [H, W]}), [2], None,
     "covers no pixel"),
    ("compressed rle garbage", _ann(2, segmentation={"counts": "\x7f\x01", "size": [H, W]}),
     [3], None, "malformed"),
    ("compressed rle wrong sum", _ann(2, segmentation={"counts": "222", "size": [H, W]}),
     [3], None, "sum to 6"),
    ("iscrowd mismatch", _ann(0, iscrowd=1), [1], None, "not an RLE"),
    ("iscrowd invalid", _ann(0, iscrowd=2), [1], None, "neither 0 nor 1"),
    ("bad category", _ann(0, category_id=7), [1], None, "unknown category_id 7"),
    ("unknown image", _ann(0, image_id=99), [1], None, "unknown image_id 99"),
    ("duplicate annotation id", _ann(1, id=1), [1], None, "unique integer"),
    ("bbox out of image", _ann(0, bbox=[70.0, 10.0, 15.0, 10.0]), [1], None, "leaves the"),
    ("bbox negative", _ann(0, bbox=[-3.0, 10.0, 5.0, 10.0]), [1], None, "leaves the"),
    ("bbox nan", _ann(0, bbox=[NAN, 10.0, 5.0, 10.0]), [1], None, "NaN"),
    ("bbox three numbers", _ann(0, bbox=[1.0, 2.0, 3.0]), [1], None, "not 4 numbers"),
    ("corrupt image", _file("images/default/a.png", png()[:60]), [1, 2], "a.png", "corrupt"),
    ("garbage image", _file("images/default/a.png", b"not an image"), [1, 2], "a.png",
     "corrupt"),
    ("size mismatch", _file("images/default/a.png", png(40, 50)), [1, 2], "a.png",
     "image file is 50x40 but the JSON says 80x60"),
    ("missing image", _file("images/default/b.png", None), [3], "b.png", "missing in the zip"),
    ("unsafe file_name", _image(1, file_name="../../b.png"), [3], "../../b.png",
     "safe relative path"),
    ("zero width", _image(1, width=0), [3], "b.png", "positive integers"),
]


@pytest.mark.parametrize(("mutate", "ann_ids", "image", "reason"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_entry_is_dropped_with_a_reason(tmp_path: Path, mutate: Any,
                                                  ann_ids: list[int], image: str | None,
                                                  reason: str) -> None:
    dataset, files = base_dataset(), base_files()
    mutate(dataset, files)
    result = load(write_zip(tmp_path / "z.zip", dataset, files))
    rejected = result.report.rejections
    assert sorted(r.annotation_id for r in rejected if r.annotation_id is not None) == ann_ids
    assert [r.file for r in rejected if r.annotation_id is None] == ([image] if image else [])
    assert reason in str(rejected[0]), [str(r) for r in rejected]
    kept = [a["id"] for a in result.coco["annotations"]]
    assert len(kept) == 3 - len(ann_ids) and len(set(kept)) == len(kept)
    assert result.report.annotations_accepted == 3 - len(ann_ids)
    assert {img["file_name"] for img in result.coco["images"]} == set(result.images)


def test_image_with_only_bad_annotations_stays_unlabelled(tmp_path: Path) -> None:
    dataset = base_dataset()
    dataset["annotations"][2]["category_id"] = 9
    result = load(write_zip(tmp_path / "z.zip", dataset, base_files()))
    assert "b.png" in result.images
    assert result.report.unlabelled_images == ["b.png"]


def test_the_cli_warns_that_an_image_which_lost_every_annotation_looks_empty(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cv_autolabel.cli import main  # noqa: PLC0415

    dataset = base_dataset()
    dataset["annotations"][2]["category_id"] = 9
    files = {**base_files(), "README.txt": b"hi"}
    zip_path = write_zip(tmp_path / "z.zip", dataset, files)
    assert main(["import-cvat", str(zip_path), "--into", str(tmp_path / "ds"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "1 image(s) lost every annotation" in err and "b.png" in err
    assert "1 other member(s): README.txt" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["unlabelled_images"] == ["b.png"] and summary["ignored"] == ["README.txt"]


def test_small_overshoot_is_clipped(tmp_path: Path) -> None:
    dataset = base_dataset()
    dataset["annotations"][0].update(
        segmentation=[[-0.5, 10.0, W + 0.8, 10.0, W + 0.8, H + 0.5, -0.5, H + 0.5]],
        bbox=[-0.5, 10.0, W + 1.0, H - 9.5])
    result = load(write_zip(tmp_path / "z.zip", dataset, base_files()))
    assert result.report.rejections == []
    ann = next(a for a in result.coco["annotations"] if a["id"] == 1)
    assert ann["segmentation"] == [[0.0, 10.0, W, 10.0, W, H, 0.0, H]]
    assert ann["bbox"] == [0.0, 10.0, W, H - 10.0]


def test_leftover_members_are_reported_not_read(tmp_path: Path) -> None:
    files = {**base_files(), "images/default/stray.png": png(seed=3), "README.txt": b"hi",
             "annotations/person_keypoints_default.json": b"{}"}
    result = load(write_zip(tmp_path / "z.zip", base_dataset(), files))
    assert result.report.unreferenced_images == ["images/default/stray.png"]
    assert result.report.ignored_members == ["README.txt",
                                             "annotations/person_keypoints_default.json"]
    assert "stray.png" not in result.images


def test_subsets_merge_with_any_image_layout(tmp_path: Path) -> None:
    """Subset prefix in file_name or not, images under images/<subset>/ or images/."""
    train, val = base_dataset(), base_dataset()
    train["images"][1]["file_name"] = "train/b.png"
    files = {"images/train/a.png": png(seed=1), "images/train/b.png": png(seed=2),
             "images/a.png": png(seed=3), "images/b.png": png(seed=4)}
    path = write_zip(tmp_path / "z.zip", None, files, lambda zf: (
        zf.writestr("annotations/instances_train.json", json.dumps(train)),
        zf.writestr("annotations/instances_val.json", json.dumps(val))))
    result = load(path)
    assert result.report.rejections == [] and result.report.subsets == ["train", "val"]
    assert sorted(result.images) == ["train/a.png", "train/b.png", "val/a.png", "val/b.png"]
    assert result.images["val/b.png"] == files["images/b.png"]
    assert [img["id"] for img in result.coco["images"]] == [1, 2, 3, 4]
    assert [a["id"] for a in result.coco["annotations"]] == [1, 2, 3, 4, 5, 6]
    by_id = {img["id"]: img["file_name"] for img in result.coco["images"]}
    assert [by_id[a["image_id"]] for a in result.coco["annotations"]] == [
        "train/a.png", "train/a.png", "train/b.png", "val/a.png", "val/a.png", "val/b.png"]


def test_subsets_with_different_categories_are_refused(tmp_path: Path) -> None:
    other = base_dataset()
    other["categories"][1]["name"] = "bottle"
    path = write_zip(tmp_path / "z.zip", base_dataset(), base_files(),
                     lambda zf: zf.writestr("annotations/instances_val.json", json.dumps(other)))
    with pytest.raises(CvatImportError, match="categories"):
        load(path)


# -- round trip through our own export -----------------------------------------------------------


def _disc(cx: int, cy: int, r: int) -> np.ndarray:
    return cv2.circle(np.zeros((H, W), np.uint8), (cx, cy), r, 1, -1).astype(bool)


def _coco(dataset: dict[str, Any]) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
    return coco


def test_our_own_export_round_trips_exactly(tmp_path: Path) -> None:
    names = ("can", "box")
    ring = _disc(40, 30, 15) & ~_disc(40, 30, 6)  # a hole: written as RLE
    masks = [[rect_mask(10, 10, 20, 15), _disc(60, 40, 8)], [ring, rect_mask(0, 0, W, 2)]]
    with AnnotationQueue(tmp_path / "queue") as queue:
        for seed, frame_masks in enumerate(masks):
            rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
            teacher = Instances.from_masks(np.stack(frame_masks), np.array([0, 1]),
                                           np.full(2, 0.9), names)
            queue.enqueue(Frame(rgb, None, None, 1_700_000_000_000_000_000 + seed, "cam"),
                          teacher=teacher, student=teacher, score=0.5, reasons=[],
                          source="bag")
        flushed = flush(queue, tmp_path / "b.zip", class_names=names)
    original = read_coco_zip(tmp_path / "b.zip")
    assert {a["iscrowd"] for a in original["annotations"]} == {0, 1}

    result = load(tmp_path / "b.zip")
    assert result.report.rejections == [] and result.report.unlabelled_images == []
    assert result.report.annotations_accepted == flushed.annotations == 4
    ours, theirs = _coco(original), _coco(result.coco)
    for ann in original["annotations"]:
        imported = theirs.anns[ann["id"]]
        assert np.array_equal(ours.annToMask(ann), theirs.annToMask(imported))
        assert (imported["bbox"], imported["category_id"]) == (ann["bbox"], ann["category_id"])
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        for img in original["images"]:
            assert result.images[img["file_name"]] == zf.read(f"images/default/{img['file_name']}")
