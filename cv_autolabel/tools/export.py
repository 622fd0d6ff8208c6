"""Export a trained YOLO segmentation model to OpenVINO FP32 and INT8, verify, publish.

``export(model_pt, data_yaml)`` does, in order:

1. **Export** with ultralytics: an FP32 OpenVINO IR, and an INT8 IR quantised by NNCF
   post-training quantisation calibrated on the images of the dataset's own ``train`` split
   (``export(format="openvino", quantize=8, data=data_yaml, split="train", fraction=...)``;
   nothing is downloaded: the data is ours and ultralytics runs with ``YOLO_OFFLINE=1``), so
   the val images that judge it below played no part in quantising it.
2. **Verify** the INT8 model against the FP32 one:

   * *Accuracy*: mask mAP50-95 of each on the val split with ultralytics' validator. The FP32
     IR is compiled with ``INFERENCE_PRECISION_HINT=f32`` (as our runtime does; OpenVINO would
     otherwise run it in bf16 on CPUs that have it), the INT8 one with OpenVINO's defaults.
     The export **fails** when the drop, ``100 * (fp32 - int8)`` points, exceeds
     ``tolerance``.
   * *Agreement* (reported, not a pass/fail criterion): on ``samples`` val images our runtime,
     :class:`~cv_autolabel.core.segmenters.yolo_openvino.YoloOpenVINOSegmenter`, runs both
     models; instances are matched one to one (same class, mask IoU >= ``MATCH_IOU``, best
     IoU first) and the report gives the fraction of FP32 instances with an INT8 match, the
     mean matched mask IoU and the box (px) and score differences of matched pairs.

3. **Write** ``out/`` (default ``<model_pt's parent>/../export_<YYYYmmdd_HHMMSS>``)::

       fp32/               OpenVINO IR + metadata.yaml + manifest.json
       int8/               the same, INT8; manifest.json only if verification passed
       verification.json   both mAPs, the drop, the tolerance, agreement, passed + message

   Each ``manifest.json`` (see :mod:`cv_autolabel.core.manifest`) carries ``precision``,
   ``map50_95``, ``source_weights``, ``data``, ``dataset_version`` (data.yaml's, as
   ``prepare`` writes it; None otherwise) and ``train_instances`` (instances per class
   in the train split, which the active-learning node weighs its queue by); the detector
   verifies it before a hot reload, so an INT8 model that failed verification cannot be
   loaded by mistake.
4. **Publish** (optional): on success re-point a symlink (e.g. ``models/current``) at
   ``int8/`` atomically, which a watching detector then reloads.

On failure the FP32 export, the INT8 directory and ``verification.json`` are kept and
:class:`~cv_autolabel.errors.ExportError` says why (the message names the drop).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from cv_autolabel.core.instances import Instances, mask_iou
from cv_autolabel.core.manifest import write_manifest
from cv_autolabel.core.model_slot import check_publish_link, publish_model
from cv_autolabel.errors import CvAutolabelError, ExportError, ModelError
from cv_autolabel.tools.ultralytics_output import stdout_to_stderr

#: Two instances match when they share a class and their masks overlap at least this much.
MATCH_IOU = 0.5
#: Score threshold of the agreement check: lower than the detector's 0.25, so weak models
#: still give instances to compare.
AGREEMENT_CONF = 0.1
IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
REPORT = "verification.json"


@dataclass(frozen=True)
class Agreement:
    """How closely INT8 instances follow FP32 ones over some images.

    Attributes:
        images: images compared.
        fp32_instances: FP32 instances over all images.
        int8_instances: INT8 instances over all images.
        matched: FP32 instances with an INT8 match (same class, mask IoU >= MATCH_IOU).
        match_rate: ``matched / fp32_instances`` (1.0 when FP32 found nothing and INT8 too,
            0.0 when only INT8 found something).
        mean_mask_iou: mean mask IoU of matched pairs (NaN when none).
        mean_box_diff_px: mean over matched pairs of the largest box-corner difference.
        max_box_diff_px: the largest box-corner difference of any matched pair.
        mean_score_diff: mean absolute score difference of matched pairs.
        max_score_diff: largest absolute score difference of matched pairs.
    """

    images: int
    fp32_instances: int
    int8_instances: int
    matched: int
    match_rate: float
    mean_mask_iou: float
    mean_box_diff_px: float
    max_box_diff_px: float
    mean_score_diff: float
    max_score_diff: float


@dataclass(frozen=True)
class Decision:
    """Whether the INT8 model keeps the FP32 model's accuracy.

    Attributes:
        passed: the drop is within the tolerance.
        drop_points: ``100 * (fp32_map - int8_map)`` (positive: INT8 is worse).
        message: one line that says so, with the numbers.
    """

    passed: bool
    drop_points: float
    message: str


def match_instances(fp32: Instances, int8: Instances, *,
                    min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """Return one-to-one ``(fp32 index, int8 index, mask IoU)`` matches, best IoU first.

    Pairs must share a class and overlap by at least ``min_iou``.

    Example:
        >>> m = np.zeros((1, 4, 4), bool); m[0, :2] = True
        >>> a = Instances(m, np.array([[0, 0, 4, 2]], np.float32), np.array([0], np.int32),
        ...               np.array([0.9], np.float32), ("a",))
        >>> match_instances(a, a)
        [(0, 0, 1.0)]
    """
    if not len(fp32) or not len(int8):
        return []
    iou = mask_iou(fp32.masks, int8.masks)
    iou[fp32.class_ids[:, None] != int8.class_ids[None, :]] = 0.0
    pairs: list[tuple[int, int, float]] = []
    used_a: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] < min_iou:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j, float(iou[i, j])))
    return pairs


def agreement(results: Iterable[tuple[Instances, Instances]], *,
              min_iou: float = MATCH_IOU) -> Agreement:
    """Return the agreement of (FP32, INT8) Instances pairs, one pair per image."""
    images = n_a = n_b = 0
    ious: list[float] = []
    box_diffs: list[float] = []
    score_diffs: list[float] = []
    for a, b in results:
        images += 1
        n_a, n_b = n_a + len(a), n_b + len(b)
        for i, j, iou in match_instances(a, b, min_iou=min_iou):
            ious.append(iou)
            box_diffs.append(float(np.abs(a.boxes[i] - b.boxes[j]).max()))
            score_diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
    rate = len(ious) / n_a if n_a else (1.0 if not n_b else 0.0)
    return Agreement(images, n_a, n_b, len(ious), rate, _mean(ious), _mean(box_diffs),
                     max(box_diffs, default=math.nan), _mean(score_diffs),
                     max(score_diffs, default=math.nan))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def decide(fp32_map: float, int8_map: float, tolerance: float) -> Decision:
    """Return whether INT8 mAP50-95 (0..1) is within ``tolerance`` points of FP32's.

    Example:
        >>> decide(0.50, 0.495, 1.0).passed, decide(0.50, 0.48, 1.0).drop_points
        (True, 2.0)
    """
    if not (math.isfinite(fp32_map) and math.isfinite(int8_map)):
        return Decision(False, math.nan, f"mask mAP50-95 is not a number (FP32 {fp32_map}, "
                                         f"INT8 {int8_map})")
    drop = round(100.0 * (fp32_map - int8_map), 4)
    numbers = (f"mask mAP50-95 FP32 {100 * fp32_map:.2f}, INT8 {100 * int8_map:.2f}: "
               f"drop {drop:.2f} points")
    if drop > tolerance:
        return Decision(False, drop, f"INT8 verification failed: {numbers} exceeds the "
                                     f"tolerance of {tolerance:g}")
    return Decision(True, drop, f"INT8 verification passed: {numbers} (tolerance "
                                f"{tolerance:g})")


# -- the whole job ------------------------------------------------------------------------------
def export(model_pt: Path, data_yaml: Path, *, out: Path | None = None, imgsz: int = 640,
           tolerance: float = 1.0, samples: int = 8, publish: Path | None = None,
           calibration_fraction: float = 1.0) -> dict[str, Any]:
    """Export ``model_pt`` to OpenVINO FP32 + INT8, verify INT8, write manifests, publish.

    Args:
        model_pt: ultralytics segmentation weights (``best.pt``).
        data_yaml: the dataset's ``data.yaml``; its ``train`` split calibrates, its ``val``
            split verifies.
        out: new (or empty) output directory; default ``<model_pt parent>/../export_<time>``.
        imgsz: export and validation image size.
        tolerance: largest allowed mask mAP50-95 drop of INT8, in points (0..100 scale).
        samples: val images of the agreement check.
        publish: symlink to point at ``out/int8`` once verification has passed.
        calibration_fraction: fraction of the train images NNCF calibrates on.

    Returns:
        The verification report (what ``verification.json`` holds, plus ``published``).

    Raises:
        ExportError: a missing input, an unusable ``out`` or ``publish``, a failed export or
            validation, or INT8 verification failure (the FP32 export and the report are
            written first).
    """
    model_pt, data_yaml = Path(model_pt).expanduser(), Path(data_yaml).expanduser()
    _check_inputs(model_pt, data_yaml, imgsz, samples, calibration_fraction)
    out = Path(out).expanduser() if out is not None else _default_out(model_pt)
    _prepare_out(out)
    if publish is not None:
        publish = Path(publish).expanduser()
        try:
            check_publish_link(publish)
        except ModelError as err:
            raise ExportError(str(err)) from None
    started = time.perf_counter()
    fp32_dir, int8_dir = export_openvino(model_pt, data_yaml, out, imgsz=imgsz,
                                         fraction=calibration_fraction)
    assert int8_dir is not None  # int8=True
    exported = time.perf_counter()
    report = verify(fp32_dir, int8_dir, data_yaml, imgsz=imgsz, tolerance=tolerance,
                    samples=samples, work=out / ".work")
    report.update(source_weights=str(model_pt.resolve()), data=str(data_yaml.resolve()),
                  dataset_version=_dataset_version(data_yaml),
                  train_instances=count_train_instances(data_yaml), out=str(out),
                  published=None,
                  timings_s={"export": round(exported - started, 1),
                             "verify": round(time.perf_counter() - exported, 1)})
    _write_manifests(report, fp32_dir, int8_dir)
    shutil.rmtree(out / ".work", ignore_errors=True)
    publish_error = None
    if report["passed"] and publish is not None:
        try:
            publish_model(int8_dir, publish)
            report["published"] = str(publish)
        except ModelError as err:  # e.g. the link became a real directory meanwhile
            publish_error = report["publish_error"] = str(err)
    report = _finite(report)
    (out / REPORT).write_text(json.dumps(report, indent=1) + "\n")
    if publish_error is not None:
        raise ExportError(f"verified export written to {out}, but not published: "
                          f"{publish_error}")
    if not report["passed"]:
        raise ExportError(f"{report['message']}; kept the FP32 export {fp32_dir}, report "
                          f"{out / REPORT}")
    return report


def _check_inputs(model_pt: Path, data_yaml: Path, imgsz: int, samples: int,
                  fraction: float) -> None:
    if not model_pt.is_file():
        raise ExportError(f"no model weights at {model_pt}")
    if model_pt.suffix != ".pt":
        raise ExportError(f"{model_pt} is not ultralytics .pt weights")
    if not data_yaml.is_file():
        raise ExportError(f"no dataset description at {data_yaml} (a data.yaml from "
                          "`cv-autolabel prepare`)")
    if imgsz < 32 or imgsz % 32:
        raise ExportError(f"imgsz must be a positive multiple of 32, got {imgsz}")
    if samples < 0 or not 0.0 < fraction <= 1.0:
        raise ExportError(f"samples must be >= 0 and the calibration fraction in (0, 1], got "
                          f"{samples} and {fraction}")
    split_images(data_yaml, "train")  # fail early: no images to calibrate on
    val_images(data_yaml)  # or to verify on


def _default_out(model_pt: Path) -> Path:
    return model_pt.resolve().parent.parent / f"export_{time.strftime('%Y%m%d_%H%M%S')}"


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"output directory {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)


def val_images(data_yaml: Path) -> list[Path]:
    """Return the images of the ``val`` split of a YOLO ``data.yaml``, sorted.

    Raises:
        ExportError: the file is unreadable, has no ``val`` entry, or it lists no image.
    """
    return split_images(data_yaml, "val")


def split_images(data_yaml: Path, split: str) -> list[Path]:
    """Return the images of a split (``train``, ``val``) of a YOLO ``data.yaml``.

    Raises:
        ExportError: the file is unreadable, has no such entry, or it lists no image.
    """
    doc = read_data_yaml(data_yaml)
    try:
        entries = doc[split]
    except KeyError as err:
        raise ExportError(f"{data_yaml} has no {split} split") from err
    root = Path(doc.get("path") or data_yaml.parent)
    if not root.is_absolute():
        root = data_yaml.parent / root
    images: list[Path] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = root / str(entry)
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            images += [root / line.strip() for line in path.read_text().splitlines()
                       if line.strip()]
        elif path.is_file():
            images.append(path)
    if not images:
        raise ExportError(f"the {split} split of {data_yaml} holds no image")
    return images


def read_data_yaml(data_yaml: Path) -> dict[str, Any]:
    """The mapping a YOLO ``data.yaml`` holds.

    Raises:
        ExportError: the file is unreadable or not a YAML mapping.
    """
    try:
        doc = yaml.safe_load(data_yaml.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ExportError(f"cannot read {data_yaml}: {err!r}") from err
    if not isinstance(doc, dict):
        raise ExportError(f"{data_yaml} is not a YAML mapping")
    return doc


def _dataset_version(data_yaml: Path) -> str | None:
    """data.yaml's ``dataset_version`` (``prepare`` writes it), or None."""
    try:
        version = read_data_yaml(data_yaml).get("dataset_version")
    except ExportError:
        return None
    return str(version) if version else None


