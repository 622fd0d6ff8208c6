"""``cv-autolabel status``: the flywheel's iterations, in the spirit of YMIR.

An iteration is one trained model: the dataset version it learnt from, how many labelled
images that was, its validation mask mAP50-95, and the disagreement rate of the latest
active-learning replay made with it as the student (``disagreement``: the mean share of
objects it gets wrong against the teacher; ``disagreement_rate``: the share of frames queued).
``train`` records a run under
``<workspace>/runs/<name>/cv_autolabel_run.json``; ``replay --active-learning`` records its
disagreement rate in ``<workspace>/replays.jsonl``. Status reads both, prints a table and
plots mAP against labelled images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cv_autolabel.core.fsio import write_bytes_atomic

DEFAULT_WORKSPACE = Path("autolabel_workspace")
RUN_FILE = "cv_autolabel_run.json"
REPLAYS = "replays.jsonl"


def record_replay(workspace: Path, summary: dict[str, Any]) -> None:
    """Append an active-learning replay's disagreement rate to the workspace ledger."""
    workspace.mkdir(parents=True, exist_ok=True)
    entry = {"time": time.time(), "student": summary.get("student"),
             "student_weights": summary.get("student_weights"),
             "disagreement_rate": summary.get("disagreement_rate"),
             "mean_score": summary.get("mean_score"),
             "frames": summary.get("frames"), "queued": summary.get("queued")}
    with open(workspace / REPLAYS, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def iterations(workspace: Path) -> list[dict[str, Any]]:
    """Return the iterations of ``workspace``, oldest first."""
    runs = []
    for path in sorted((workspace / "runs").glob(f"*/{RUN_FILE}")):
        try:
            runs.append((path.stat().st_mtime, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # a run still being written, or damaged: not an iteration yet
    runs.sort(key=lambda r: r[0])
    replays = _replays(workspace)
    return [_iteration(i, run, replays) for i, (_, run) in enumerate(runs, 1)]


def _replays(workspace: Path) -> list[dict[str, Any]]:
    path = workspace / REPLAYS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash
    return out


def _iteration(index: int, run: dict[str, Any], replays: list[dict[str, Any]]) -> dict[str, Any]:
    weights = str(run.get("best_weights") or "")
    model_dir = str(Path(weights).parent.parent) if weights else ""
    # A replay belongs to the run whose directory holds its model, or the weights that
    # model was exported from (a published copy elsewhere, e.g. on the robot).
    mine = [r for r in replays if model_dir and any(
        r.get(k) and Path(r[k]).is_relative_to(model_dir) for k in ("student_weights", "student"))]
    metrics = run.get("metrics") or {}
    labelled = run.get("labelled_images")
    if labelled is None and run.get("data_yaml"):
        labelled = _count_images(Path(run["data_yaml"]))
    return {"iteration": index, "dataset_version": run.get("dataset_version"),
            "labelled_images": labelled, "model": weights,
            "map": metrics.get("mask_map50_95"), "map50": metrics.get("mask_map50"),
            "disagreement_rate": mine[-1]["disagreement_rate"] if mine else None,
            # Share of objects the student gets wrong (0 = agrees with the teacher everywhere):
            # falls as the model improves even while every novel frame is still queued.
            "disagreement": mine[-1].get("mean_score") if mine else None}


def _count_images(data_yaml: Path) -> int | None:
    """Count the labelled images of a prepared dataset (train + val + test)."""
    import yaml  # noqa: PLC0415

    try:
        doc = yaml.safe_load(data_yaml.read_text())
        root = Path(doc.get("path") or data_yaml.parent)
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    splits = [doc.get(k) for k in ("train", "val", "test") if doc.get(k)]
    return sum(sum(1 for p in (root / s).rglob("*") if p.is_file()) for s in splits
               if (root / s).is_dir())


def table(items: list[dict[str, Any]]) -> str:
    """Return the iterations as a text table."""
    head = f"{'iter':>4}  {'dataset':<10} {'labelled':>8}  {'mask mAP50-95':>13}  " \
           f"{'disagreement':>12}  {'queued':>6}  model"
    rows = [head, "-" * len(head)]
    for it in items:
        rows.append(f"{it['iteration']:>4}  {str(it['dataset_version'] or '-'):<10} "
                    f"{it['labelled_images'] if it['labelled_images'] is not None else '-':>8}  "
                    f"{_num(it['map']):>13}  {_num(it.get('disagreement')):>12}  "
                    f"{_num(it['disagreement_rate']):>6}  {it['model']}")
    return "\n".join(rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(items: list[dict[str, Any]], out: Path) -> Path | None:
    """Plot mask mAP50-95 against labelled images to ``out`` (PNG); None if nothing to plot."""
    points = [(it["labelled_images"], it["map"]) for it in items
              if it["labelled_images"] is not None and it["map"] is not None]
    if not points:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    xs, ys = zip(*points)
    ax.plot(xs, ys, "o-")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("val mask mAP50-95")
    ax.set_title("cv_autolabel iterations")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io  # noqa: PLC0415

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue(), durable=False)
    return out
