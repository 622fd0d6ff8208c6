"""``preannotate``: teacher pre-annotations of a pool as CVAT COCO; shardable and resumable."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cv_autolabel import cli
from cv_autolabel.core.coco import read_coco_zip
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.ground_truth import GroundTruthSegmenter
from cv_autolabel.tools import preannotate as pre
from cv_autolabel.tools.sim.run import SimConfig, simulate

FRAMES = 6


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "bag"
    simulate(SimConfig(frames=FRAMES, width=160, height=120, seed=1), out)
    return out


@pytest.fixture(scope="module")
def gt_counts(bag: Path) -> list[int]:
    """Number of ground-truth target instances of each frame, in recorded order."""
    with BagReader(bag) as reader:
        truth = GroundTruthSegmenter.from_bag(reader)
    with BagReader(bag) as reader:
        return [int(sum(m.any() for m in truth(f).masks)) for f in iter_frames(reader)]


def _load(zip_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = read_coco_zip(zip_path)
        coco.createIndex()
    return coco


def _stamps(coco: COCO) -> list[str]:
    """The frame part (stamp) of every image file name: ``<id>_<stamp>.png``."""
    return sorted(img["file_name"].rsplit("_", 1)[1] for img in coco.dataset["images"])


def test_zip_holds_every_frame_and_gt_instance(bag: Path, gt_counts: list[int],
                                               tmp_path: Path) -> None:
    summary = pre.preannotate(bag, tmp_path / "out.zip")
    coco = _load(tmp_path / "out.zip")
    assert len(coco.dataset["images"]) == FRAMES
    assert len(coco.dataset["annotations"]) == sum(gt_counts) == summary["instances"] > 0
    for ann in coco.dataset["annotations"]:
        assert abs(int(coco.annToMask(ann).sum()) - ann["area"]) <= 0.1 * ann["area"]
    assert summary["frames_total"] == summary["frames_in_shard"] == summary["processed"] == FRAMES
    assert summary["skipped_done"] == 0 and summary["zip"] == str(tmp_path / "out.zip")
    # a finished run re-run: nothing new, nothing duplicated
    again = pre.preannotate(bag, tmp_path / "out.zip")
    assert again["processed"] == 0 and again["skipped_done"] == FRAMES


def test_shards_cover_every_frame_once_and_merge(bag: Path, gt_counts: list[int],
                                                 tmp_path: Path) -> None:
    parts = [pre.preannotate(bag, tmp_path / f"s{i}.zip", shard=(i, 2)) for i in (1, 2)]
    assert [p["frames_in_shard"] for p in parts] == [3, 3]
    stamps = [s for i in (1, 2) for s in _stamps(_load(tmp_path / f"s{i}.zip"))]
    assert len(stamps) == len(set(stamps)) == FRAMES
    merged = pre.merge_zips([tmp_path / "s1.zip", tmp_path / "s2.zip"], tmp_path / "all.zip")
    coco = _load(tmp_path / "all.zip")
    assert merged["images"] == len(coco.dataset["images"]) == FRAMES
    assert len(coco.dataset["annotations"]) == sum(gt_counts)
    assert _stamps(coco) == sorted(stamps)
    for ann in coco.dataset["annotations"]:
        assert abs(int(coco.annToMask(ann).sum()) - ann["area"]) <= 0.1 * ann["area"]
    with pytest.raises(CvAutolabelError, match="exists"):
        pre.merge_zips([tmp_path / "s1.zip"], tmp_path / "all.zip")


def test_interrupted_run_resumes_without_duplicates(bag: Path, gt_counts: list[int],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = pre.make_teacher

    def crashing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        teach, names = real(*args, **kwargs)
        calls = []

        def wrapped(frame):  # noqa: ANN001, ANN202
            if len(calls) == 4:
                raise KeyboardInterrupt
            calls.append(frame)
            return teach(frame)
        return wrapped, names

    monkeypatch.setattr(pre, "make_teacher", crashing)
    out = tmp_path / "out.zip"
    with pytest.raises(KeyboardInterrupt):
        pre.preannotate(bag, out)
    assert not out.exists()
    monkeypatch.setattr(pre, "make_teacher", real)
    summary = pre.preannotate(bag, out)
    assert summary["skipped_done"] == 4 and summary["processed"] == FRAMES - 4
    coco = _load(out)
    assert len(coco.dataset["images"]) == len(set(_stamps(coco))) == FRAMES
    assert len(coco.dataset["annotations"]) == sum(gt_counts)


def test_crash_between_enqueue_and_log_is_not_duplicated(bag: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real = pre._mark_done

    def crash(log, source):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # the entry is committed, done.txt not yet written

    monkeypatch.setattr(pre, "_mark_done", crash)
    out = tmp_path / "out.zip"
    with pytest.raises(KeyboardInterrupt):
        pre.preannotate(bag, out)
    monkeypatch.setattr(pre, "_mark_done", real)
    summary = pre.preannotate(bag, out)
    assert summary["skipped_done"] == 1 and summary["processed"] == FRAMES - 1
    coco = _load(out)
    assert len(coco.dataset["images"]) == len(set(_stamps(coco))) == FRAMES


def test_unreadable_images_are_counted_and_skipped(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    for k in range(3):
        cv2.imwrite(str(src / "sub" / f"{k}.png"), np.full((20, 30, 3), 40 * k, np.uint8))
    (src / "bad.png").write_bytes(b"not a png")

    def boxes(kind, src, *, weights, prompts):  # noqa: ANN001, ANN202, ARG001
        def teach(frame):  # noqa: ANN001, ANN202
            m = np.zeros((2, *frame.rgb.shape[:2]), bool)
            m[0, 2:8, 2:8] = m[1, 3:9, 3:9] = True  # overlapping: merged into one
            return pre.Instances.from_masks(m, np.array([0, 0]), np.array([0.5, 0.9]), ("a",))
        return teach, ("a",)

    monkeypatch.setattr(pre, "make_teacher", boxes)
    summary = pre.preannotate(src, tmp_path / "out.zip", merge_iou=0.5)
    assert summary["frames_total"] == 4 and summary["unreadable"] == 1
    assert summary["processed"] == 3 and summary["instances"] == 3
    assert summary["skipped_done"] == 0
    assert f"{src}#0" not in (tmp_path / "out.zip.work" / pre.DONE_FILE).read_text().split()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_contract(bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.zip"
    code, stdout, _ = _cli(["preannotate", str(bag), "--out", str(out), "--teacher",
                            "groundtruth", "--shard", "2/3", "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert {"frames_total", "frames_in_shard", "processed", "skipped_done", "instances",
            "zip"} <= set(summary)
    assert summary["frames_in_shard"] == 2 and summary["zip"] == str(out)
    merged = tmp_path / "merged.zip"
    code, stdout, _ = _cli(["preannotate", "--out", str(merged), "--merge", str(out),
                            "--json"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["images"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--teacher", "sam3"], "error: SAM3 weights not found"),
    (["--teacher", "groundtruth", "--shard", "3/2"], "error: --shard i/n needs"),
])
def test_cli_errors(bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code, _, err = _cli(["preannotate", str(bag), "--out", str(tmp_path / "o.zip"), *argv],
                        capsys)
    assert code == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1


def test_cli_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(["preannotate", str(tmp_path / "nope"), "--out",
                         str(tmp_path / "o.zip"), "--teacher", "groundtruth"], capsys)
    assert code == 1 and err == f"error: source not found: {tmp_path / 'nope'}\n"
