"""The ``cv-autolabel`` contract: --help, exit codes, one-line errors, --json last line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cv_autolabel.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

SUBCOMMANDS = ["sim", "extract", "info", "dedup", "replay", "flush", "import-cvat", "prepare",
               "train", "export", "publish", "status", "preannotate", "demo"]


def _run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help_and_json(command: str) -> None:
    result = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", command, "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "--json" in result.stdout


def test_parser_lists_every_subcommand() -> None:
    help_text = build_parser().format_help()
    assert all(c in help_text for c in SUBCOMMANDS)


def test_sim_then_info_then_extract_json_is_last_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    bag = tmp_path / "bag"
    code, out, _ = _run(capsys, "sim", str(bag), "--frames", "3", "--width", "64",
                        "--height", "48", "--storage", "sqlite3", "--json")
    assert code == 0
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["frames"] == 3 and summary["storage"] == "sqlite3"
    code, out, _ = _run(capsys, "info", str(bag), "--json")
    info = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and info["topics"]["/camera/camera/color/image_raw"]["count"] == 3
    code, out, _ = _run(capsys, "extract", str(bag), "--out", str(tmp_path / "x"), "--json")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["frames"] == 3


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["info", "/definitely/missing"], 1, "error: bag not found"),
    (["extract", "/definitely/missing", "--out", "OUT"], 1, "error: bag not found"),
    (["sim", "OUT", "--classes", "purple_can"], 1, "error: unknown class"),
    (["sim", "OUT", "--frames", "0"], 1, "error: --frames must be at least 1"),
    (["extract", "BAG"], 2, "error: the following arguments are required: --out"),
    (["sim", "OUT", "--storage", "zip"], 2, "error: argument --storage"),
    (["nonsense"], 2, "error: argument COMMAND"),
])
def test_failures_are_one_error_line_and_non_zero(tmp_path: Path, argv: list[str], code: int,
                                                  message: str) -> None:
    argv = [a.replace("OUT", str(tmp_path / "o")).replace("BAG", str(tmp_path / "b"))
            for a in argv]
    result = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", *argv, "--json"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == code
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout.strip() == ""  # no JSON summary for a failure


def test_config_file_topics_are_used(tmp_path: Path, sim_bag: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("/**:\n  ros__parameters:\n    camera:\n      color_topic: /nope\n")
    code, _, err = _run(capsys, "extract", str(sim_bag), "--out", str(tmp_path / "x"),
                        "--config", str(config))
    assert code == 1 and "no topic(s) ['/nope'" in err
    code, _, _ = _run(capsys, "extract", str(sim_bag), "--out", str(tmp_path / "x"),
                      "--config", str(config), "--color-topic",
                      "/camera/camera/color/image_raw")
    assert code == 0


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "cv-autolabel"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "cv-autolabel" in result.stdout


def test_demo_runs_the_flywheel_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cv_autolabel.cli", "demo", "--workspace", str(tmp_path / "ws"),
         "--frames", "40", "--width", "160", "--height", "120", "--epochs", "1",
         "--imgsz", "64", "--json"],
        capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    items = summary["iterations"]
    assert [it["iteration"] for it in items] == [1, 2]
    assert items[0]["labelled_images"] < items[1]["labelled_images"]  # versions accumulate
    assert all(it["map"] is not None and it["disagreement"] is not None for it in items)
    assert (tmp_path / "ws" / "dataset" / "v0001" / "manifest.json").exists()
    assert Path(summary["plot"]).is_file()
    # Replays name the weights their student was exported from, wherever it was copied to.
    replays = [json.loads(line) for line in
               (tmp_path / "ws" / "replays.jsonl").read_text().splitlines()]
    students = [r for r in replays if r["student"]]
    assert students and all(
        Path(r["student_weights"]).is_relative_to(tmp_path / "ws" / "runs") for r in students)
    status = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", "status", "--workspace",
                             str(tmp_path / "ws"), "--json"], capture_output=True, text=True,
                            check=False)
    assert json.loads(status.stdout.strip().splitlines()[-1])["iterations"] == items


def test_dedup_cli_on_a_bag_and_an_image_folder(tmp_path: Path, sim_bag: Path) -> None:
    import cv2
    import numpy as np

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cv_autolabel.cli", "dedup", *argv,
                               "--embedder", "thumbnail", "--json"],
                              capture_output=True, text=True, check=False)

    result = run(str(sim_bag), "--db", str(tmp_path / "a.db"), "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["frames_in"] == 16 and 0 < summary["frames_kept"] < 16
    assert summary["frames_per_second"] > 0
    again = json.loads(run(str(sim_bag), "--db", str(tmp_path / "a.db"), "--out",
                           str(tmp_path / "a")).stdout.strip().splitlines()[-1])
    assert again["frames_kept"] == 0 and again["stored_total"] == summary["frames_kept"]

    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (48, 64, 3), np.uint8))
    cv2.imwrite(str(images / "3.jpg"), cv2.imread(str(images / "0.png")))  # a duplicate
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = run(str(tmp_path / "images"), "--db", str(tmp_path / "b.db"), "--out",
                 str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["frames_in"], summary["frames_kept"], summary["rejected"]) == (4, 3, 1)
    assert "skipped unreadable image" in result.stderr


def test_dedup_cli_errors(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "cv_autolabel.cli", "dedup",
                             str(tmp_path / "missing"), "--db", str(tmp_path / "x.db"),
                             "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: source not found")


def test_flush_with_review_writes_a_review_image_per_exported_frame(
        sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cv_autolabel.tools.replay import replay_active_learning

    queued = replay_active_learning(sim_bag, tmp_path / "queue")["queued"]
    code, out, _ = _run(capsys, "flush", "--queue", str(tmp_path / "queue"), "--out",
                        str(tmp_path / "batch.zip"), "--review", str(tmp_path / "review"),
                        "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["images"] == queued > 0
    assert sum(summary["annotations_per_class"].values()) == summary["annotations"]
    assert f"red_can {summary['annotations_per_class']['red_can']}" in out
    assert summary["review_images"] == queued
    assert sorted(p.name for p in (tmp_path / "review").iterdir()) == [
        f"{i:06d}.jpg" for i in summary["entry_ids"]]


def test_flush_diverse_on_a_replayed_queue(sim_bag: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    from cv_autolabel.tools.replay import replay_active_learning

    queued = replay_active_learning(sim_bag, tmp_path / "queue")["queued"]
    assert queued >= 2
    code, _, err = _run(capsys, "flush", "--queue", str(tmp_path / "queue"), "--out",
                        str(tmp_path / "a.zip"), "--diverse")
    assert code == 1 and "give --limit N too" in err and not (tmp_path / "a.zip").exists()
    code, out, _ = _run(capsys, "flush", "--queue", str(tmp_path / "queue"), "--out",
                        str(tmp_path / "b.zip"), "--limit", "1", "--diverse", "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["images"] == 1 and len(summary["entry_ids"]) == 1


def test_demo_with_sam3_and_no_weights_fails_before_doing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CV_AUTOLABEL_SAM3", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    code, _, err = _run(capsys, "demo", "--workspace", str(tmp_path / "ws"), "--teacher", "sam3")
    assert code == 1 and err.startswith("error: SAM3 weights not found")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ws" / "recordings").exists()


def test_the_flywheel_asks_sam3_with_one_prompt_per_class(
        sim_bag: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from cv_autolabel.core.instances import Instances
    from cv_autolabel.core.teachers import sam3
    from cv_autolabel.tools.flywheel import Teacher

    seen = {}

    class FakeSam3:  # SAM3 itself needs gated weights: record what the loop asks of it
        def __init__(self, weights: Path, prompts: dict) -> None:
            seen.update(weights=weights, prompts=prompts)
            self.class_names = tuple(prompts)

        def __call__(self, frame) -> Instances:
            mask = np.zeros((1, *frame.rgb.shape[:2]), bool)
            mask[0, 10:40, 10:40] = True
            return Instances.from_masks(mask, [0], [0.9], self.class_names)

    monkeypatch.setattr(sam3, "Sam3Teacher", FakeSam3)
    weights = tmp_path / "sam3.pt"
    weights.write_bytes(b"x")
    result = Teacher("sam3", weights).replay(sim_bag, tmp_path / "queue", None, tmp_path)
    assert seen == {"weights": weights, "prompts": {"red_can": ["red can"],
                                                    "blue_can": ["blue can"]}}
    assert result["teacher"] == "sam3" and result["queued"] == result["novel"] > 0


class _FakeSam3:
    """SAM3 itself needs gated weights: record what a command asks of it."""

    seen: dict = {}

    def __init__(self, weights: Path, prompts: dict) -> None:
        _FakeSam3.seen = {"weights": Path(weights), "prompts": prompts}
        self.class_names = tuple(prompts)

    def __call__(self, frame):  # noqa: ANN204
        from cv_autolabel.core.instances import Instances

        return Instances.empty(*frame.rgb.shape[:2], self.class_names)


def test_sam3_weights_are_found_without_a_flag(sim_bag: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from cv_autolabel.core.teachers import sam3
    from cv_autolabel.tools.flywheel import Teacher

    monkeypatch.setattr(sam3, "Sam3Teacher", _FakeSam3)
    weights = tmp_path / "sam3.pt"
    weights.write_bytes(b"x")
    monkeypatch.setenv("CV_AUTOLABEL_SAM3", str(weights))
    code, _, err = _run(capsys, "replay", str(sim_bag), "--active-learning", "--queue",
                        str(tmp_path / "q1"), "--teacher", "sam3", "--config",
                        str(REPO / "config" / "autolabel.yaml"))
    assert code == 0, err
    assert _FakeSam3.seen["weights"] == weights  # $CV_AUTOLABEL_SAM3, as the docs say
    assert _FakeSam3.seen["prompts"]["red_can"] == ["red soda can", "red energy drink can"]
    _FakeSam3.seen = {}
    Teacher("sam3").replay(sim_bag, tmp_path / "q2", None, tmp_path)  # the demo's path
    assert _FakeSam3.seen["weights"] == weights


def test_sam3_without_classes_says_to_give_the_config(sim_bag: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "sam3.pt"
    weights.write_bytes(b"x")
    monkeypatch.setenv("CV_AUTOLABEL_SAM3", str(weights))
    code, _, err = _run(capsys, "replay", str(sim_bag), "--active-learning", "--queue",
                        str(tmp_path / "q"), "--teacher", "sam3")
    assert code == 1
    assert err.startswith("error: the SAM3 teacher needs the classes to look for: give --config")


def test_publish_on_the_robot_re_points_the_detector_link(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture
                                                           ) -> None:
    from cv_autolabel.core.manifest import write_manifest

    model = tmp_path / "copied" / "int8"  # an export's int8/ copied to the robot
    model.mkdir(parents=True)
    (model / "best.xml").write_text("<net/>")
    write_manifest(model, precision="int8", map50_95=0.42)
    link = tmp_path / "models" / "current"
    code, out, _ = _run(capsys, "publish", str(model), "--link", str(link), "--json")
    assert code == 0 and link.resolve() == model.resolve()
    assert "int8, val mask mAP50-95 0.42" in out
    assert json.loads(out.strip().splitlines()[-1])["manifest"]["precision"] == "int8"
    (model / "best.xml").write_text("<net>changed</net>")
    code, _, err = _run(capsys, "publish", str(model), "--link", str(link))
    assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_flush_whose_review_images_fail_still_reports_the_written_batch(
        sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cv_autolabel.tools.replay import replay_active_learning

    queued = replay_active_learning(sim_bag, tmp_path / "queue")["queued"]
    blocked = tmp_path / "review"
    blocked.write_text("a file where the review directory should go")
    code, out, err = _run(capsys, "flush", "--queue", str(tmp_path / "queue"), "--out",
                          str(tmp_path / "batch.zip"), "--review", str(blocked), "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["images"] == queued > 0 and (tmp_path / "batch.zip").is_file()
    assert summary["review_images"] == 0 and "the batch itself is complete" in err


def test_flush_limit_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["flush", "--queue", str(tmp_path), "--out", str(tmp_path / "b.zip"),
              "--limit", "0"])
    assert exit_info.value.code == 2 and "must be at least 1, got 0" in capsys.readouterr().err


def test_replay_of_a_missing_bag_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = _run(capsys, "replay", str(tmp_path / "nope"), "--active-learning",
                        "--queue", str(tmp_path / "q"))
    assert code == 1 and err.strip() == f"error: source not found: {tmp_path / 'nope'}"


def test_publish_follows_the_detectors_model_path_in_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cv_autolabel.core.manifest import write_manifest

    model = tmp_path / "int8"
    model.mkdir()
    (model / "best.xml").write_text("<net/>")
    write_manifest(model, precision="int8")
    config = tmp_path / "autolabel.yaml"
    config.write_text("/cv_autolabel/detector_node:\n  ros__parameters:\n"
                      f"    model_path: {tmp_path / 'robot' / 'current'}\n")
    code, _, _ = _run(capsys, "publish", str(model), "--config", str(config))
    assert code == 0 and (tmp_path / "robot" / "current").resolve() == model.resolve()
