"""YOLO instance segmentation on OpenVINO, with numpy and OpenCV doing the rest.

A lean runtime for the directory that ultralytics ``export(format="openvino")`` writes
(``<name>.xml``, ``<name>.bin``, ``metadata.yaml``; FP32 or ``int8=True``): no torch and no
ultralytics on the robot's hot path. Pre- and postprocessing mirror ultralytics' default
``predict`` for the same IR, so the two give the same instances (boxes within a pixel, mask IoU
near 1, see ``test/core/test_segmenters.py``):

1. **Letterbox** as ``ultralytics.data.augment.LetterBox``: scale to fit (up or down),
   ``cv2.resize`` INTER_LINEAR, centre padding with grey 114; static-shape exports are padded
   to their export size; dynamic ones are fitted to the export size and padded to the next
   stride multiple only (``rect=True``: ultralytics does the same given ``imgsz=`` that size).
2. **Decode.** Standard heads (YOLOv8/11, YOLO26 exported with NMS left out) give
   ``(1, 4 + nc + 32, A)``: best class per anchor, ``score > conf``, class-aware greedy NMS
   (torchvision's, with ultralytics' per-class offset of 7680 px and 30000-box cap), then
   ``max_det``. End-to-end heads (YOLO26 exported with ``nms=False``) give ``(1, K, 6 + 32)``
   boxes already suppressed: rows with ``score > conf``, the first ``max_det``.
3. **Masks** only for kept instances and only inside their boxes: ``coefficients @ protos``,
   bilinear upsampling of the proto window under the box to the network input (torch's
   ``align_corners=False`` sampling: ``cv2.resize`` for the usual integer 4x, a separable
   numpy lerp otherwise), ``logit > 0`` (sigmoid > 0.5), crop to the box; then the padding is
   dropped and the box region resampled bilinearly to the original image, ``> 0.5``. That is
   what ``ops.process_mask`` + ``ops.scale_masks`` do on whole images, sample for sample.
   Instances whose mask is empty at the network input are dropped, as ultralytics drops them.
4. **Boxes** mapped back through the letterbox and clipped to the image.

Precision: on CPUs with bf16 (AMX on Sapphire Rapids and newer, AVX-512 BF16 on recent EPYC)
OpenVINO runs FP32 IRs in bf16 unless told otherwise, so an FP32 export is compiled with
``INFERENCE_PRECISION_HINT=f32`` by default; an INT8 (FakeQuantize) export keeps OpenVINO's
own choice for its non-quantised layers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.manifest import MANIFEST, train_instances, verify_manifest
from cv_autolabel.core.segmenters import check_rgb
from cv_autolabel.errors import ModelError, SegmenterError

#: ultralytics' NMS settings (``utils/nms.py``): at most this many candidates enter NMS ...
MAX_NMS = 30000
#: ... and each class's boxes are shifted by class * MAX_WH px so that classes never overlap.
MAX_WH = 7680
PAD_VALUE = 114
PRECISION_HINTS = ("f32", "bf16", "f16")


@dataclass(frozen=True)
class ExportInfo:
    """What the runtime reads from an ultralytics export's ``metadata.yaml``.

    Attributes:
        xml: the IR's ``.xml`` (its ``.bin`` sits beside it).
        names: class names, index = class id.
        imgsz: (height, width) the model was exported for.
        stride: largest network stride (dynamic exports pad to a multiple of it).
        end2end: the metadata says the head is NMS-free (checked against the outputs).
    """

    xml: Path
    names: tuple[str, ...]
    imgsz: tuple[int, int]
    stride: int
    end2end: bool


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside the network input, as ultralytics' ``LetterBox`` puts it.

    Attributes:
        image: (H, W) of the original image.
        content: (h, w) of the resized image inside the input.
        input: (H1, W1) of the network input.
        top: rows of padding above the content.
        left: columns of padding left of the content.

    Example:
        >>> Letterbox.fit((480, 640), (640, 640))
        Letterbox(image=(480, 640), content=(480, 640), input=(640, 640), top=80, left=0)
    """

    image: tuple[int, int]
    content: tuple[int, int]
    input: tuple[int, int]
    top: int
    left: int

    @classmethod
    def fit(cls, image: tuple[int, int], target: tuple[int, int], *, stride: int = 32,
            auto: bool = False) -> Letterbox:
        """Return the letterbox of an (H, W) image in a (H1, W1) target.

        ``auto`` pads only to the next multiple of ``stride`` (dynamic-shape models), as
        ultralytics' ``predict`` does with ``rect=True``.
        """
        h, w = image
        r = min(target[0] / h, target[1] / w)
        nw, nh = max(round(w * r), 1), max(round(h * r), 1)
        dw, dh = target[1] - nw, target[0] - nh
        if auto:
            dw, dh = dw % stride, dh % stride
        top, bottom = round(dh / 2 - 0.1), round(dh / 2 + 0.1)
        left, right = round(dw / 2 - 0.1), round(dw / 2 + 0.1)
        return cls((h, w), (nh, nw), (nh + top + bottom, nw + left + right), top, left)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """Return ``rgb`` resized and padded to the (H1, W1, 3) network input."""
        if rgb.shape[:2] != self.content:
            rgb = cv2.resize(rgb, self.content[::-1], interpolation=cv2.INTER_LINEAR)
        bottom = self.input[0] - self.content[0] - self.top
        right = self.input[1] - self.content[1] - self.left
        return cv2.copyMakeBorder(rgb, self.top, bottom, self.left, right, cv2.BORDER_CONSTANT,
                                  value=(PAD_VALUE,) * 3)

    def boxes_to_image(self, boxes: np.ndarray) -> np.ndarray:
        """Return (N, 4) xyxy network-input boxes as float32 image pixels, clipped to the image."""
        gain = np.array([self.content[1] / self.image[1], self.content[0] / self.image[0]] * 2,
                        np.float32)
        out = (boxes.astype(np.float32) - np.array([self.left, self.top] * 2, np.float32)) / gain
        np.clip(out[:, 0::2], 0, self.image[1], out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, self.image[0], out=out[:, 1::2])
        return out


