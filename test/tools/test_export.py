"""Export: OpenVINO FP32 + INT8, INT8 verification, manifests, publishing, the CLI.

Models are built from the yolo11n-seg yaml (no weights are downloaded) for a synthetic
dataset of red squares and blue discs on grey noise (24 images, 128 px, train = val). The
default suite exports a random-init model end to end through the CLI (both mAPs are 0, so it
passes: it checks the layout, manifests and publishing) and checks the decision and
agreement logic on constructed results. The slow suite trains the model 40 epochs (mask
mAP50-95 ~0.4), exports and verifies it, and shows that an INT8 model with scrambled int8
weights is caught.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cv_autolabel.cli import main
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.manifest import MANIFEST, verify_manifest
from cv_autolabel.core.segmenters.yolo_openvino import YoloOpenVINOSegmenter
from cv_autolabel.errors import ExportError, ModelError
from cv_autolabel.tools import export as export_mod
from cv_autolabel.tools.export import (
    REPORT,
    Agreement,
    agreement,
    count_train_instances,
    decide,
    export,
    match_instances,
    val_images,
)

IMGSZ = 128
NAMES = ("square", "disc")
pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")]


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline() -> Any:
    """Keep ultralytics off the network (it would fail anyway, but slowly)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "1")
        # Import (and so bind their log handlers) outside any capsys test's short-lived streams.
        import nncf  # noqa: F401
        import ultralytics  # noqa: F401

        yield