def count_train_instances(data_yaml: Path) -> dict[str, int] | None:
    """Instances of each class in the ``train`` split's YOLO label files (ultralytics' layout:
    ``.../images/x.png`` is labelled by ``.../labels/x.txt``), or None when the split or its
    class names cannot be read. The exported model keeps them in its manifest, so the
    active-learning node knows which classes its student has seen few labels of.
    """
    try:
        names = read_data_yaml(data_yaml)["names"]
        names = ([str(n) for n in names] if isinstance(names, list)
                 else [str(names[k]) for k in sorted(names, key=int)])
        images = split_images(data_yaml, "train")
    except (ExportError, KeyError, TypeError, ValueError):
        return None
    counts = dict.fromkeys(names, 0)
    for image in images:
        parts = list(image.parts)
        if "images" not in parts:
            continue
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
        try:
            lines = Path(*parts).with_suffix(".txt").read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            continue  # an image without labels holds no instance
        for line in lines:
            token = line.split()[:1]
            if token and token[0].isdigit() and int(token[0]) < len(names):
                counts[names[int(token[0])]] += 1
    return counts


# -- export ---------------------------------------------------------------------------------------
def export_openvino(model_pt: Path, data_yaml: Path | None, out: Path, *, imgsz: int,
                    fraction: float = 1.0, int8: bool = True) -> tuple[Path, Path | None]:
    """Export ``model_pt`` with ultralytics as ``out/fp32`` and ``out/int8``; return both.

    The weights are copied into ``out/.work`` first, since ultralytics writes exports beside
    the weights they come from. ``int8=False`` exports FP32 only (the second path is None;
    ``data_yaml``, the INT8 calibration data, may then be None).

    Raises:
        ExportError: ultralytics or NNCF failed (the message says which export).
    """
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    weights = work / model_pt.name
    shutil.copy2(model_pt, weights)
    fp32 = _export_one(weights, out / "fp32", model_pt, imgsz=imgsz)
    if not int8:
        return fp32, None
    if data_yaml is None:
        raise ExportError("an INT8 export needs calibration data (a data.yaml)")
    return fp32, _export_one(weights, out / "int8", model_pt, imgsz=imgsz, quantize=8,
                             data=str(data_yaml), split="train", fraction=fraction)