@dataclass(frozen=True)
class Detections:
    """Instances in network-input space before masks: all arrays have N rows.

    Attributes:
        boxes: (N, 4) float32 xyxy in network-input pixels.
        scores: (N,) float32.
        class_ids: (N,) int32.
        coeffs: (N, nm) float32 mask coefficients.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    coeffs: np.ndarray

    def select(self, idx: np.ndarray) -> Detections:
        """Return the rows ``idx`` (indices or a boolean mask)."""
        return Detections(self.boxes[idx], self.scores[idx], self.class_ids[idx],
                          self.coeffs[idx])


@dataclass(frozen=True)
class SegmentTimings:
    """Wall time of the stages of the last ``segment`` call, in milliseconds."""

    preprocess_ms: float = 0.0
    infer_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """Return the sum of the three stages."""
        return self.preprocess_ms + self.infer_ms + self.postprocess_ms


class YoloOpenVINOSegmenter:
    """An ultralytics YOLO segmentation export run by OpenVINO (see the module docstring).

    Not thread-safe: one instance owns one inference request; use one per worker thread.

    Args:
        model_dir: the export directory (``*.xml``, ``*.bin``, ``metadata.yaml``).
        conf: keep instances scoring above this.
        iou: NMS suppresses same-class boxes overlapping a better one by more than this.
        max_det: keep at most this many instances (best first).
        precision_hint: OpenVINO ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``,
            ``"f16"``). None: ``"f32"`` for FP32 IRs, so FP32 means FP32 on AMX CPUs too;
            OpenVINO's default for INT8 IRs (whose quantised layers run in int8 anyway).
        num_threads: OpenVINO ``INFERENCE_NUM_THREADS``; None lets OpenVINO choose.

    Raises:
        SegmenterError: bad options, or the directory is missing, incomplete or corrupt (the
            message names the directory and, when there is one, what its checksum manifest
            says).
    """

    def __init__(self, model_dir: str | Path, *, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 100, precision_hint: str | None = None,
                 num_threads: int | None = None) -> None:
        _check_options(conf, iou, max_det, precision_hint, num_threads)
        self.model_dir = Path(model_dir)
        self.conf, self.iou, self.max_det = float(conf), float(iou), int(max_det)
        self.info = read_export_info(self.model_dir)
        model = _read_model(self.model_dir, self.info.xml)
        self.int8 = is_quantized(model)
        self.precision_hint = precision_hint or (None if self.int8 else "f32")
        self._layout = _OutputLayout.of(model, self.info, self.model_dir)
        self._dynamic = model.input(0).get_partial_shape().is_dynamic
        self._imgsz = self.info.imgsz if self._dynamic else tuple(model.input(0).get_shape()[2:])
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = self.precision_hint
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self._compiled = _compile(model, config, self.model_dir)
        self._request = self._compiled.create_infer_request()
        self.name = f"yolo:{self.model_dir.name}"
        self.class_names = self.info.names
        #: instances per class the model was trained on (its manifest), None if unknown
        self.train_instances = train_instances(self.model_dir)
        self.timings = SegmentTimings()

    @property
    def inference_precision(self) -> str:
        """Return the precision OpenVINO actually compiled with (e.g. ``f32``, ``bf16``)."""
        value = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        return str(value.to_string() if hasattr(value, "to_string") else value)

    def segment(self, rgb: np.ndarray) -> Instances:
        """Return the instances in one (H, W, 3) uint8 RGB image, masks at (H, W).

        Raises:
            SegmenterError: ``rgb`` is not a non-empty (H, W, 3) uint8 image.
        """
        started = time.perf_counter()
        blob, box = self.preprocess(check_rgb(rgb))
        inferred = time.perf_counter()
        outputs = self.raw_infer(blob)
        decoded = time.perf_counter()
        result = self.postprocess(outputs, box)
        done = time.perf_counter()
        self.timings = SegmentTimings((inferred - started) * 1e3, (decoded - inferred) * 1e3,
                                      (done - decoded) * 1e3)
        return result

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Return the (1, 3, H1, W1) float32 0..1 network input of an image, and its letterbox."""
        box = Letterbox.fit(rgb.shape[:2], self._imgsz, stride=self.info.stride,
                            auto=self._dynamic)
        padded = box.apply(rgb)
        blob = np.empty((1, 3, *box.input), np.float32)
        # Divide (not multiply by 1/255) so the input is bit-identical to ultralytics'.
        np.divide(padded.transpose(2, 0, 1), np.float32(255), out=blob[0])
        return blob, box

    def raw_infer(self, blob: np.ndarray) -> list[np.ndarray]:
        """Run the network alone on a preprocessed blob; return its outputs.

        The arrays share the inference request's memory (no copy): they are valid until the
        next call.
        """
        outputs = self._request.infer({0: blob}, share_inputs=True, share_outputs=True)
        return [outputs[i] for i in range(len(self._compiled.outputs))]

    def postprocess(self, outputs: list[np.ndarray], box: Letterbox) -> Instances:
        """Return the Instances of raw network outputs for an image letterboxed as ``box``."""
        pred, protos = outputs[self._layout.pred][0], outputs[self._layout.protos][0]
        if self._layout.end2end:
            dets = decode_end2end(pred, self.conf, self.max_det)
        else:
            dets = decode_nms(pred, len(self.class_names), self.conf, self.iou, self.max_det)
        masks, keep = decode_masks(protos, dets.coeffs, dets.boxes, box)
        dets = dets.select(keep)
        return Instances(masks, box.boxes_to_image(dets.boxes), dets.class_ids, dets.scores,
                         self.class_names)


