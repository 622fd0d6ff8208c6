"""Segmenters: the OpenVINO YOLO runtime gives ultralytics' instances without ultralytics.

Every model here is built from an ultralytics yaml (no weights can be downloaded) and exported
to OpenVINO in ``tmp``. The default suite uses random-init exports whose BatchNorm statistics
are calibrated on rendered frames and whose class bias is raised, so scores spread over 0..1
and boxes and masks follow the image: real work for decoding, NMS and masks, in seconds. The
slow suite trains yolo11n-seg briefly on rendered cans and checks parity (FP32 and INT8) on
its real predictions. Parity is always on the same IR and image, with ultralytics recompiled
in f32 like ours (it leaves OpenVINO's bf16 default on where the CPU has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cv_autolabel.core.instances import Instances, mask_iou
from cv_autolabel.core.manifest import write_manifest
from cv_autolabel.core.segmenters import SEGMENTERS, Segmenter, create_segmenter
from cv_autolabel.core.segmenters.yolo_openvino import (
    Letterbox,
    YoloOpenVINOSegmenter,
    bilinear_resize,
    nms,
)
from cv_autolabel.errors import SegmenterError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.ground_truth import iter_frames_with_truth

REPO = Path(__file__).resolve().parents[2]
NAMES = ("red_can", "blue_can")
IMGSZ = 320
#: Logit bias of the random models' class heads: ~50 instances above conf 0.25 per frame.
CLASS_BIAS = -6.0
F32 = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
Sample = tuple[np.ndarray, Instances]
# Exporting traces with torch.jit, which torch flags as deprecated: noise here.
pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")]


# -- fixtures: rendered frames, exported models ------------------------------------------------
@pytest.fixture(scope="module")
def samples(sim_bag: Path) -> list[Sample]:
    """The 16 rendered 320x240 RGB frames of ``sim_bag`` with their ground-truth cans."""
    with BagReader(sim_bag) as bag:
        return [(frame.rgb, Instances.from_label_image(
            gt.labels, {i: r["class"] for i, r in gt.instances.items()}, NAMES, min_pixels=20))
            for frame, gt in iter_frames_with_truth(bag)]


@pytest.fixture(scope="module")
def offline() -> Iterator[None]:
    """Keep ultralytics off the network (it would fail anyway, but slowly)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YOLO_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def random_exports(tmp_path_factory: pytest.TempPathFactory, samples: list[Sample],
                   offline: None) -> dict[str, Path]:
    """OpenVINO exports (imgsz 320, 80 classes) of random-init yolo11n-seg and yolo26n-seg.

    yolo26 is exported with ``nms=False``: its end-to-end head, output (1, 300, 38).
    """
    root = tmp_path_factory.mktemp("random_models")
    images = [rgb for rgb, _ in samples]
    return {"yolo11": _random_export("yolo11n-seg.yaml", root, images),
            "yolo26": _random_export("yolo26n-seg.yaml", root, images, nms=False)}


def _random_export(cfg: str, root: Path, images: list[np.ndarray], **export_args: Any) -> Path:
    """Return the OpenVINO export of a seeded random-init model with varied predictions.

    Straight from its yaml a YOLO's activations fade through BatchNorm layers that hold
    identity statistics (every anchor gives the same box) and its class bias keeps every score
    near 1e-4; BatchNorm statistics of real frames and a higher class bias fix both.
    """
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO(cfg)
    _calibrate_batchnorm(yolo.model, images)
    head = yolo.model.model[-1]
    for branch in (head.cv3, getattr(head, "one2one_cv3", ())):
        for block in branch:
            last = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            with torch.no_grad():
                last.bias.fill_(CLASS_BIAS)
    checkpoint = root / f"{Path(cfg).stem}.pt"
    yolo.save(checkpoint)  # exports land beside the checkpoint, not in the working directory
    return Path(YOLO(checkpoint).export(format="openvino", imgsz=IMGSZ, verbose=False,
                                        **export_args))