def _export_one(weights: Path, target: Path, source: Path, *, imgsz: int, **args: Any) -> Path:
    """Export ``weights`` with ultralytics and move the export directory to ``target``."""
    with _offline():
        try:
            from ultralytics import YOLO  # noqa: PLC0415

            made = Path(YOLO(weights).export(format="openvino", imgsz=imgsz, verbose=False,
                                             **args))
        except Exception as err:  # ultralytics/NNCF raise anything; name the step
            shutil.rmtree(weights.parent, ignore_errors=True)
            raise ExportError(f"{target.name.upper()} OpenVINO export of {source} failed: "
                              f"{_one_line(err)}") from err
    shutil.move(str(made), target)
    return target


@contextmanager
def _offline() -> Iterator[None]:
    """Keep ultralytics off the network (no asset, font or dataset downloads) and stdout."""
    old = os.environ.get("YOLO_OFFLINE")
    os.environ["YOLO_OFFLINE"] = "1"
    # Imported before stdout is redirected, so their loggers keep the real streams.
    import nncf  # noqa: F401, PLC0415

    try:
        with stdout_to_stderr():  # its log and progress bars: stdout is for our summary
            yield
    finally:
        if old is None:
            os.environ.pop("YOLO_OFFLINE", None)
        else:
            os.environ["YOLO_OFFLINE"] = old


