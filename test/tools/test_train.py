"""Training: a real 1-epoch run offline, its record, tracking modes, errors, the CLI."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from cv_autolabel.cli import main
from cv_autolabel.core.coco import mask_annotation
from cv_autolabel.core.dataset import create_version
from cv_autolabel.errors import TrainingError
from cv_autolabel.tools.prepare import prepare
from cv_autolabel.tools.train import RUN_FILE, mask_map_per_class, resolve_tracking, train

H, W = 64, 80
TICK = 200_000_000  # frames of a sequence 0.2 s apart: one group each
FAST = {"epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu"}
METRICS = ("box_map50", "box_map50_95", "mask_map50", "mask_map50_95")


def _frame(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Return an image with a red box and a blue disc, and their (category id, mask)."""
    image = np.full((H, W, 3), 60, np.uint8)
    box = np.zeros((H, W), bool)
    x = int(rng.integers(2, 20))
    box[10:40, x:x + 20] = True
    disc = np.zeros((H, W), np.uint8)
    cv2.circle(disc, (60, 40), 12, 1, -1)
    image[box] = (0, 0, 255)
    image[disc.astype(bool)] = (255, 0, 0)
    return image, [(1, box), (2, disc.astype(bool))]


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared 12-image, 6-sequence, 2-class dataset version (v0001) with its summary."""
    root = tmp_path_factory.mktemp("train_ds")
    rng = np.random.default_rng(0)
    coco: dict[str, Any] = {"categories": [{"id": 1, "name": "can"}, {"id": 2, "name": "ball"}],
                            "images": [], "annotations": []}
    images = {}
    for i in range(12):
        name = f"{i + 1:06d}_{(1000 * (i // 2) + i % 2) * TICK}.png"
        image, masks = _frame(rng)
        images[name] = cv2.imencode(".png", image)[1].tobytes()
        coco["images"].append({"id": i + 1, "file_name": name, "width": W, "height": H})
        for cat, mask in masks:
            coco["annotations"].append(mask_annotation(
                mask, ann_id=len(coco["annotations"]) + 1, image_id=i + 1, category_id=cat))
    version = create_version(root / "dataset", coco, images, source="test")
    summary = prepare(version.path, root / "yolo")
    return Path(summary["data_yaml"])


@contextmanager
def no_network() -> Iterator[list[str]]:
    """Fail and record every DNS lookup or socket connection attempted inside."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", refuse)
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        yield attempts


