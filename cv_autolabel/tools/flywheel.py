"""Iterations of the data flywheel on synthetic recordings, without a human or a network.

One iteration: record (sim) -> dedup -> active learning with the current student -> flush ->
"review" (the teacher's pre-annotations accepted as they are; a person corrects them in CVAT)
-> import as a new dataset version merged with the previous one -> prepare -> train (from
scratch, then fine-tuning the previous model) -> export INT8 with verification. The next
iteration's replay uses the new model as its student, so its disagreement rate measures the
model just trained; ``status`` shows both per iteration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cv_autolabel.core.annotation_queue import AnnotationQueue
from cv_autolabel.core.coco import flush
from cv_autolabel.core.cvat_import import load_cvat_zip
from cv_autolabel.core.dataset import DatasetVersion, create_version, merge_versions
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.tools.export import export
from cv_autolabel.tools.prepare import prepare
from cv_autolabel.tools.replay import replay_active_learning
from cv_autolabel.tools.train import train

CLASSES = ("red_can", "blue_can")


@dataclass
class FlywheelState:
    """What one iteration hands to the next."""

    version: DatasetVersion | None = None
    weights: Path | None = None
    student: Path | None = None


@dataclass(frozen=True)
class Teacher:
    """The active-learning teacher of the loop: the synthetic truth, or SAM3 with its weights."""

    kind: str = "groundtruth"
    weights: Path | None = None

    @property
    def prompts(self) -> dict[str, list[str]]:
        from cv_autolabel.core.teachers.sam3 import default_prompt  # noqa: PLC0415

        return {c: [default_prompt(c)] for c in CLASSES}  # "red can", "blue can"

    def replay(self, bag: Path, queue: Path, student: Path | None,
               workspace: Path) -> dict[str, Any]:
        """Dedup -> active learning over ``bag`` with this teacher (see replay_active_learning)."""
        return replay_active_learning(bag, queue, teacher=self.kind, teacher_weights=self.weights,
                                      prompts=self.prompts, model=student, workspace=workspace)


def iteration(n: int, bag: Path, ws: Path, state: FlywheelState, *, epochs: int, imgsz: int,
              say: Callable[[str], None], teacher: Teacher = Teacher()) -> dict[str, Any]:
    """Run iteration ``n`` on ``bag``; update ``state`` with its model; return a summary."""
    work = ws / f"iteration_{n}"
    al = teacher.replay(bag, work / "queue", state.student, ws)
    what = "no student yet" if state.student is None else f"student {state.student.name}"
    say(f"      active learning ({what}): {al['queued']} of {al['novel']} novel frames "
        f"queued, disagreement rate {al['disagreement_rate']:.2f}")
    with AnnotationQueue(work / "queue") as queue:
        batch = flush(queue, work / "cvat_batch.zip", class_names=CLASSES)
    if not batch.images:
        raise CvAutolabelError(f"iteration {n}: nothing to label in {bag}")
    state.version = _new_version(ws / "dataset", batch.zip_path, state.version)
    prep = prepare(state.version.path, work / "yolo")
    say(f"      dataset {state.version.version}: {prep['splits']['train']['images']} train images; "
        f"training {epochs} epochs ...")
    run = train(Path(prep["data_yaml"]), model=str(state.weights or "yolo11n-seg.yaml"),
                epochs=epochs, imgsz=imgsz, batch=8, out=ws / "runs", name=f"iteration_{n}",
                dataset_version=state.version.version, tracking="none", patience=epochs)
    state.weights = Path(run["best_weights"])
    state.student = _export(state.weights, Path(prep["data_yaml"]), imgsz, say)
    return {"iteration": n, "queued": al["queued"], "disagreement_rate": al["disagreement_rate"],
            "dataset_version": state.version.version, "map": run["metrics"]["mask_map50_95"],
            "student": str(state.student)}


def _new_version(root: Path, zip_path: Path, previous: DatasetVersion | None) -> DatasetVersion:
    imported = load_cvat_zip(zip_path)
    version = create_version(root, imported.coco, imported.images, source=str(zip_path),
                             class_names=list(CLASSES))
    return version if previous is None else merge_versions(root, [previous, version])


def _export(weights: Path, data_yaml: Path, imgsz: int, say: Callable[[str], None]) -> Path:
    try:
        report = export(weights, data_yaml, imgsz=imgsz)
    except CvAutolabelError as err:  # a weak early model may lose too much in INT8
        say(f"      INT8 export rejected ({err}); the student stays FP32")
        fp32 = sorted(weights.parent.parent.glob("export_*/fp32"))
        if not fp32:
            raise
        return fp32[-1]
    maps = report["map50_95"]
    say(f"      exported INT8 (val mask mAP50-95 FP32 {maps['fp32']:.3f}, INT8 {maps['int8']:.3f})")
    return Path(report["int8_dir"])
