"""Detector benchmark: our OpenVINO YOLO-seg runtime vs the raw network and vs ultralytics.

One model (yolo11n-seg, imgsz 640, 2 classes), the same synthetic 640x480 frames, one run:

- **raw**: the compiled OpenVINO model alone on an already preprocessed blob (the floor);
- **ours**: ``YoloOpenVINOSegmenter.segment``: letterbox + infer + decode/NMS + full-size masks;
- **ultralytics**: ``YOLO(ir_dir).predict(bgr)`` per frame on the same IR, once with the
  config ultralytics compiles by itself (no precision hint: bf16 on CPUs that have it) and
  once recompiled with our precision hint, so precision is not what the ratio measures.

Rows for the FP32 export (``INFERENCE_PRECISION_HINT=f32``) and, unless ``--no-int8``, an
INT8 export (ultralytics ``int8=True``: NNCF on synthetic frames; compiled with OpenVINO's
defaults). Targets: ours <= 1.3x raw and <= 0.6x ultralytics (p50).

No pretrained weights exist on these machines. Unless ``--model DIR`` names an export, the
model is yolo11n-seg from its yaml with random weights, BatchNorm statistics calibrated on the
frames and a class bias that gives a realistic number of instances per frame (printed): the
compute per frame is that of a real model, the instances are not meaningful.

Run:  .venv/bin/python benchmarks/detector/bench_detector.py [--frames 60] [--no-int8]
``benchmark(..., after_segment=fn)`` times ``fn(rgb, instances)`` (e.g. depth fusion) after
our segmentation as an extra row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.segmenters.yolo_openvino import YoloOpenVINOSegmenter
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.ground_truth import iter_frames_with_truth
from cv_autolabel.tools.machine import cpu_model
from cv_autolabel.tools.sim.run import SimConfig, simulate

HERE = Path(__file__).resolve().parent
NAMES = ("red_can", "blue_can")
IMGSZ = 640
AfterSegment = Callable[[np.ndarray, Instances], object]


# -- inputs: frames and models -----------------------------------------------------------------
def sim_samples(cache: Path, frames: int, seed: int) -> list[tuple[np.ndarray, Instances]]:
    """Return rendered 640x480 RGB frames with their ground truth (rendered once, cached)."""
    bag = cache / f"sim_640x480_seed{seed}_{frames}"
    if not bag.exists():
        simulate(SimConfig(frames=frames, width=640, height=480, seed=seed), bag)
    with BagReader(bag) as reader:
        return [(frame.rgb, Instances.from_label_image(
            gt.labels, {i: r["class"] for i, r in gt.instances.items()}, NAMES, min_pixels=20))
            for frame, gt in iter_frames_with_truth(reader)]


def build_exports(cache: Path, samples: list[tuple[np.ndarray, Instances]], class_bias: float,
                  int8: bool) -> dict[str, Path]:
    """Export the benchmark model to OpenVINO FP32 (and INT8); reuse earlier exports."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO  # noqa: PLC0415

    work = cache / f"yolo11n-seg-random-bias{class_bias:g}"
    checkpoint = work / "model.pt"
    if not checkpoint.exists():
        work.mkdir(parents=True, exist_ok=True)
        random_model(checkpoint, [rgb for rgb, _ in samples], class_bias)
    exports = {"fp32": work / "model_openvino_model"}
    if not exports["fp32"].exists():
        YOLO(checkpoint).export(format="openvino", imgsz=IMGSZ, verbose=False)
    if int8:
        exports["int8"] = work / "model_int8_openvino_model"
        if not exports["int8"].exists():
            data = write_dataset(work / "calibration", samples)
            YOLO(checkpoint).export(format="openvino", imgsz=IMGSZ, int8=True, data=str(data),
                                    verbose=False)
    return exports


def random_model(checkpoint: Path, images: list[np.ndarray], class_bias: float) -> None:
    """Save a seeded random-init 2-class yolo11n-seg whose predictions vary with the image.

    From the yaml alone every anchor predicts the same box (BatchNorm holds identity
    statistics) with a score near 1e-4; statistics of real frames and a higher class bias
    give boxes, masks and scores that follow the image.
    """
    import torch  # noqa: PLC0415
    from ultralytics import YOLO  # noqa: PLC0415
    from ultralytics.nn.tasks import SegmentationModel  # noqa: PLC0415

    torch.manual_seed(0)
    yolo = YOLO("yolo11n-seg.yaml")
    args = yolo.model.args  # the task and settings ultralytics attaches; a bare model has none
    yolo.model = SegmentationModel("yolo11n-seg.yaml", nc=len(NAMES), verbose=False)
    yolo.model.args, yolo.model.task = args, "segment"
    yolo.model.names = dict(enumerate(NAMES))
    batch = np.stack([cv2.resize(im, (IMGSZ, IMGSZ)) for im in images[:16]])
    bns = [m for m in yolo.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # one batch sets the statistics outright
    yolo.model.train()
    with torch.no_grad():
        yolo.model(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255)
        for block in yolo.model.model[-1].cv3:
            [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)][-1].bias.fill_(
                class_bias)
    yolo.model.eval()
    yolo.save(checkpoint)