# -- loading -----------------------------------------------------------------------------------
def _check_options(conf: float, iou: float, max_det: int, precision_hint: str | None,
                   num_threads: int | None) -> None:
    problems = []
    if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
        problems.append(f"conf and iou must be in 0..1, got {conf} and {iou}")
    if int(max_det) < 1:
        problems.append(f"max_det must be at least 1, got {max_det}")
    if precision_hint is not None and precision_hint not in PRECISION_HINTS:
        problems.append(f"precision_hint must be one of {', '.join(PRECISION_HINTS)} or None, "
                        f"got {precision_hint!r}")
    if num_threads is not None and int(num_threads) < 1:
        problems.append(f"num_threads must be at least 1, got {num_threads}")
    if problems:
        raise SegmenterError("bad YOLO segmenter options: " + "; ".join(problems))


def read_export_info(model_dir: Path) -> ExportInfo:
    """Return the IR path and metadata of an ultralytics OpenVINO export directory.

    Raises:
        SegmenterError: the directory, its single ``.xml`` or its ``metadata.yaml`` is
            missing, or the metadata is not that of a segmentation model.
    """
    if not model_dir.is_dir():
        raise SegmenterError(f"no YOLO model directory at {model_dir}")
    xmls = sorted(model_dir.glob("*.xml"))
    if len(xmls) != 1:
        found = ", ".join(p.name for p in xmls) or "none"
        raise _load_error(model_dir, f"expected one OpenVINO .xml, found {found}")
    meta = _read_metadata(model_dir)
    names = meta.get("names")
    if meta.get("task", "segment") != "segment" or not isinstance(names, dict) or not names:
        raise _load_error(model_dir, f"metadata.yaml describes no segmentation model (task "
                                     f"{meta.get('task')!r}, names {type(names).__name__})")
    if sorted(int(k) for k in names) != list(range(len(names))):
        raise _load_error(model_dir, "metadata.yaml class ids are not 0..n-1")
    imgsz = meta.get("imgsz", 640)
    imgsz = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(int(v) for v in imgsz)
    return ExportInfo(xmls[0], tuple(str(names[k]) for k in sorted(names, key=int)),
                      (int(imgsz[0]), int(imgsz[1])), int(meta.get("stride", 32)),
                      bool(meta.get("end2end", False)))


