"""``cv-autolabel demo``: the whole flywheel on synthetic recordings, on one machine.

1. The synthetic RGB-D world records three bags (one per iteration, and a last one to
   measure the final model); the detector replays the first with ground-truth masks and
   depth fusion.
2. Each iteration runs the online pipeline over its bag (dedup, then active learning with
   the ground-truth teacher and the current student), flushes the queue as a CVAT batch,
   accepts the teacher's pre-annotations (a person would correct them in CVAT), imports
   them as a new dataset version, prepares it, trains (from scratch, then fine-tuning) and
   exports INT8 with verification; the export becomes the next student.
3. The iteration table shows mAP rising and the student's disagreement with the teacher
   falling; ``cv-autolabel status`` shows it again later (same workspace).

No weights, no network: everything is built from configs and the synthetic world.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from cv_autolabel.tools.flywheel import FlywheelState, Teacher, iteration
from cv_autolabel.tools.replay import replay
from cv_autolabel.tools.sim.run import SimConfig, simulate
from cv_autolabel.tools.status import iterations, plot, table


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(workspace: Path, *, frames: int = 300, seed: int = 0, width: int = 320,
             height: int = 240, epochs: int = 40, imgsz: int = 320,
             rounds: int = 2, teacher: Teacher = Teacher()) -> dict[str, Any]:
    """Run the demo in ``workspace`` (its previous demo results are replaced).

    ``teacher`` is the ground truth by default; ``Teacher("sam3", weights)`` labels with SAM3
    instead (slow on a CPU: seconds per frame).

    Raises:
        TeacherError: SAM3 was asked for and its weights are not there (checked first).
    """
    from cv_autolabel.cli import progress_bar  # noqa: PLC0415

    if teacher.kind == "sam3":  # found (or refused) before anything is recorded
        from cv_autolabel.core.teachers.sam3 import check_weights  # noqa: PLC0415

        teacher = dataclasses.replace(teacher, weights=check_weights(teacher.weights))
    started = time.perf_counter()
    _reset(workspace)
    bags = []
    for n in range(1, rounds + 2):
        bag = workspace / "recordings" / f"bag_{n}"
        _say(f"[record {n}/{rounds + 1}] simulating {frames} RGB-D frames of a bin of cans ...")
        with progress_bar(frames, "sim") as advance:
            simulate(SimConfig(frames=frames, seed=seed + n, width=width, height=height), bag,
                     progress=advance)
        bags.append(bag)
    _say("[detector] replaying recording 1 with ground-truth masks + depth fusion ...")
    rp = replay(bags[0], workspace / "recordings" / "bag_1_detections", segmenter="gt")
    _say(f"      {rp['objects']} objects located in 3D, {rp['latency_ms_p50']} ms per frame")
    state, results = FlywheelState(), []
    for n in range(1, rounds + 1):
        _say(f"[iteration {n}/{rounds}] dedup -> active learning -> CVAT batch -> import -> "
             "prepare -> train -> export")
        results.append(iteration(n, bags[n - 1], workspace, state, epochs=epochs, imgsz=imgsz,
                                 say=_say, teacher=teacher))
    final = teacher.replay(bags[-1], workspace / "final_check" / "queue", state.student,
                           workspace)
    return _report(workspace, results, final, round(time.perf_counter() - started, 1))


def _reset(workspace: Path) -> None:
    # Only what the demo itself wrote: a user's other runs in the workspace stay.
    demo_runs = [p.relative_to(workspace) for p in workspace.glob("runs/iteration_*")]
    for name in ["recordings", "dataset", "final_check", "replays.jsonl", "status_map.png",
                 *demo_runs, *(f"iteration_{n}" for n in range(1, 10))]:
        target = workspace / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    workspace.mkdir(parents=True, exist_ok=True)


def _report(workspace: Path, results: list[dict[str, Any]], final: dict[str, Any],
            seconds: float) -> dict[str, Any]:
    items = iterations(workspace)
    _say("\n" + table(items))
    figure = plot(items, workspace / "status_map.png")
    _say(f"\ndone in {seconds} s. mAP plot: {figure}. `cv-autolabel status` shows this table "
         "again; the last model is at " + str(results[-1]["student"] if results else "-"))
    return {"workspace": str(workspace), "iterations": items, "rounds": results,
            "final_disagreement": final.get("mean_score"), "plot": str(figure),
            "seconds": seconds}