# -- verification ---------------------------------------------------------------------------------
def verify(fp32_dir: Path, int8_dir: Path, data_yaml: Path, *, imgsz: int,
           tolerance: float = 1.0, samples: int = 8, work: Path | None = None) -> dict[str, Any]:
    """Return the verification report of an INT8 export against its FP32 export.

    Keys: ``passed``, ``message``, ``tolerance_points``, ``drop_points``, ``map50_95`` and
    ``map50`` (``{"fp32": .., "int8": ..}``, mask, 0..1), ``agreement`` (see
    :class:`Agreement`), ``fp32_dir``, ``int8_dir``, ``imgsz``. Does not raise on failure.

    Raises:
        ExportError: a model cannot be validated or run.
    """
    work = work or int8_dir.parent / ".work"
    maps = {name: mask_map(d, data_yaml, imgsz=imgsz, f32=name == "fp32", work=work / name)
            for name, d in (("fp32", fp32_dir), ("int8", int8_dir))}
    decision = decide(maps["fp32"][0], maps["int8"][0], tolerance)
    stats = measure_agreement(fp32_dir, int8_dir, val_images(data_yaml), samples=samples)
    return {"passed": decision.passed, "message": decision.message,
            "tolerance_points": tolerance, "drop_points": decision.drop_points,
            "map50_95": {k: v[0] for k, v in maps.items()},
            "map50": {k: v[1] for k, v in maps.items()},
            "agreement": asdict(stats), "fp32_dir": str(fp32_dir), "int8_dir": str(int8_dir),
            "imgsz": imgsz}


