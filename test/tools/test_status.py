"""`status`: iterations from training runs and replays, table, JSON and plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cv_autolabel.tools.status import iterations, record_replay


def _run(ws: Path, name: str, images: int, mask_map: float) -> Path:
    run = ws / "runs" / name
    (run / "weights").mkdir(parents=True)
    data = ws / f"data_{name}"
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        for i in range(images // 2):
            (data / "images" / split / f"{i}.png").write_bytes(b"x")
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\n")
    record = {"dataset_version": f"v000{name[-1]}", "data_yaml": str(data / "data.yaml"),
              "best_weights": str(run / "weights" / "best.pt"),
              "metrics": {"mask_map50_95": mask_map, "mask_map50": mask_map + 0.2}}
    (run / "cv_autolabel_run.json").write_text(json.dumps(record))
    return run


def test_iterations_oldest_first_with_disagreement(tmp_path: Path) -> None:
    first = _run(tmp_path, "it1", 20, 0.10)
    time.sleep(0.01)
    os.utime(first / "cv_autolabel_run.json", (time.time() - 100, time.time() - 100))
    second = _run(tmp_path, "it2", 40, 0.25)
    record_replay(tmp_path, {"student": str(second / "weights"), "disagreement_rate": 0.4,
                             "frames": 10, "queued": 4})
    items = iterations(tmp_path)
    assert [it["labelled_images"] for it in items] == [20, 40]
    assert [it["map"] for it in items] == [0.10, 0.25]
    assert items[0]["disagreement_rate"] is None and items[1]["disagreement_rate"] == 0.4


def test_a_replay_of_a_published_copy_counts_for_the_run_it_came_from(tmp_path: Path) -> None:
    _run(tmp_path, "it1", 20, 0.10)
    run = _run(tmp_path, "it12", 20, 0.10)  # "it1" is a prefix of its name, not its parent
    record_replay(tmp_path, {"student": "/robot/models/v0001", "disagreement_rate": 0.3,
                             "student_weights": str(run / "weights" / "best.pt")})
    by_name = {Path(it["model"]).parent.parent.name: it for it in iterations(tmp_path)}
    assert by_name["it12"]["disagreement_rate"] == 0.3
    assert by_name["it1"]["disagreement_rate"] is None


def test_status_cli_json_and_plot(tmp_path: Path) -> None:
    _run(tmp_path, "it1", 10, 0.2)
    result = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", "status", "--workspace",
                             str(tmp_path), "--json"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["iterations"][0]["labelled_images"] == 10
    assert summary["iterations"][0]["map"] == 0.2
    assert Path(summary["plot"]).is_file()
    assert "mask mAP50-95" in result.stdout
