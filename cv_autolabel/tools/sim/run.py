"""``cv-autolabel sim``: render the bin world along a camera path into a real ROS 2 bag."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cv_autolabel.core.geometry import matrix_to_quat
from cv_autolabel.errors import SimulationError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagWriter
from cv_autolabel.ros.builders import detection3d, header, transform_stamped
from cv_autolabel.ros.camera_info import camera_info_from_intrinsics
from cv_autolabel.ros.factory import RosbagsMessageFactory
from cv_autolabel.ros.image import numpy_to_image
from cv_autolabel.tools.sim import assets
from cv_autolabel.tools.sim.camera_path import survey_path
from cv_autolabel.tools.sim.sensor import noisy_depth_mm, noisy_rgb
from cv_autolabel.tools.sim.world import BinWorld, ObjectTruth, Render, default_intrinsics

#: Bags start at 2026-01-01T00:00:00Z so stamps look like a real recording's.
EPOCH_NS = 1_767_225_600 * 1_000_000_000
WORLD_FRAME = "world"


@dataclass(frozen=True)
class SimConfig:
    """Settings of one synthetic recording (see ``cv-autolabel sim --help``)."""

    frames: int = 300
    width: int = 640
    height: int = 480
    fps: float = 30.0
    seed: int = 0
    classes: tuple[str, ...] = assets.DEFAULT_CLASSES
    distractors: tuple[str, ...] = assets.DEFAULT_DISTRACTORS
    per_class: int = 4
    n_distractors: int = 3
    scenes: int | None = None
    pick_probability: float = 0.35
    storage: str = "mcap"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise SimulationError for settings the world cannot honour."""
        if self.frames < 1:
            raise SimulationError("--frames must be at least 1")
        if not (32 <= self.width <= 4096 and 32 <= self.height <= 4096):
            raise SimulationError(f"image size {self.width}x{self.height} is outside 32..4096")
        if self.fps <= 0:
            raise SimulationError("--fps must be positive")
        if not self.classes:
            raise SimulationError("--classes needs at least one class")
        try:
            assets.resolve_classes(list(self.classes) + list(self.distractors))
        except KeyError as err:
            raise SimulationError(str(err.args[0])) from err

    @property
    def n_scenes(self) -> int:
        return self.scenes or max(1, self.frames // 150)


def simulate(config: SimConfig, out: Path, *, overwrite: bool = False,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Render ``config.frames`` frames into a new bag at ``out``; return a summary."""
    config.validate()
    rng = np.random.default_rng(config.seed)
    k = default_intrinsics(config.width, config.height)
    path = survey_path(config.frames, rng, center=np.array([0.0, 0.0, 0.05]))
    scene_starts = set(np.linspace(0, config.frames, config.n_scenes, endpoint=False).astype(int))
    started = time.perf_counter()
    picks = 0
    with BinWorld(assets.resolve_classes(config.classes),
                  assets.resolve_classes(config.distractors),
                  per_class=config.per_class, n_distractors=config.n_distractors,
                  intrinsics=k, rng=rng) as world, \
            BagWriter(out, storage=config.storage, overwrite=overwrite) as bag:
        writer = _FrameWriter(bag, k, rng, config.fps)
        for i in range(config.frames):
            if i in scene_starts:
                world.new_scene()
            elif _mid_pause(path.paused, i) and rng.random() < config.pick_probability:
                picks += world.pick_one() is not None
            writer.write(i, world.render(path.eye[i], path.target[i]))
            if progress:
                progress(1)
        counts = dict(bag.counts)
    return {
        "bag": str(out), "storage": config.storage, "frames": config.frames,
        "width": config.width, "height": config.height, "seed": config.seed,
        "classes": list(config.classes), "distractors": list(config.distractors),
        "scenes": config.n_scenes, "picks": picks, "paused_frames": int(path.paused.sum()),
        "messages": counts, "seconds": round(time.perf_counter() - started, 2),
    }


def _mid_pause(paused: np.ndarray, i: int) -> bool:
    if not paused[i]:
        return False
    start = i
    while start > 0 and paused[start - 1]:
        start -= 1
    end = i
    while end + 1 < len(paused) and paused[end + 1]:
        end += 1
    return i == (start + end) // 2 and end > start


class _FrameWriter:
    """Turn renders into the messages a RealSense driver plus a truth oracle would publish."""

    def __init__(self, bag: BagWriter, k: Any, rng: np.random.Generator, fps: float) -> None:
        self.bag, self.k, self.rng, self.fps = bag, k, rng, fps
        self.f = RosbagsMessageFactory()

    def write(self, index: int, render: Render) -> None:
        f, rng, k = self.f, self.rng, self.k
        stamp = EPOCH_NS + round(index * 1e9 / self.fps)
        # Colour and aligned depth come from different sensors: a few ms apart, like a D435.
        depth_stamp = stamp + int(rng.integers(-3_000_000, 3_000_001))
        color_log = stamp + int(rng.integers(8_000_000, 20_000_000))
        depth_log = depth_stamp + int(rng.integers(10_000_000, 25_000_000))
        rgb = noisy_rgb(render.rgb, rng)
        depth = noisy_depth_mm(render.depth_m, render.rgb, rng)
        frame = T.OPTICAL_FRAME
        out = [
            (T.COLOR_IMAGE, "sensor_msgs/msg/Image",
             numpy_to_image(rgb, "rgb8", factory=f, stamp_ns=stamp, frame_id=frame), color_log),
            (T.COLOR_INFO, "sensor_msgs/msg/CameraInfo",
             camera_info_from_intrinsics(k, factory=f, stamp_ns=stamp, frame_id=frame),
             color_log),
            (T.DEPTH_IMAGE, "sensor_msgs/msg/Image",
             numpy_to_image(depth, "16UC1", factory=f, stamp_ns=depth_stamp, frame_id=frame),
             depth_log),
            (T.DEPTH_INFO, "sensor_msgs/msg/CameraInfo",
             camera_info_from_intrinsics(k, factory=f, stamp_ns=depth_stamp, frame_id=frame),
             depth_log),
            (T.GT_LABELS, "sensor_msgs/msg/Image",
             numpy_to_image(render.labels, "mono16", factory=f, stamp_ns=stamp, frame_id=frame),
             color_log),
            (T.GT_INSTANCES, "std_msgs/msg/String", self._instances(stamp, render), color_log),
            (T.GT_OBJECTS, "vision_msgs/msg/Detection3DArray", self._objects(stamp, render),
             color_log),
            (T.TF, "tf2_msgs/msg/TFMessage", self._tf(stamp, render), color_log),
        ]
        for topic, msgtype, msg, log_time in sorted(out, key=lambda m: m[3]):
            self.bag.write(topic, msgtype, msg, log_time)

    def _instances(self, stamp: int, render: Render) -> Any:
        # Isaac-Sim style: the class of every instance id in the label image, as JSON.
        visible = [_instance_record(o) for o in render.objects if o.visible_pixels]
        return self.f.make("std_msgs/msg/String",
                           data=json.dumps({"stamp_ns": stamp, "instances": visible}))

    def _objects(self, stamp: int, render: Render) -> Any:
        hdr = header(self.f, stamp, T.OPTICAL_FRAME)
        dets = [detection3d(self.f, hdr, class_id=o.class_name, score=1.0, position=o.position,
                            quaternion=o.orientation, size=o.size, object_id=str(o.instance_id))
                for o in render.objects]
        return self.f.make("vision_msgs/msg/Detection3DArray", header=hdr, detections=dets)

    def _tf(self, stamp: int, render: Render) -> Any:
        tf = transform_stamped(self.f, header(self.f, stamp, WORLD_FRAME), T.OPTICAL_FRAME,
                               render.camera_position, matrix_to_quat(render.camera_rotation))
        return self.f.make("tf2_msgs/msg/TFMessage", transforms=[tf])


def _instance_record(o: ObjectTruth) -> dict[str, Any]:
    return {"id": o.instance_id, "class": o.class_name, "target": o.target,
            "visible_pixels": o.visible_pixels, "visibility": round(o.visibility, 4),
            "bbox": list(o.bbox) if o.bbox else None}