def _calibrate_batchnorm(net: Any, images: list[np.ndarray]) -> None:
    import torch

    batch = np.stack([cv2.resize(im, (IMGSZ, IMGSZ)) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # one batch sets the statistics outright
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    """``reference(ir_dir, rgb, conf=..., ...)``: ultralytics' Instances for the same IR."""
    models: dict[tuple[Path, bool], Any] = {}

    def predict(ir_dir: Path, rgb: np.ndarray, *, f32: bool = True, **args: Any) -> Instances:
        if (ir_dir, f32) not in models:
            models[ir_dir, f32] = _ultralytics_model(ir_dir, f32=f32)
        result = models[ir_dir, f32].predict(rgb[..., ::-1], verbose=False, **args)[0]
        return _ultralytics_instances(result)

    yield predict


def _ultralytics_model(ir_dir: Path, *, f32: bool) -> Any:
    """Load an export with ultralytics, recompiled in f32 when asked."""
    import openvino as ov
    from ultralytics import YOLO

    model = YOLO(str(ir_dir), task="segment")
    model.predict(np.zeros((64, 64, 3), np.uint8), verbose=False)  # builds the predictor
    if f32:
        backend = model.predictor.model.backend
        backend.ov_compiled_model = ov.Core().compile_model(next(ir_dir.glob("*.xml")), "CPU",
                                                            F32)
    return model


def _ultralytics_instances(result: Any) -> Instances:
    """Convert a Results (masks at the letterbox size) as ultralytics maps masks to plot them."""
    from ultralytics.utils import ops

    names = tuple(result.names[i] for i in sorted(result.names))
    h, w = result.orig_shape
    if result.masks is None:
        return Instances.empty(h, w, names)
    masks = ops.scale_masks(result.masks.data[None].float(), (h, w))[0].numpy() > 0.5
    return Instances(masks, result.boxes.xyxy.numpy().astype(np.float32),
                     result.boxes.cls.numpy().astype(np.int32),
                     result.boxes.conf.numpy().astype(np.float32), names)


def assert_parity(ours: Instances, theirs: Instances, *, box_px: float = 1.0,
                  min_mask_iou: float = 0.9, score_tol: float = 1e-3) -> None:
    """Assert that two results hold the same instances (matched by class and box)."""
    assert ours.image_size == theirs.image_size and ours.class_names == theirs.class_names
    assert abs(len(ours) - len(theirs)) <= len(theirs) // 50, (len(ours), len(theirs))
    pairs = _match(ours, theirs)
    assert len(pairs) >= min(len(ours), len(theirs)) - len(theirs) // 50
    for i, j in pairs:
        assert np.abs(ours.boxes[i] - theirs.boxes[j]).max() <= box_px
        assert abs(ours.scores[i] - theirs.scores[j]) <= score_tol
        both_empty = not ours.masks[i].any() and not theirs.masks[j].any()
        assert both_empty or mask_iou(ours.masks[i:i + 1], theirs.masks[j:j + 1])[0, 0] > \
            min_mask_iou


def _match(ours: Instances, theirs: Instances) -> list[tuple[int, int]]:
    """Pair instances of the same class whose boxes agree within 2 px, best score first."""
    free = set(range(len(theirs)))
    pairs = []
    for i in range(len(ours)):
        close = [j for j in free if theirs.class_ids[j] == ours.class_ids[i]
                 and np.abs(theirs.boxes[j] - ours.boxes[i]).max() <= 2.0]
        if close:
            j = min(close, key=lambda k: np.abs(theirs.boxes[k] - ours.boxes[i]).sum())
            free.discard(j)
            pairs.append((i, j))
    return pairs


def _resized(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    return rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


# -- registry, protocol, light imports ---------------------------------------------------------
def test_registry_creates_a_yolo_segmenter_that_satisfies_the_protocol(
        random_exports: dict[str, Path]) -> None:
    segmenter = create_segmenter("yolo", model_dir=random_exports["yolo11"], conf=0.5)
    assert isinstance(segmenter, Segmenter) and isinstance(segmenter, YoloOpenVINOSegmenter)
    assert set(SEGMENTERS) == {"yolo"} and len(segmenter.class_names) == 80
    assert segmenter.name == f"yolo:{random_exports['yolo11'].name}"


@pytest.mark.parametrize(("name", "options", "message"), [
    ("sam", {}, "known segmenters: yolo"),
    ("yolo", {"model": "x"}, "bad options for the 'yolo' segmenter"),
    ("yolo", {"model_dir": "x", "conf": 1.5}, "conf and iou must be in 0..1"),
    ("yolo", {"model_dir": "x", "precision_hint": "fp32"}, "precision_hint must be one of"),
    ("yolo", {"model_dir": "x", "max_det": 0}, "max_det must be at least 1"),
])
def test_bad_names_and_options_raise(name: str, options: dict, message: str) -> None:
    with pytest.raises(SegmenterError, match=message):
        create_segmenter(name, **options)


def test_package_and_runtime_never_import_torch_or_ultralytics(
        random_exports: dict[str, Path]) -> None:
    code = (
        "import sys, numpy as np\n"
        "import cv_autolabel.core.segmenters as s\n"
        "heavy = {'torch', 'ultralytics', 'openvino'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        f"seg = s.create_segmenter('yolo', model_dir={str(random_exports['yolo11'])!r})\n"
        "seg.segment(np.full((240, 320, 3), 90, np.uint8))\n"
        "assert not {'torch', 'ultralytics'} & set(sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


# -- the numeric building blocks against the libraries ultralytics uses -----------------------
def test_nms_keeps_what_torchvision_keeps() -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(0, 60, (400, 2)).astype(np.float32)], 1)
    boxes[:5, 2:] = boxes[:5, :2]  # zero-area boxes: NaN IoU must suppress nothing
    scores = rng.choice(np.linspace(0.1, 0.9, 50), 400).astype(np.float32)  # many ties
    for iou in (0.3, 0.5, 0.7):
        want = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou)
        assert nms(boxes, scores, iou).tolist() == want.tolist()
    assert nms(boxes, scores, 0.5, max_keep=7).tolist() == want[:7].tolist()
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).tolist() == []