def write_shapes_dataset(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Write images, YOLO-seg polygon labels and a data.yaml (train = val); return its path."""
    rng = np.random.default_rng(seed)
    for part in ("images", "labels"):
        (root / part / "train").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = np.full((IMGSZ, IMGSZ, 3), 120, np.uint8) + rng.integers(0, 20, (IMGSZ, IMGSZ, 3),
                                                                       dtype=np.uint8)
        lines = []
        for _ in range(rng.integers(1, 4)):
            cls, (cx, cy), r = int(rng.integers(0, 2)), rng.integers(20, IMGSZ - 20, 2), \
                int(rng.integers(10, 20))
            mask = np.zeros((IMGSZ, IMGSZ), np.uint8)
            if cls == 0:
                cv2.rectangle(mask, (int(cx - r), int(cy - r)), (int(cx + r), int(cy + r)), 1, -1)
            else:
                cv2.circle(mask, (int(cx), int(cy)), r, 1, -1)
            rgb[mask > 0] = (200, 30, 30) if cls == 0 else (30, 30, 200)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            outline = max(contours, key=cv2.contourArea).reshape(-1, 2) / IMGSZ
            lines.append(f"{cls} " + " ".join(f"{v:.5f}" for v in outline.ravel()))
        cv2.imwrite(str(root / "images" / "train" / f"{i:04d}.png"), rgb[..., ::-1])
        (root / "labels" / "train" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}"
                    "dataset_version: v0003\n")
    return data


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def random_pt(tmp_path_factory: pytest.TempPathFactory, offline: None) -> Path:
    """A seeded random-init 2-class yolo11n-seg checkpoint in ``runs/train/weights``."""
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    root = tmp_path_factory.mktemp("runs")
    cfg = root / "yolo11n-seg.yaml"
    cfg.write_text(yaml.safe_dump({**yaml_model_load("yolo11n-seg.yaml"), "nc": len(NAMES)}))
    torch.manual_seed(0)
    yolo = YOLO(cfg)
    yolo.model.names = dict(enumerate(NAMES))
    weights = root / "train" / "weights" / "best.pt"
    weights.parent.mkdir(parents=True)
    yolo.save(weights)
    return weights


@pytest.fixture(scope="module")
def cli_export(random_pt: Path, data_yaml: Path, tmp_path_factory: pytest.TempPathFactory,
               ) -> dict[str, Any]:
    """``cv-autolabel export --json --publish`` of the random model, over an older link."""
    root = tmp_path_factory.mktemp("cli_export")
    old = root / "models" / "old"
    old.mkdir(parents=True)
    (old / "keep.txt").write_text("old model")
    link = root / "models" / "current"
    link.symlink_to(old)
    out = root / "export"
    argv = ["export", str(random_pt), "--data", str(data_yaml), "--out", str(out),
            "--imgsz", str(IMGSZ), "--samples", "4", "--publish", str(link), "--json"]
    return {"argv": argv, "out": out, "link": link, "old": old}


# -- matching, agreement and the decision on constructed results -------------------------------
def _instances(boxes: list[tuple[int, int, int, int]], classes: list[int],
               scores: list[float] | None = None) -> Instances:
    masks = np.zeros((len(boxes), 64, 64), bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True
    return Instances(masks, np.array(boxes, np.float32).reshape(-1, 4),
                     np.array(classes, np.int32), np.array(scores or [0.9] * len(boxes),
                                                           np.float32), NAMES)


def test_matching_pairs_same_class_best_overlap_first() -> None:
    fp32 = _instances([(0, 0, 20, 20), (30, 30, 50, 50), (0, 40, 10, 60)], [0, 1, 0])
    # INT8: the first a little shifted, the second as another class, the third missing.
    int8 = _instances([(2, 0, 22, 20), (30, 30, 50, 50)], [0, 0], [0.8, 0.9])
    pairs = match_instances(fp32, int8)
    assert [(i, j) for i, j, _ in pairs] == [(0, 0)]
    assert pairs[0][2] == pytest.approx(18 / 22)
    stats = agreement([(fp32, int8), (fp32, fp32)])
    assert (stats.images, stats.fp32_instances, stats.int8_instances, stats.matched) == \
        (2, 6, 5, 4)
    assert stats.match_rate == pytest.approx(4 / 6)
    assert stats.mean_mask_iou == pytest.approx((18 / 22 + 3) / 4)
    assert (stats.max_box_diff_px, stats.mean_box_diff_px) == (2.0, 0.5)
    assert stats.max_score_diff == pytest.approx(0.1)


def test_matching_is_one_to_one() -> None:
    one = _instances([(0, 0, 20, 20)], [0])
    two = _instances([(0, 0, 20, 20), (1, 0, 21, 20)], [0, 0])
    assert len(match_instances(two, one)) == 1 and len(match_instances(one, two)) == 1
    assert agreement([(two, one)]).match_rate == 0.5


@pytest.mark.parametrize(("fp32", "int8", "rate"), [(0, 0, 1.0), (0, 2, 0.0), (2, 0, 0.0)])
def test_agreement_of_empty_results(fp32: int, int8: int, rate: float) -> None:
    boxes = [(0, 0, 10, 10), (20, 20, 30, 30)]
    stats = agreement([(_instances(boxes[:fp32], [0] * fp32),
                        _instances(boxes[:int8], [0] * int8))])
    assert stats.match_rate == rate and math.isnan(stats.mean_mask_iou)


@pytest.mark.parametrize(("fp32", "int8", "tolerance", "passed", "drop"), [
    (0.50, 0.50, 1.0, True, 0.0),
    (0.50, 0.495, 1.0, True, 0.5),
    (0.50, 0.49, 1.0, True, 1.0),       # exactly the tolerance passes
    (0.50, 0.48, 1.0, False, 2.0),
    (0.40, 0.41, 1.0, True, -1.0),      # INT8 better
    (0.50, 0.45, 5.0, True, 5.0),
    (0.50, 0.00, 1.0, False, 50.0),
])
def test_decision_compares_the_drop_in_points_with_the_tolerance(
        fp32: float, int8: float, tolerance: float, passed: bool, drop: float) -> None:
    decision = decide(fp32, int8, tolerance)
    assert (decision.passed, decision.drop_points) == (passed, pytest.approx(drop))
    assert f"drop {drop:.2f} points" in decision.message
    assert ("failed" in decision.message) != passed


def test_decision_fails_on_nan() -> None:
    assert not decide(math.nan, 0.3, 1.0).passed


def test_val_images_follow_data_yaml(tmp_path: Path, data_yaml: Path) -> None:
    assert len(val_images(data_yaml)) == 24
    listing = tmp_path / "val.txt"
    listing.write_text(f"{val_images(data_yaml)[3]}\n")
    (tmp_path / "d.yaml").write_text(f"path: {tmp_path}\nval: val.txt\n")
    assert val_images(tmp_path / "d.yaml") == [val_images(data_yaml)[3]]
    (tmp_path / "e.yaml").write_text("train: x\n")
    with pytest.raises(ExportError, match="has no val split"):
        val_images(tmp_path / "e.yaml")


def test_train_instances_count_the_train_labels(tmp_path: Path, data_yaml: Path) -> None:
    labels = sorted((data_yaml.parent / "labels" / "train").glob("*.txt"))
    ids = [line.split()[0] for p in labels for line in p.read_text().splitlines()]
    expected = {n: ids.count(str(i)) for i, n in enumerate(NAMES)}
    assert count_train_instances(data_yaml) == expected
    # names as a list, an image without a label file (no instances), a foreign class id
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("a", "b", "c"):
        (root / "images" / f"{name}.png").write_bytes(b"")
    (root / "labels" / "a.txt").write_text("1 0 0 1 0 1 1\n1 0 0 1 0 1 1\n")
    (root / "labels" / "b.txt").write_text("7 0 0 1 0 1 1\n\n")
    (root / "d.yaml").write_text(f"path: {root}\ntrain: images\nnames: [red_can, blue_can]\n")
    assert count_train_instances(root / "d.yaml") == {"red_can": 0, "blue_can": 2}
    (root / "e.yaml").write_text("train: images\n")  # no names: unknown, not an error
    assert count_train_instances(root / "e.yaml") is None


def test_the_manifest_reader_ignores_malformed_train_instances(tmp_path: Path) -> None:
    from cv_autolabel.core.manifest import train_instances as recorded

    assert recorded(tmp_path) is None  # no manifest
    for value, expected in (({"a": 3}, {"a": 3}), ({"a": -1}, None), ({"a": True}, None),
                            ([1, 2], None), (None, None)):
        (tmp_path / MANIFEST).write_text(json.dumps({"files": {}, "train_instances": value}))
        assert recorded(tmp_path) == expected
    (tmp_path / MANIFEST).write_text("[not json")
    assert recorded(tmp_path) is None


# -- the whole export, random model, through the CLI --------------------------------------------
def test_cli_exports_verifies_writes_manifests_and_publishes(
        cli_export: dict[str, Any], data_yaml: Path, offline: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli_export["argv"]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(stdout[-1])
    out = cli_export["out"]
    assert summary == json.loads((out / REPORT).read_text())
    assert summary["passed"] and any("INT8 verification passed" in line for line in stdout)
    assert set(summary) >= {"map50_95", "drop_points", "tolerance_points", "agreement",
                            "source_weights", "data", "published"}
    assert summary["agreement"]["images"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["fp32", "int8", REPORT]
    for precision in ("fp32", "int8"):
        assert (out / precision / "metadata.yaml").is_file()
        doc = verify_manifest(out / precision)
        assert doc["precision"] == precision and doc["map50_95"] == \
            summary["map50_95"][precision]
        assert doc["source_weights"] == summary["source_weights"]
        assert doc["dataset_version"] == summary["dataset_version"] == "v0003"
        counted = count_train_instances(data_yaml)
        assert doc["train_instances"] == summary["train_instances"] == counted
    # The runtime reads what the model was trained on (the active-learning queue's weights).
    segmenter = YoloOpenVINOSegmenter(out / "int8")
    assert segmenter.train_instances == summary["train_instances"]
    # Published: the link now points at int8, still a link; the old model is untouched.
    link = cli_export["link"]
    assert link.is_symlink() and link.resolve() == (out / "int8").resolve()
    assert (cli_export["old"] / "keep.txt").read_text() == "old model"
    assert not list(link.parent.glob(".current.tmp*"))


def test_a_tampered_export_fails_its_manifest(cli_export: dict[str, Any],
                                              tmp_path: Path) -> None:
    if not (cli_export["out"] / "int8" / MANIFEST).exists():
        pytest.skip("needs test_cli_exports_verifies_writes_manifests_and_publishes")
    for change, message in ((lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum"),
                            (lambda b: b + b"\0", "bytes, the manifest says")):
        copy = shutil.copytree(cli_export["out"] / "int8", tmp_path / f"int8_{message[:5]}")
        weights = next(copy.glob("*.bin"))
        weights.write_bytes(change(weights.read_bytes()))
        with pytest.raises(ModelError, match=message):
            verify_manifest(copy)


def test_default_output_is_beside_the_training_run(random_pt: Path, data_yaml: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def stop(model_pt: Path, data: Path, out: Path, **kwargs: Any) -> None:
        seen["out"] = out
        raise ExportError("stopped")

    monkeypatch.setattr(export_mod, "export_openvino", stop)
    with pytest.raises(ExportError, match="stopped"):
        export(random_pt, data_yaml, imgsz=IMGSZ)
    assert seen["out"].parent == random_pt.parents[2] / "train"
    assert re.fullmatch(r"export_\d{8}_\d{6}", seen["out"].name)
    seen["out"].rmdir()


def test_failed_verification_keeps_fp32_and_the_report_and_does_not_publish(
        cli_export: dict[str, Any], data_yaml: Path, random_pt: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if not (cli_export["out"] / "int8").exists():
        pytest.skip("needs test_cli_exports_verifies_writes_manifests_and_publishes")

    def copy_exports(model_pt: Path, data: Path, out: Path, **kwargs: Any) -> tuple[Path, Path]:
        dirs = [shutil.copytree(cli_export["out"] / p, out / p,
                                ignore=shutil.ignore_patterns(MANIFEST)) for p in ("fp32", "int8")]
        return dirs[0], dirs[1]

    monkeypatch.setattr(export_mod, "export_openvino", copy_exports)
    monkeypatch.setattr(export_mod, "mask_map", lambda d, *a, f32, **k: (0.40, 0.6) if f32
                        else (0.37, 0.5))
    link = tmp_path / "current"
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"drop 3\.00 points exceeds the tolerance of 1"):
        export(random_pt, data_yaml, out=out, imgsz=IMGSZ, samples=2, publish=link)
    report = json.loads((out / REPORT).read_text())
    assert not report["passed"] and report["drop_points"] == pytest.approx(3.0)
    assert verify_manifest(out / "fp32")["precision"] == "fp32"
    assert not (out / "int8" / MANIFEST).exists()  # no detector may load it
    assert not link.exists() and not link.is_symlink()


@pytest.mark.parametrize(("setup", "message"), [
    ("no_pt", "error: no model weights at .*missing.pt"),
    ("no_data", "error: no dataset description at .*missing.yaml"),
    ("no_val", "error: .*has no val split"),
    ("no_train", "error: .*has no train split"),
    ("busy_out", "error: output directory .* exists and is not empty"),
    ("publish_dir", "error: cannot publish: .* exists and is not a symlink"),
    ("bad_imgsz", "error: imgsz must be a positive multiple of 32, got 100"),
    ("bad_pt", "error: FP32 OpenVINO export of .*bad.pt failed"),
])
def test_cli_errors_are_one_line(setup: str, message: str, tmp_path: Path, data_yaml: Path,
                                 capsys: pytest.CaptureFixture[str], offline: None) -> None:
    weights = tmp_path / "bad.pt"
    weights.write_bytes(b"not a checkpoint")
    argv = ["export", str(weights), "--data", str(data_yaml), "--out", str(tmp_path / "out"),
            "--imgsz", str(IMGSZ), "--json"]
    if setup == "no_pt":
        argv[1] = str(tmp_path / "missing.pt")
    elif setup == "no_data":
        argv[3] = str(tmp_path / "missing.yaml")
    elif setup in ("no_val", "no_train"):
        split = "train" if setup == "no_val" else "val"  # the one it has
        (tmp_path / "d.yaml").write_text(f"path: {data_yaml.parent}\n{split}: images/train\n")
        argv[3] = str(tmp_path / "d.yaml")
    elif setup == "busy_out":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "x").write_text("")
    elif setup == "publish_dir":
        (tmp_path / "current").mkdir()
        argv += ["--publish", str(tmp_path / "current")]
    elif setup == "bad_imgsz":
        argv[argv.index("--imgsz") + 1] = "100"
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and re.match(message, lines[0]), captured.err[-2000:]
    assert captured.out == ""


# -- slow: a trained model, and a broken INT8 ----------------------------------------------------
@pytest.fixture(scope="module")
def trained_pt(tmp_path_factory: pytest.TempPathFactory, data_yaml: Path,
               offline: None) -> Path:
    """yolo11n-seg trained 40 epochs on the shapes (about 30 s): mask mAP50-95 ~0.4."""
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("trained")
    YOLO("yolo11n-seg.yaml").train(
        data=str(data_yaml), epochs=40, imgsz=IMGSZ, batch=8, workers=0, plots=False,
        val=False, amp=False, device="cpu", project=str(root), name="train", seed=0,
        deterministic=True, mosaic=0.0, warmup_epochs=0, optimizer="AdamW", lr0=0.005,
        verbose=False)
    return root / "train" / "weights" / "last.pt"


@pytest.mark.slow
def test_a_sound_model_passes_verification(trained_pt: Path, data_yaml: Path,
                                           tmp_path: Path) -> None:
    link = tmp_path / "models" / "current"
    report = export(trained_pt, data_yaml, out=tmp_path / "out", imgsz=IMGSZ, samples=24,
                    publish=link)
    assert report["passed"] and report["map50_95"]["fp32"] > 0.2
    assert report["drop_points"] <= 1.0
    stats = Agreement(**report["agreement"])
    assert stats.images == 24 and stats.fp32_instances >= 10, stats
    assert stats.match_rate >= 0.6 and stats.mean_mask_iou >= 0.85, stats  # 0.75 here
    assert verify_manifest(link)["precision"] == "int8"


def scramble_int8_weights(ir_dir: Path, seed: int = 0) -> int:
    """Overwrite every int8 constant of an IR with random bytes; return how many bytes."""
    xml = next(ir_dir.glob("*.xml"))
    blob = bytearray(next(ir_dir.glob("*.bin")).read_bytes())
    rng = np.random.default_rng(seed)
    changed = 0
    for tag in re.findall(r"<data [^>]*element_type=\"i8\"[^>]*/>", xml.read_text()):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        if "offset" in attrs:
            start, size = int(attrs["offset"]), int(attrs["size"])
            blob[start:start + size] = rng.integers(-128, 128, size, dtype=np.int8).tobytes()
            changed += size
    xml.with_suffix(".bin").write_bytes(bytes(blob))
    return changed


@pytest.mark.slow
def test_a_broken_int8_model_fails_verification(trained_pt: Path, data_yaml: Path,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_mod.export_openvino

    def broken(*args: Any, **kwargs: Any) -> tuple[Path, Path]:
        fp32, int8 = real(*args, **kwargs)
        assert scramble_int8_weights(int8) > 100_000
        return fp32, int8

    monkeypatch.setattr(export_mod, "export_openvino", broken)
    out, link = tmp_path / "out", tmp_path / "current"
    with pytest.raises(ExportError, match=r"INT8 verification failed: .* drop \d+\.\d\d points "
                                          r"exceeds the tolerance of 1; kept the FP32 export"):
        export(trained_pt, data_yaml, out=out, imgsz=IMGSZ, publish=link)
    report = json.loads((out / REPORT).read_text())
    assert not report["passed"] and report["drop_points"] > 10
    assert verify_manifest(out / "fp32")["precision"] == "fp32"
    assert not (out / "int8" / MANIFEST).exists() and not link.is_symlink()


def test_int8_calibrates_on_the_train_split_not_the_val_images_that_judge_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def record(weights: Path, target: Path, source: Path, **kwargs: Any) -> Path:
        calls.append(kwargs)
        return target

    monkeypatch.setattr(export_mod, "_export_one", record)
    (tmp_path / "m.pt").write_bytes(b"w")
    export_mod.export_openvino(tmp_path / "m.pt", tmp_path / "data.yaml", tmp_path / "out",
                               imgsz=IMGSZ, fraction=0.5)
    fp32, int8 = calls
    assert "split" not in fp32 and "quantize" not in fp32
    assert int8["quantize"] == 8 and int8["split"] == "train" and int8["fraction"] == 0.5
