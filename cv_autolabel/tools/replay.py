"""``cv-autolabel replay``: run the robot's components over a bag, write their outputs to a bag.

The detector component is fed the recorded colour/depth/camera_info sets exactly as the node
would receive them (ApproximateTimeSynchronizer semantics, recorded order) and every message
it publishes is written, under ``--namespace``, at the log time its input set completed. With
``--segmenter gt`` the synthetic bag's ground-truth masks stand in for a model, to check depth
fusion and picking without a trained network.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cv_autolabel.components.detector import OUTPUT_TYPES, DetectorComponent
from cv_autolabel.core.model_slot import ModelSlot
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader, BagWriter
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.frames import iter_message_sets
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter
from cv_autolabel.ros.topics import CameraTopics

SEGMENTERS = ("yolo", "gt")


def make_segment_fn(kind: str, *, model: Path | None, bag: Path,
                    conf: float = 0.25) -> tuple[Callable, str]:
    """Return (frame -> Instances, description) for ``--segmenter``."""
    if kind == "gt":
        with BagReader(bag) as reader:
            truth = GroundTruthSegmenter.from_bag(reader)
        return truth, f"ground truth ({', '.join(truth.class_names)})"
    if kind != "yolo":
        raise CvAutolabelError(f"unknown segmenter {kind!r}; use one of {SEGMENTERS}")
    if model is None:
        raise CvAutolabelError("--model DIR is required with --segmenter yolo (an OpenVINO "
                               "export directory), or use --segmenter gt on a synthetic bag")
    from cv_autolabel.core.segmenters import create_segmenter  # noqa: PLC0415

    slot = ModelSlot(model, lambda d: create_segmenter("yolo", model_dir=d, conf=conf),
                     require_manifest=False)
    return (lambda frame: slot.current.segment(frame.rgb)), f"model {slot.model_dir}"


def replay(bag_path: Path, out: Path, *, segmenter: str = "yolo", model: Path | None = None,
           topics: CameraTopics = CameraTopics(), slop_s: float = 0.05,
           namespace: str = "/detector", storage: str = "mcap", overwrite: bool = False,
           debug_image: bool = True, progress: Callable[[int], None] | None = None,
           warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the detector over ``bag_path`` and write its outputs to the new bag ``out``."""
    if topics.depth is None or topics.info is None:
        raise CvAutolabelError("the detector needs depth and camera_info topics")
    segment, what = make_segment_fn(segmenter, model=model, bag=bag_path)
    factory = RosbagsMessageFactory()
    component = DetectorComponent(segment, factory, debug_image=debug_image)
    ns = "/" + namespace.strip("/")
    started = time.perf_counter()
    with BagReader(bag_path) as reader, BagWriter(out, storage=storage,
                                                  overwrite=overwrite) as writer:
        for log_time, color, depth, info in iter_message_sets(reader, topics, slop_s=slop_s):
            outputs = component.on_messages(color, depth, info)
            for key, msg in (outputs or {}).items():
                writer.write(f"{ns}/{key}", OUTPUT_TYPES[key], msg, log_time)
            if progress:
                progress(1)
        damage, counts = reader.damage, dict(writer.counts)
    if damage and warn:
        warn(f"bag {bag_path} is damaged; replayed the readable prefix: {damage}")
    stats = component.stats.as_dict()
    return {"bag": str(bag_path), "out": str(out), "segmenter": what, **stats,
            "messages": counts, "seconds": round(time.perf_counter() - started, 2)}