def _read_metadata(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "metadata.yaml"
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _load_error(model_dir, "metadata.yaml is missing (class names, input size); "
                                     "export with ultralytics' export(format='openvino')") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise _load_error(model_dir, f"metadata.yaml is unreadable: {err}") from err
    if not isinstance(meta, dict):
        raise _load_error(model_dir, "metadata.yaml is not a mapping")
    return meta


def _read_model(model_dir: Path, xml: Path) -> Any:
    import openvino as ov  # noqa: PLC0415

    if not xml.with_suffix(".bin").is_file():
        raise _load_error(model_dir, f"{xml.with_suffix('.bin').name} is missing")
    try:
        return ov.Core().read_model(xml, xml.with_suffix(".bin"))
    except RuntimeError as err:
        raise _load_error(model_dir, f"OpenVINO cannot read {xml.name}: "
                                     f"{_first_line(err)}") from err


def _compile(model: Any, config: dict[str, Any], model_dir: Path) -> Any:
    import openvino as ov  # noqa: PLC0415

    try:
        return ov.Core().compile_model(model, "CPU", config)
    except RuntimeError as err:
        raise _load_error(model_dir, f"OpenVINO cannot compile it: {_first_line(err)}") from err


def is_quantized(model: Any) -> bool:
    """Return whether an OpenVINO model has INT8 activations (NNCF FakeQuantize ops)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


def _load_error(model_dir: Path, problem: str) -> SegmenterError:
    # A manifest tells a half-copied model (fix the copy) from a broken export (re-export).
    msg = f"cannot load the YOLO model in {model_dir}: {problem}"
    if (model_dir / MANIFEST).exists():
        try:
            verify_manifest(model_dir)
            msg += f"; its files match {MANIFEST}, so the export itself is broken"
        except ModelError as err:
            msg += f"; checksum manifest: {err}"
    return SegmenterError(msg)


@dataclass(frozen=True)
class _OutputLayout:
    """Which output holds predictions and which protos, and whether the head is end-to-end."""

    pred: int
    protos: int
    end2end: bool

    @classmethod
    def of(cls, model: Any, info: ExportInfo, model_dir: Path) -> _OutputLayout:
        shapes = [out.get_partial_shape() for out in model.outputs]
        ranks = [s.rank.get_length() for s in shapes]
        if len(shapes) != 2 or sorted(ranks) != [3, 4]:
            raise _load_error(model_dir, f"outputs {shapes} are not those of a YOLO "
                                         "segmentation head (predictions, protos)")
        pred, protos = ranks.index(3), ranks.index(4)
        nm, nc = shapes[protos][1].get_length(), len(info.names)
        rows, cols = (d.get_length() if d.is_static else -1 for d in list(shapes[pred])[1:])
        standard = rows == 4 + nc + nm
        if cols == 6 + nm and (info.end2end or not standard):
            return cls(pred, protos, True)
        if not standard:
            raise _load_error(model_dir, f"prediction output {shapes[pred]} does not fit "
                                         f"{nc} classes and {nm} mask coefficients")
        return cls(pred, protos, False)


# -- decoding ----------------------------------------------------------------------------------
def decode_nms(pred: np.ndarray, nc: int, conf: float, iou: float, max_det: int) -> Detections:
    """Return the detections of a standard head's (4 + nc + nm, A) output after NMS.

    Mirrors ultralytics' ``non_max_suppression`` (single label, class-aware): best class per
    anchor, ``score > conf``, at most ``MAX_NMS`` candidates, NMS, the best ``max_det``.
    """
    cls_scores = pred[4:4 + nc]
    best = cls_scores.argmax(0)
    scores = np.take_along_axis(cls_scores, best[None], 0)[0]
    cand = np.flatnonzero(scores > conf)
    if cand.size > MAX_NMS:
        cand = cand[np.argsort(-scores[cand], kind="stable")[:MAX_NMS]]
    cols = pred[:, cand]
    dets = Detections(xywh_to_xyxy(cols[:4].T), scores[cand], best[cand].astype(np.int32),
                      np.ascontiguousarray(cols[4 + nc:].T))
    offsets = dets.class_ids[:, None].astype(np.float32) * np.float32(MAX_WH)
    return dets.select(nms(dets.boxes + offsets, dets.scores, iou, max_keep=max_det))


def decode_end2end(pred: np.ndarray, conf: float, max_det: int) -> Detections:
    """Return the detections of an end-to-end head's (K, 6 + nm) output: no NMS needed.

    Rows are ``x1, y1, x2, y2, score, class, coefficients...`` sorted by score; those scoring
    above ``conf`` are kept, at most ``max_det``.
    """
    keep = np.flatnonzero(pred[:, 4] > conf)[:max_det]
    rows = pred[keep]
    return Detections(np.ascontiguousarray(rows[:, :4]), rows[:, 4].copy(),
                      rows[:, 5].astype(np.int32), np.ascontiguousarray(rows[:, 6:]))


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """Return (N, 4) centre-size boxes as corners, in float32 as ultralytics computes them.

    Example:
        >>> xywh_to_xyxy(np.array([[10, 20, 4, 6]], np.float32)).tolist()
        [[8.0, 17.0, 12.0, 23.0]]
    """
    xywh = np.asarray(xywh, np.float32)
    half = xywh[:, 2:] / np.float32(2)
    return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        max_keep: int | None = None) -> np.ndarray:
    """Return the indices of the boxes that greedy NMS keeps, best score first.

    Same rule as ``torchvision.ops.nms``: visit boxes by descending score (ties in input
    order), drop every later box whose IoU with a kept one exceeds ``iou_threshold``. Each
    step is one vectorised IoU of the kept box against the survivors; ``max_keep`` stops
    early (later boxes cannot change earlier picks).

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,).
        iou_threshold: IoU above which a box is suppressed.
        max_keep: return at most this many indices.

    Example:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
        >>> nms(b, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
        [0, 2]
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(c) for c in boxes[order].T)
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    alive = np.arange(len(order))
    limit = len(order) if max_keep is None else max_keep
    with np.errstate(divide="ignore", invalid="ignore"):
        while alive.size and len(keep) < limit:
            i, rest = alive[0], alive[1:]
            keep.append(int(i))
            w = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
            h = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
            inter = np.maximum(w, 0) * np.maximum(h, 0)
            # `not >` rather than `<=`: a NaN IoU (zero-area boxes) suppresses nothing, as in
            # torchvision.
            alive = rest[~(inter / (areas[i] + areas[rest] - inter) > iou_threshold)]
    return order[np.array(keep, np.int64)]