def write_dataset(root: Path, samples: list[tuple[np.ndarray, Instances]]) -> Path:
    """Write frames + YOLO-seg polygon labels + data.yaml (INT8 calibration set)."""
    for part in ("images", "labels"):
        (root / part / "val").mkdir(parents=True, exist_ok=True)
    for i, (rgb, truth) in enumerate(samples):
        cv2.imwrite(str(root / "images" / "val" / f"{i:04d}.png"), rgb[..., ::-1])
        lines = []
        for mask, cls in zip(truth.masks, truth.class_ids.tolist()):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            pts = max(contours, key=cv2.contourArea).reshape(-1, 2) / mask.shape[::-1]
            if len(pts) >= 3:
                lines.append(f"{cls} " + " ".join(f"{v:.5f}" for v in pts.ravel()))
        (root / "labels" / "val" / f"{i:04d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/val\nval: images/val\nnames:\n{names}")
    return data


# -- measurements ------------------------------------------------------------------------------
def measure(runners: dict[str, Callable[[int], object]], n_items: int,
            warmup: int) -> dict[str, np.ndarray]:
    """Return per-call wall times (ms) of every runner over items 0..n_items-1.

    Runners take turns call by call, in rotating order: on a shared 2-vCPU machine whose speed
    drifts by 2x within a minute, only interleaving keeps the ratios honest. The first
    ``warmup`` turns are untimed.
    """
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    for k in range(-warmup, n_items):
        shift = k % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            runners[name](k % n_items)
            if k >= 0:
                times[name].append((time.perf_counter() - started) * 1e3)
    return {name: np.array(t) for name, t in times.items()}