@pytest.mark.parametrize(("src", "dst"), [((80, 80), (320, 320)), ((213, 320), (200, 300)),
                                          ((240, 320), (480, 640)), ((7, 5), (3, 11))])
def test_bilinear_resize_matches_torch_interpolate(src: tuple[int, int],
                                                   dst: tuple[int, int]) -> None:
    import torch
    import torch.nn.functional as F

    image = np.random.default_rng(0).normal(size=src).astype(np.float32)
    want = F.interpolate(torch.from_numpy(image)[None, None], dst, mode="bilinear")[0, 0]
    np.testing.assert_allclose(bilinear_resize(image, dst), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (300, 200), (333, 517), (5, 900)])
def test_letterbox_is_pixel_identical_to_ultralytics(size: tuple[int, int]) -> None:
    from ultralytics.data.augment import LetterBox

    rgb = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), np.uint8)
    for target, auto in (((320, 320), False), ((640, 640), True)):
        box = Letterbox.fit(rgb.shape[:2], target, stride=32, auto=auto)
        want = LetterBox(target, auto=auto, stride=32)(image=rgb)
        assert box.input == want.shape[:2]
        assert np.array_equal(box.apply(rgb), want)


# -- parity with ultralytics on the same IR ----------------------------------------------------
@pytest.mark.parametrize("model", ["yolo11", "yolo26"])
@pytest.mark.parametrize(("conf", "size"), [(0.25, None), (0.05, None), (0.25, (640, 480)),
                                            (0.05, (300, 200))])
def test_instances_match_ultralytics_predict(model: str, conf: float,
                                             size: tuple[int, int] | None,
                                             random_exports: dict[str, Path],
                                             samples: list[Sample], reference: Any) -> None:
    segmenter = YoloOpenVINOSegmenter(random_exports[model], conf=conf, max_det=300)
    total = 0
    for rgb, _ in samples[::5]:
        image = _resized(rgb, size)
        ours = segmenter.segment(image)
        assert_parity(ours, reference(random_exports[model], image, conf=conf, iou=0.7,
                                      max_det=300))
        total += len(ours)
    assert total > 4  # instances to compare, not empty results


def test_max_det_and_iou_are_applied_like_ultralytics(random_exports: dict[str, Path],
                                                      samples: list[Sample],
                                                      reference: Any) -> None:
    rgb = samples[0][0]
    for max_det, iou in ((5, 0.7), (300, 0.3)):
        ours = YoloOpenVINOSegmenter(random_exports["yolo11"], conf=0.05, iou=iou,
                                     max_det=max_det).segment(rgb)
        theirs = reference(random_exports["yolo11"], rgb, conf=0.05, iou=iou, max_det=max_det)
        assert_parity(ours, theirs)
    assert len(ours) <= 300 and len(YoloOpenVINOSegmenter(
        random_exports["yolo11"], conf=0.05, max_det=5).segment(rgb)) == 5