# -- masks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    """torch's bilinear sampling along one axis (``align_corners=False``, no antialiasing).

    Output sample ``k`` is ``(1 - w1[k]) * x[i0[k]] + w1[k] * x[i1[k]]``; ``i0`` and ``i1`` are
    non-decreasing. ``factor`` is the integer upscaling factor (output = factor * input
    samples), 0 if there is none.
    """

    i0: np.ndarray
    i1: np.ndarray
    w1: np.ndarray
    factor: int


@lru_cache(maxsize=64)
def _axis(out_size: int, in_size: int) -> _Axis:
    # src = (dst + 0.5) * in/out - 0.5, clamped at 0, in float32 as torch computes it for
    # float32 tensors (``area_pixel_compute_source_index``). Its x86 kernels are built with
    # FMA, which rounds once: the product in float64 then one rounding gives the same lambdas,
    # so thresholded masks agree pixel for pixel even where a sample falls on 0.5.
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    factor = out_size // in_size if out_size % in_size == 0 else 0
    return _Axis(i0, np.minimum(i0 + 1, in_size - 1), w1, factor)


def _resample(window: np.ndarray, top: int, left: int, ay: _Axis, ax: _Axis,
              rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Return output ``rows`` x ``cols`` of the bilinear resampling (ay, ax) of an image.

    ``window`` is the part of the image at (top, left) that holds every pixel those outputs
    read, so the work is proportional to the output region, not to the image.
    """
    window = window.astype(np.float32, copy=False)
    fy, fx = ay.factor, ax.factor
    if fy and fx:
        # Integer upscaling: cv2 samples at the same points as torch, 10x faster than numpy.
        # Its clamping at the window's edges never shows: the window holds every source.
        up = cv2.resize(window, (fx * window.shape[1], fy * window.shape[0]),
                        interpolation=cv2.INTER_LINEAR)
        return up[rows[0] - fy * top:rows[1] - fy * top, cols[0] - fx * left:cols[1] - fx * left]
    r, c = slice(*rows), slice(*cols)
    wy, wx = ay.w1[r, None], ax.w1[c]
    # Along rows first, then columns: torch's order, so rounding matches too.
    tmp = window[:, ax.i0[c] - left] * (1 - wx) + window[:, ax.i1[c] - left] * wx
    return tmp[ay.i0[r] - top] * (1 - wy) + tmp[ay.i1[r] - top] * wy