def mask_map(ir_dir: Path, data_yaml: Path, *, imgsz: int, f32: bool,
             work: Path) -> tuple[float, float]:
    """Return (mask mAP50-95, mask mAP50) of an OpenVINO export on the val split.

    ``f32`` compiles the IR in f32 (OpenVINO's default is bf16 on CPUs that have it).

    Raises:
        ExportError: ultralytics cannot validate the model on the data.
    """
    # ultralytics tells formats by name: an OpenVINO export must be a "*_openvino_model" dir.
    work.mkdir(parents=True, exist_ok=True)
    alias = work / f"{ir_dir.name}_openvino_model"
    if not alias.is_symlink():
        alias.symlink_to(ir_dir.resolve(), target_is_directory=True)
    with _offline(), _f32_compile(f32):
        try:
            from ultralytics import YOLO  # noqa: PLC0415

            metrics = YOLO(str(alias), task="segment").val(
                data=str(data_yaml), split="val", imgsz=imgsz, batch=1, plots=False,
                save_json=False, verbose=False, project=str(work), name="val", exist_ok=True)
        except Exception as err:  # ultralytics raises anything
            raise ExportError(f"cannot validate {ir_dir} on {data_yaml}: "
                              f"{_one_line(err)}") from err
    return float(metrics.seg.map), float(metrics.seg.map50)


@contextmanager
def _f32_compile(enabled: bool) -> Iterator[None]:
    """Make ``openvino.Core.compile_model`` default to ``INFERENCE_PRECISION_HINT=f32``."""
    if not enabled:
        yield
        return
    import openvino as ov  # noqa: PLC0415

    original = ov.Core.compile_model

    def compile_f32(self: Any, model: Any, device_name: str | None = None,
                    config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        config = {"INFERENCE_PRECISION_HINT": "f32", **(config or {})}
        return original(self, model, device_name, config, **kwargs)

    ov.Core.compile_model = compile_f32  # type: ignore[method-assign]
    try:
        yield
    finally:
        ov.Core.compile_model = original  # type: ignore[method-assign]


def measure_agreement(fp32_dir: Path, int8_dir: Path, images: list[Path], *, samples: int,
                      conf: float = AGREEMENT_CONF) -> Agreement:
    """Run our runtime with both models on ``samples`` evenly spaced images; compare."""
    from cv_autolabel.core.segmenters.yolo_openvino import YoloOpenVINOSegmenter  # noqa: PLC0415

    chosen = [images[int(i)] for i in np.unique(np.linspace(0, len(images) - 1, samples)
                                                 .round().astype(int))] if samples else []
    try:
        a = YoloOpenVINOSegmenter(fp32_dir, conf=conf)
        b = YoloOpenVINOSegmenter(int8_dir, conf=conf)
    except CvAutolabelError as err:
        raise ExportError(f"cannot load the exports for the agreement check: {err}") from err
    return agreement((a.segment(rgb), b.segment(rgb)) for rgb in map(_read_rgb, chosen))


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ExportError(f"cannot read val image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def _write_manifests(report: dict[str, Any], fp32_dir: Path, int8_dir: Path) -> None:
    common = {"source_weights": report["source_weights"], "data": report["data"],
              "dataset_version": report["dataset_version"], "imgsz": report["imgsz"],
              "train_instances": report["train_instances"]}
    write_manifest(fp32_dir, precision="fp32", map50_95=report["map50_95"]["fp32"], **common)
    if report["passed"]:  # a failed INT8 model gets none, so no detector will load it
        write_manifest(int8_dir, precision="int8", map50_95=report["map50_95"]["int8"],
                       drop_points=report["drop_points"], **common)


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _finite(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