@pytest.mark.parametrize("size", [(640, 480), (300, 200)])
def test_masks_and_boxes_are_in_the_input_image_frame(size: tuple[int, int],
                                                      random_exports: dict[str, Path],
                                                      samples: list[Sample]) -> None:
    segmenter = YoloOpenVINOSegmenter(random_exports["yolo11"])
    found = segmenter.segment(_resized(samples[0][0], size))
    w, h = size
    assert len(found) > 0 and found.masks.shape[1:] == (h, w) and found.image_size == (h, w)
    assert found.boxes[:, [0, 2]].max() <= w and found.boxes[:, [1, 3]].max() <= h
    assert found.boxes.min() >= 0 and found.scores.min() > 0.25
    timings = segmenter.timings
    assert timings.infer_ms > 0 and timings.total_ms > timings.infer_ms
    # A mask never leaves its box (ultralytics crops masks to the box).
    for mask, (x1, y1, x2, y2) in zip(found.masks, found.boxes):
        ys, xs = np.nonzero(mask)
        if ys.size:
            assert xs.min() >= np.floor(x1) - 1 and xs.max() <= np.ceil(x2)
            assert ys.min() >= np.floor(y1) - 1 and ys.max() <= np.ceil(y2)


def test_end_to_end_and_standard_heads_are_told_apart(random_exports: dict[str, Path],
                                                      samples: list[Sample]) -> None:
    standard = YoloOpenVINOSegmenter(random_exports["yolo11"])
    end2end = YoloOpenVINOSegmenter(random_exports["yolo26"])
    blob, _ = end2end.preprocess(samples[0][0])
    shapes = sorted(tuple(o.shape) for o in end2end.raw_infer(blob))
    assert shapes == [(1, 32, 80, 80), (1, 300, 38)]
    assert sorted(tuple(o.shape) for o in standard.raw_infer(blob)) == [(1, 32, 80, 80),
                                                                        (1, 116, 2100)]
    assert end2end._layout.end2end and not standard._layout.end2end


def test_fp32_runs_in_f32_unless_told_otherwise(random_exports: dict[str, Path]) -> None:
    segmenter = YoloOpenVINOSegmenter(random_exports["yolo11"], num_threads=1)
    assert segmenter.precision_hint == "f32" and not segmenter.int8
    assert segmenter.inference_precision == "f32"


@pytest.mark.parametrize("image", [np.zeros((240, 320), np.uint8),
                                   np.zeros((240, 320, 3), np.float32),
                                   np.zeros((0, 320, 3), np.uint8), "frame.png"])
def test_bad_images_raise(image: Any, random_exports: dict[str, Path]) -> None:
    with pytest.raises(SegmenterError, match="uint8 RGB"):
        YoloOpenVINOSegmenter(random_exports["yolo11"]).segment(image)


# -- broken model directories ------------------------------------------------------------------
def _truncate_bin(d: Path) -> None:
    path = next(d.glob("*.bin"))
    path.write_bytes(path.read_bytes()[:100_000])


def _rename_metadata(d: Path) -> None:
    (d / "metadata.yaml").rename(d / "metadata.bak")


@pytest.mark.parametrize(("breakage", "message"), [
    (lambda d: shutil.rmtree(d), "no YOLO model directory at .*broken"),
    (_rename_metadata, "broken: metadata.yaml is missing"),
    (lambda d: (d / "metadata.yaml").write_text("task: detect\nnames: {0: a}\n"),
     "describes no segmentation model"),
    (lambda d: next(d.glob("*.bin")).unlink(), r"broken: .*\.bin is missing"),
    (_truncate_bin, "broken: OpenVINO cannot"),
    (lambda d: next(d.glob("*.xml")).write_text("<net"), "broken: OpenVINO cannot read"),
    (lambda d: [p.unlink() for p in d.glob("*.xml")], "expected one OpenVINO .xml, found none"),
])
def test_missing_or_corrupt_model_files_raise(breakage: Any, message: str, tmp_path: Path,
                                              random_exports: dict[str, Path]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(random_exports["yolo11"], broken)
    breakage(broken)
    with pytest.raises(SegmenterError, match=message):
        create_segmenter("yolo", model_dir=broken)


def test_a_corrupt_model_with_a_manifest_names_the_file_that_changed(
        tmp_path: Path, random_exports: dict[str, Path]) -> None:
    model = tmp_path / "model"
    shutil.copytree(random_exports["yolo11"], model)
    write_manifest(model)
    _truncate_bin(model)
    with pytest.raises(SegmenterError, match=r"checksum manifest: .*\.bin has 100000 bytes"):
        create_segmenter("yolo", model_dir=model)


# -- slow: a briefly trained model, FP32 and INT8 ----------------------------------------------
TRAIN_IMGSZ = 160


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, samples: list[Sample],
            offline: None) -> dict[str, Path]:
    """yolo11n-seg trained 80 epochs on the 16 rendered frames (imgsz 160), exported FP32 + INT8.

    From scratch, 16 frames: enough for scores up to ~0.5 on red and blue cans, far from a
    good model; it gives parity real predictions to agree on.
    """
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("trained")
    data = write_yolo_dataset(root / "data", samples)
    YOLO("yolo11n-seg.yaml").train(
        data=str(data), epochs=80, imgsz=TRAIN_IMGSZ, batch=8, workers=0, plots=False,
        val=False, amp=False, device="cpu", project=str(root), name="train", seed=0,
        deterministic=True, mosaic=0.0, warmup_epochs=0, optimizer="AdamW", lr0=0.005,
        verbose=False)
    weights = YOLO(root / "train" / "weights" / "last.pt")
    return {"fp32": Path(weights.export(format="openvino", imgsz=TRAIN_IMGSZ, verbose=False)),
            "int8": Path(weights.export(format="openvino", imgsz=TRAIN_IMGSZ, int8=True,
                                        data=str(data), verbose=False))}