def bilinear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Return a 2-D float image resized to (h, w) as torch's bilinear interpolation does.

    ``F.interpolate(x, size, mode="bilinear", align_corners=False)`` (no antialiasing), which
    ultralytics uses for masks.

    Example:
        >>> bilinear_resize(np.array([[0.0, 1.0]]), (1, 4)).tolist()
        [[0.0, 0.25, 0.75, 1.0]]
    """
    ay, ax = _axis(size[0], image.shape[0]), _axis(size[1], image.shape[1])
    return _resample(np.asarray(image), 0, 0, ay, ax, (0, size[0]), (0, size[1]))


def decode_masks(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray,
                 box: Letterbox) -> tuple[np.ndarray, np.ndarray]:
    """Return the (K, H, W) bool image masks of N instances and which N were kept (K of them).

    Args:
        protos: (nm, mh, mw) mask prototypes.
        coeffs: (N, nm) mask coefficients.
        boxes: (N, 4) xyxy boxes in network-input pixels.
        box: the letterbox of the image.

    Returns:
        The masks of the instances whose mask is not empty at the network input, and the
        (N,) bool flags of those instances (ultralytics drops the others).
    """
    nm, mh, mw = protos.shape
    # One product for all instances, by einsum rather than `@`: a BLAS GEMM this size wakes
    # OpenBLAS threads that keep spinning and halve the speed of the next inference.
    logits = np.einsum("nc,cp->np", coeffs, protos.reshape(nm, -1)).reshape(-1, mh, mw)
    cropped = [_input_mask(m, b, box.input) for m, b in zip(logits, boxes)]
    keep = np.array([m is not None for m in cropped], bool)
    masks = np.zeros((int(keep.sum()), *box.image), bool)
    for out, (mask, row, col) in zip(masks, (m for m in cropped if m is not None)):
        _paste_to_image(mask, row, col, box, out)
    return masks, keep


def _span(start: float, stop: float, size: int) -> tuple[int, int]:
    # Pixel indices i with start <= i < stop (ultralytics' crop_mask rule), within 0..size.
    return max(math.ceil(start), 0), min(math.ceil(stop), size)


def _input_mask(logits: np.ndarray, xyxy: np.ndarray,
                shape: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
    """Return (mask inside the box at network-input resolution, its row, its column)."""
    r0, r1 = _span(float(xyxy[1]), float(xyxy[3]), shape[0])
    c0, c1 = _span(float(xyxy[0]), float(xyxy[2]), shape[1])
    if r0 >= r1 or c0 >= c1:
        return None
    ay, ax = _axis(shape[0], logits.shape[0]), _axis(shape[1], logits.shape[1])
    # Only the proto window that the box's pixels read from is resampled.
    p0, p1, q0, q1 = int(ay.i0[r0]), int(ay.i1[r1 - 1]) + 1, int(ax.i0[c0]), int(ax.i1[c1 - 1]) + 1
    values = _resample(logits[p0:p1, q0:q1], p0, q0, ay, ax, (r0, r1), (c0, c1))
    mask = values > 0  # logit > 0 is sigmoid > 0.5
    return (mask, r0, c0) if mask.any() else None


def _paste_to_image(mask: np.ndarray, row: int, col: int, box: Letterbox,
                    out: np.ndarray) -> None:
    """Resample a network-input mask at (row, col) into ``out`` (H, W), padding dropped."""
    (ch, cw), (top, left) = box.content, (box.top, box.left)
    a0, a1 = max(row - top, 0), min(row + mask.shape[0] - top, ch)
    b0, b1 = max(col - left, 0), min(col + mask.shape[1] - left, cw)
    if a0 >= a1 or b0 >= b1:
        return
    sub = mask[a0 + top - row:a1 + top - row, b0 + left - col:b1 + left - col]
    if box.content == box.image:  # scale 1: resampling is the identity
        out[a0:a1, b0:b1] = sub
        return
    ay, ax = _axis(box.image[0], ch), _axis(box.image[1], cw)
    # Image pixels that read any content pixel of the mask's rows a0..a1 and columns b0..b1.
    y0, y1 = int(np.searchsorted(ay.i1, a0)), int(np.searchsorted(ay.i0, a1))
    x0, x1 = int(np.searchsorted(ax.i1, b0)), int(np.searchsorted(ax.i0, b1))
    if y0 < y1 and x0 < x1:
        # Those pixels also read the zeros around the mask: one row/column more per side.
        pads = ((int(a0 > 0), int(a1 < ch)), (int(b0 > 0), int(b1 < cw)))
        window = np.pad(sub, pads)
        values = _resample(window, a0 - pads[0][0], b0 - pads[1][0], ay, ax, (y0, y1), (x0, x1))
        out[y0:y1, x0:x1] = values > 0.5