@pytest.fixture(scope="module")
def run(data_yaml: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1-epoch run without tracking, with ClearML unimportable and the network refused."""
    import ultralytics  # noqa: F401, PLC0415  (its import-time online probe is not ours)

    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp, no_network() as attempts:
        mp.setitem(sys.modules, "clearml", None)  # any import of clearml raises ImportError
        summary = train(data_yaml, out=out, name="first", tracking="none", **FAST)
    return {"summary": summary, "attempts": attempts, "out": out}


def test_run_is_recorded(run: dict[str, Any], data_yaml: Path) -> None:
    summary, run_dir = run["summary"], run["out"] / "first"
    assert summary["run_dir"] == str(run_dir)
    assert Path(summary["best_weights"]) == run_dir / "weights" / "best.pt"
    assert Path(summary["last_weights"]).is_file() and Path(summary["best_weights"]).is_file()
    record = json.loads((run_dir / RUN_FILE).read_text())
    assert record == json.loads(json.dumps(summary, default=str))
    assert record["dataset_version"] == "v0001"  # from data.yaml, as prepare wrote it
    assert record["data_yaml"] == str(data_yaml)
    assert record["model"] == "yolo11n-seg.yaml"
    assert record["epochs_completed"] == 1
    assert record["settings"]["seed"] == 0 and record["settings"]["deterministic"] is True
    assert record["settings"]["imgsz"] == 64 and record["settings"]["plots"] is False
    assert set(METRICS) <= set(record["metrics"])
    assert all(0.0 <= record["metrics"][k] <= 1.0 for k in METRICS)
    per_class = record["mask_map50_95_per_class"]
    assert set(per_class) == {"can", "ball"}  # both are in the val split
    assert all(0.0 <= v <= 1.0 for v in per_class.values())
    assert record["tracking"] == {"mode": "none"}
    assert record["duration_s"] > 0


def test_per_class_map_names_only_classes_in_the_val_set() -> None:
    seg = SimpleNamespace(ap_class_index=np.array([0, 2]), ap=np.array([0.5, 0.25]))
    results = SimpleNamespace(seg=seg, names={0: "can", 1: "box", 2: "ball"})
    assert mask_map_per_class(results) == {"can": 0.5, "ball": 0.25}  # no "box": not in val
    assert mask_map_per_class(None) == {}
    assert mask_map_per_class(SimpleNamespace(names={0: "can"})) == {}  # a detection model


def test_no_tracking_and_no_network(run: dict[str, Any]) -> None:
    # clearml was unimportable during the run and nothing tried to resolve or connect
    assert run["attempts"] == []
    from ultralytics.utils import SETTINGS  # noqa: PLC0415

    on_disk = json.loads(Path(SETTINGS.file_path).read_text())
    assert SETTINGS["clearml"] == on_disk.get("clearml", SETTINGS["clearml"])  # restored


def test_fine_tune_from_best_with_default_name(run: dict[str, Any], data_yaml: Path) -> None:
    best = run["summary"]["best_weights"]
    with no_network() as attempts:
        summary = train(data_yaml, model=best, out=run["out"], tracking="none",
                        dataset_version="v0007", **FAST)
    assert attempts == []
    assert Path(summary["run_dir"]).name.startswith("v0007_best_")
    assert summary["dataset_version"] == "v0007" and summary["model"] == best
    assert Path(summary["best_weights"]).is_file()


def test_offline_clearml_writes_its_session(data_yaml: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from clearml import Task  # noqa: PLC0415

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/clearml.conf
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CLEARML_API_HOST", raising=False)
    monkeypatch.delenv("CLEARML_CONFIG_FILE", raising=False)
    monkeypatch.setenv("CV_AUTOLABEL_CLEARML_OFFLINE", "1")
    with no_network() as attempts:
        summary = train(data_yaml, out=tmp_path / "runs", name="tracked", tracking="auto",
                        **FAST)
    assert attempts == []
    tracking = summary["tracking"]
    assert tracking["mode"] == "clearml-offline" and tracking["task_id"].startswith("offline-")
    zipped = Path(tracking["offline_zip"])
    assert zipped.is_file() and zipped.is_relative_to(tmp_path / "cache")
    with zipfile.ZipFile(zipped) as archive:
        names = archive.namelist()
        task = json.loads(archive.read("task.json"))
    assert "task.json" in names and task["name"] == "tracked"
    assert Task.is_offline()  # process-wide, left on


@pytest.mark.parametrize(("tracking", "env", "conf", "expected"), [
    ("none", {"CLEARML_API_HOST": "http://x"}, False, "none"),
    ("auto", {}, False, "none"),
    ("auto", {"CV_AUTOLABEL_CLEARML_OFFLINE": "1"}, False, "clearml-offline"),
    ("auto", {}, True, "clearml"),
    ("auto", {"CLEARML_API_HOST": "http://x"}, False, "clearml"),
    ("clearml", {}, False, "clearml-offline"),
    ("clearml", {}, True, "clearml"),
])
def test_resolve_tracking(tracking: str, env: dict[str, str], conf: bool, expected: str,
                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CLEARML_API_HOST", "CLEARML_CONFIG_FILE", "CV_AUTOLABEL_CLEARML_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    if conf:
        (tmp_path / "clearml.conf").write_text("api {}\n")
    assert resolve_tracking(tracking) == expected


def _yaml_without_val(tmp_path: Path, data_yaml: Path) -> Path:
    doc = yaml.safe_load(data_yaml.read_text())
    doc.pop("val")
    path = tmp_path / "no_val.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _yaml_missing_dir(tmp_path: Path, data_yaml: Path) -> Path:
    doc = yaml.safe_load(data_yaml.read_text())
    doc["val"] = "images/nowhere"
    path = tmp_path / "missing_dir.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(("make_yaml", "kwargs", "message"), [
    (lambda tmp, good: tmp / "absent.yaml", {}, "data.yaml not found"),
    (_yaml_without_val, {}, "no 'val' images"),
    (_yaml_missing_dir, {}, "not found"),
    (lambda tmp, good: good, {"model": "bogus-seg.yaml"}, "cannot load model"),
    (lambda tmp, good: good, {"model": "yolo11n-seg.pt"}, "only local .pt"),
    (lambda tmp, good: good, {"model": "yolo11n.yaml"}, "not a segmentation model"),
    (lambda tmp, good: good, {"model": "model.onnx"}, "local .pt"),
    (lambda tmp, good: good, {"tracking": "wandb"}, "tracking must be"),
    (lambda tmp, good: good, {"extra": {"project": "x"}}, "extra may not set"),
    (lambda tmp, good: good, {"epochs": 0}, "epochs >= 1"),
])
def test_errors_are_raised_before_training(make_yaml: Any, kwargs: dict[str, Any], message: str,
                                           data_yaml: Path, tmp_path: Path) -> None:
    with no_network(), pytest.raises(TrainingError, match=message):
        train(make_yaml(tmp_path, data_yaml), out=tmp_path / "runs",
              **{"tracking": "none", **FAST, **kwargs})
    assert not (tmp_path / "runs").exists()


def test_existing_run_name_is_an_error(run: dict[str, Any], data_yaml: Path) -> None:
    with pytest.raises(TrainingError, match="already exists"):
        train(data_yaml, out=run["out"], name="first", tracking="none", **FAST)


@pytest.mark.parametrize("model", ["yolo11s-seg.yaml", "yolo26n-seg.yaml", "yolo26s-seg.yaml"])
def test_other_configs_load(model: str) -> None:
    from cv_autolabel.tools.train import load_model  # noqa: PLC0415

    with no_network():
        assert load_model(model).task == "segment"


def test_cli_json(data_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(data_yaml), "--epochs", "1", "--imgsz", "64", "--batch", "4",
                 "--out", str(tmp_path / "runs"), "--name", "cli", "--tracking", "none",
                 "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(out[-1])
    assert summary["run_dir"] == str(tmp_path / "runs" / "cli")
    assert "mask mAP50-95" in out[-2] and summary["best_weights"] in out[-2]
    assert len(out) == 2  # ultralytics' log and bars went to stderr


def test_cli_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(tmp_path / "absent.yaml"), "--tracking", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: data.yaml not found")


def test_ultralytics_log_is_moved_even_inside_someone_elses_redirect() -> None:
    import io  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from cv_autolabel.tools.ultralytics_output import stdout_to_stderr  # noqa: PLC0415

    logger = logging.getLogger("ultralytics")
    handler = logging.StreamHandler(sys.__stdout__)  # bound before the caller's redirect
    logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(io.StringIO()), stdout_to_stderr():
            assert handler.stream is sys.stderr
        assert handler.stream is sys.__stdout__
    finally:
        logger.removeHandler(handler)


def test_ultralytics_log_goes_to_stderr_while_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import logging  # noqa: PLC0415

    from cv_autolabel.tools.ultralytics_output import stdout_to_stderr  # noqa: PLC0415

    logger = logging.getLogger("ultralytics")
    handler = logging.StreamHandler(sys.stdout)  # as ultralytics binds its own at import
    logger.addHandler(handler)
    try:
        with stdout_to_stderr():
            logger.warning("export banner")
            print("progress bar")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr()
    assert "export banner" in captured.err and "progress bar" in captured.err
    assert "export banner" not in captured.out and "progress bar" not in captured.out
    assert "after" in captured.out  # the stream is given back