def write_yolo_dataset(root: Path, samples: list[Sample]) -> Path:
    """Write images, YOLO-seg polygon labels and a data.yaml (train = val); return its path."""
    for part in ("images", "labels"):
        (root / part / "train").mkdir(parents=True, exist_ok=True)
    for i, (rgb, truth) in enumerate(samples):
        cv2.imwrite(str(root / "images" / "train" / f"{i:04d}.png"), rgb[..., ::-1])
        (root / "labels" / "train" / f"{i:04d}.txt").write_text(_polygon_labels(truth))
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames:\n{names}")
    return data


def _polygon_labels(truth: Instances) -> str:
    h, w = truth.image_size
    lines = []
    for mask, cls in zip(truth.masks, truth.class_ids.tolist()):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        outline = max(contours, key=cv2.contourArea).reshape(-1, 2) / np.array([w, h])
        if len(outline) >= 3:
            lines.append(f"{cls} " + " ".join(f"{v:.5f}" for v in outline.ravel()))
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_trained_model_instances_match_ultralytics(trained: dict[str, Path],
                                                   samples: list[Sample],
                                                   reference: Any) -> None:
    segmenter = YoloOpenVINOSegmenter(trained["fp32"], conf=0.1)
    total = 0
    for rgb, _ in samples:
        ours = segmenter.segment(rgb)
        assert_parity(ours, reference(trained["fp32"], rgb, conf=0.1, iou=0.7, max_det=100))
        total += len(ours)
    assert total > len(samples)  # real predictions, not an empty comparison


@pytest.mark.slow
def test_trained_model_finds_the_cans(trained: dict[str, Path], samples: list[Sample]) -> None:
    segmenter = YoloOpenVINOSegmenter(trained["fp32"], conf=0.1)
    hits = 0
    for rgb, truth in samples:
        found = segmenter.segment(rgb)
        assert found.class_names == NAMES
        if len(found) and len(truth):
            iou = mask_iou(found.masks, truth.masks)
            same = found.class_ids[:, None] == truth.class_ids[None, :]
            hits += int(((iou > 0.5) & same).any(axis=0).sum())
    assert hits >= sum(len(t) for _, t in samples) // 4


@pytest.mark.slow
def test_int8_export_runs_quantised_and_matches_ultralytics(trained: dict[str, Path],
                                                            samples: list[Sample],
                                                            reference: Any) -> None:
    segmenter = YoloOpenVINOSegmenter(trained["int8"], conf=0.1)
    assert segmenter.int8 and segmenter.precision_hint is None
    for rgb, _ in samples[::4]:
        # Both compile the INT8 IR with OpenVINO's defaults: the same network, the same numbers.
        theirs = reference(trained["int8"], rgb, f32=False, conf=0.1, iou=0.7, max_det=100)
        assert_parity(segmenter.segment(rgb), theirs)


def test_replay_with_a_real_export_writes_detections(random_exports, sim_bag: Path,
                                                     tmp_path: Path) -> None:
    """The detector path end to end with a model: OpenVINO export -> replay -> output bag."""
    from cv_autolabel.ros.bag import BagReader
    from cv_autolabel.tools.replay import replay

    model_dir = next(iter(random_exports.values()))
    summary = replay(sim_bag, tmp_path / "out", segmenter="yolo", model=model_dir)
    assert summary["sets"] == 16 and summary["rejected"] == {}
    assert summary["objects"] > 0  # the calibrated random network finds instances
    with BagReader(tmp_path / "out") as bag:
        assert bag.topics["/cv_autolabel/detections_2d"][1] == 16