def ultralytics_model(ir_dir: Path, precision_hint: str | None) -> tuple[Any, str]:
    """Load an export with ultralytics; recompile with ``precision_hint`` when given.

    Returns the model and the precision its compiled network reports.
    """
    import openvino as ov  # noqa: PLC0415
    from ultralytics import YOLO  # noqa: PLC0415

    model = YOLO(str(ir_dir), task="segment")
    model.predict(np.zeros((480, 640, 3), np.uint8), verbose=False)  # builds the predictor
    backend = model.predictor.model.backend
    if precision_hint:
        backend.ov_compiled_model = ov.Core().compile_model(
            next(ir_dir.glob("*.xml")), "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision_hint})
    value = backend.ov_compiled_model.get_property("INFERENCE_PRECISION_HINT")
    return model, str(value.to_string() if hasattr(value, "to_string") else value)


def benchmark(label: str, ir_dir: Path, frames: list[np.ndarray], *, conf: float, warmup: int,
              repeats: int, after_segment: AfterSegment | None = None) -> list[dict[str, Any]]:
    """Measure raw, ours (and ours + ``after_segment``) and ultralytics on one export."""
    ours = YoloOpenVINOSegmenter(ir_dir, conf=conf)
    blobs = [ours.preprocess(rgb)[0] for rgb in frames]
    bgr = [np.ascontiguousarray(rgb[..., ::-1]) for rgb in frames]
    n = len(frames)
    stages: list[tuple[float, float, float]] = []

    def segment(i: int) -> Instances:
        found = ours.segment(frames[i % n])
        stages.append((ours.timings.preprocess_ms, ours.timings.infer_ms,
                       ours.timings.postprocess_ms))
        return found

    runners: dict[str, Callable[[int], object]] = {
        "raw network": lambda i: ours.raw_infer(blobs[i % n]), "ours segment()": segment}
    precision = {"raw network": ours.inference_precision,
                 "ours segment()": ours.inference_precision}
    if after_segment is not None:
        runners["ours + after_segment"] = lambda i: after_segment(frames[i % n], segment(i))
        precision["ours + after_segment"] = ours.inference_precision
    hints = {"ultralytics (own config)": None, "ultralytics (our hint)": ours.precision_hint}
    for name, hint in hints.items():
        if name.endswith("(our hint)") and hint is None:
            continue  # INT8: our hint is OpenVINO's default, the same as ultralytics' own
        model, precision[name] = ultralytics_model(ir_dir, hint)
        runners[name] = lambda i, m=model: m.predict(bgr[i % n], conf=conf, verbose=False)
    times = measure(runners, n * repeats, warmup)
    counts = float(np.mean([len(ours.segment(rgb)) for rgb in frames]))
    rows = [_row(f"{label} {name}", t, precision[name]) for name, t in times.items()]
    rows[1].update(_stages(np.array(stages)), instances_per_frame=counts)
    return rows


def _stages(stages: np.ndarray) -> dict[str, Any]:
    p50 = np.percentile(stages, 50, axis=0)
    return {"stages_p50_ms": {"preprocess": float(p50[0]), "infer": float(p50[1]),
                              "postprocess": float(p50[2])}}


def _row(path: str, times: np.ndarray, precision: str) -> dict[str, Any]:
    return {"path": path, "precision": precision, "n": len(times),
            "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "mean_ms": float(times.mean())}


# -- report ------------------------------------------------------------------------------------
def report(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    """Print the table with ratios (p50) and write ``out`` as JSON."""
    print(f"\n{'path':<40} {'precision':<18} {'p50':>8} {'p99':>8}  {'vs raw':>7} "
          f"{'vs ultra(own)':>13} {'vs ultra(hint)':>14}")
    for r in rows:
        label = r["path"].split(" ")[0]
        ref = {k: next((x["p50_ms"] for x in rows if x["path"] == f"{label} {k}"), None)
               for k in ("raw network", "ultralytics (own config)", "ultralytics (our hint)")}
        ratios = [f"{r['p50_ms'] / v:.2f}x" if v else "-" for v in ref.values()]
        print(f"{r['path']:<40} {r['precision']:<18} {r['p50_ms']:>6.1f}ms {r['p99_ms']:>6.1f}ms  "
              f"{ratios[0]:>7} {ratios[1]:>13} {ratios[2]:>14}")
        if "stages_p50_ms" in r:
            s = r["stages_p50_ms"]
            print(f"{'':<40} stages p50: pre {s['preprocess']:.2f} ms, infer {s['infer']:.2f} "
                  f"ms, post {s['postprocess']:.2f} ms; {r['instances_per_frame']:.1f} "
                  "instances/frame")
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


def _fusion_stage() -> AfterSegment:
    """Depth fusion on a noisy 0.6 m table-like depth map: the detector's last stage."""
    from cv_autolabel.core.fusion import fuse  # noqa: PLC0415
    from cv_autolabel.tools.sim.world import default_intrinsics  # noqa: PLC0415

    rng = np.random.default_rng(0)
    k = default_intrinsics(640, 480)
    depth = (0.6 + 0.002 * rng.normal(size=(480, 640))).astype(np.float32)

    def stage(rgb: np.ndarray, instances) -> None:
        fuse(instances, depth, k)

    return stage


def main(argv: list[str] | None = None, after_segment: AfterSegment | None = None) -> None:
    """Run the benchmark from the command line (``after_segment``: optional extra stage)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="distinct 640x480 frames")
    ap.add_argument("--repeats", type=int, default=2, help="passes over the frames")
    ap.add_argument("--warmup", type=int, default=5, help="untimed turns before timing")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--class-bias", type=float, default=-5.0,
                    help="class logit bias of the random model (sets instances per frame)")
    ap.add_argument("--model", type=Path, help="benchmark this OpenVINO export instead")
    ap.add_argument("--no-int8", action="store_true", help="skip the INT8 export")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cv_bench")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--no-fusion", action="store_true",
                    help="skip the 'ours + depth fusion' row (the detector's full per-frame path)")
    args = ap.parse_args(argv)
    if after_segment is None and not args.no_fusion:
        after_segment = _fusion_stage()
    samples = sim_samples(args.cache, args.frames, seed=300)
    if args.model:
        exports = {"model": args.model}
    else:
        exports = build_exports(args.cache, samples, args.class_bias, not args.no_int8)
    frames = [rgb for rgb, _ in samples]
    rows = []
    for label, ir_dir in exports.items():
        rows += benchmark(label, ir_dir, frames, conf=args.conf, warmup=args.warmup,
                          repeats=args.repeats, after_segment=after_segment)
        print(json.dumps(rows[-1]), flush=True)
    import openvino as ov  # noqa: PLC0415

    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "openvino": ov.__version__,
            "imgsz": IMGSZ, "frames": len(frames), "conf": args.conf,
            "models": {k: str(v) for k, v in exports.items()}}
    report(rows, meta, args.out)


if __name__ == "__main__":
    main()
