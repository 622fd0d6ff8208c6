"""The label-efficiency benchmark's verdict: how "labels to reach random's final mAP" is read."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks/active_learning/bench_label_efficiency.py"
_spec = importlib.util.spec_from_file_location("bench_label_efficiency", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)


def _rounds(labelled: list[int], maps: list[float]) -> list[dict]:
    return [{"labelled": n, "map": m} for n, m in zip(labelled, maps)]


def test_labels_to_reach_interpolates_between_rounds() -> None:
    assert bench.labels_to_reach([24, 48, 72], [0.1, 0.2, 0.4], 0.3) == pytest.approx(60.0)
    assert bench.labels_to_reach([24, 48], [0.3, 0.5], 0.2) == 24.0  # reached at the seed set
    assert bench.labels_to_reach([24, 48], [0.1, 0.2], 0.25) is None  # never reached


def test_a_curve_that_dips_counts_its_first_crossing() -> None:
    assert bench.labels_to_reach([10, 20, 30, 40], [0.1, 0.3, 0.2, 0.4], 0.3) == 20.0


def test_top_scores_takes_the_highest_and_breaks_ties_at_random() -> None:
    scores = {i: 1.0 for i in range(10)} | {10: 0.1, 11: 0.2}
    picks = [tuple(bench.top_scores(scores, 3, np.random.default_rng(s))) for s in range(5)]
    assert all(set(p) <= set(range(10)) for p in picks)  # only the tied top scores
    assert len(set(picks)) > 1  # ties are not broken by order of arrival
    assert bench.top_scores({1: 0.2, 2: 0.9, 3: 0.5}, 2, np.random.default_rng(0)) == [2, 3]


def test_summary_compares_against_random_final_map_averaged_over_seeds() -> None:
    runs = {"random": {0: _rounds([24, 48, 72, 96], [0.10, 0.20, 0.25, 0.30]),
                       1: _rounds([24, 48, 72, 96], [0.10, 0.18, 0.26, 0.30])},
            "disagreement": {0: _rounds([24, 48, 72, 96], [0.10, 0.26, 0.34, 0.40]),
                             1: _rounds([24, 48, 72, 96], [0.10, 0.24, 0.30, 0.38])}}
    s = bench.summarise(runs)
    assert s["random_final_map"] == pytest.approx(0.30)
    assert s["random_final_labels"] == 96
    v = s["arms"]["disagreement"]
    # mean disagreement curve 0.10, 0.25, 0.32: crosses 0.30 at 48 + 24 * 0.05 / 0.07
    assert v["labels_to_reach"] == pytest.approx(48 + 24 * 0.05 / 0.07)
    assert v["label_ratio"] == pytest.approx((48 + 24 * 0.05 / 0.07) / 96)
    assert v["target_met"] is False  # 0.68 > 0.6
    assert v["label_ratio_per_seed"] == {"0": pytest.approx(60 / 96),
                                         "1": pytest.approx(72 / 96)}
    assert list(s["arms"]) == ["disagreement"]  # random is the yardstick, not an entry
    assert s["curves"]["random"]["map_std"][1] == pytest.approx(0.01)


def test_summary_says_when_disagreement_never_reaches_random() -> None:
    runs = {"random": {0: _rounds([24, 48], [0.1, 0.3])},
            "disagreement": {0: _rounds([24, 48], [0.1, 0.2])}}
    v = bench.summarise(runs)["arms"]["disagreement"]
    assert v["labels_to_reach"] is None and v["label_ratio"] is None
    assert v["target_met"] is False and v["label_ratio_per_seed"] == {"0": None}


def test_no_verdict_when_random_selection_learned_nothing() -> None:
    runs = {"random": {0: _rounds([6, 12], [0.0, 0.0])},
            "disagreement": {0: _rounds([6, 12], [0.0, 0.0])}}
    s = bench.summarise(runs)
    assert s["learned"] is False and s["arms"]["disagreement"]["target_met"] is False


def test_longtail_pool_holds_the_new_product_in_few_recordings() -> None:
    longtail = [bench.pool_classes("longtail", b, 2) for b in range(12)]
    assert longtail.count(("red_can", "blue_can")) == 2
    assert longtail.count(("red_can",)) == 10
    assert all(bench.pool_classes("uniform", b, 2) == ("red_can", "blue_can") for b in range(12))


def test_picked_frames_are_counted_per_class_they_hold() -> None:
    def frame(*lines: str) -> bench.PoolFrame:
        return bench.PoolFrame("f", Path("f.png"), list(lines), np.zeros((2, 2)), {},
                               np.zeros(4))

    frames = [frame("0 0.1 0.1 0.2 0.2 0.1 0.2", "0 0.5 0.5 0.6 0.6 0.5 0.6"),
              frame("0 0.1 0.1 0.2 0.2 0.1 0.2", "1 0.5 0.5 0.6 0.6 0.5 0.6"), frame()]
    # frames, not instances: two red cans in one frame count once; an empty frame holds none
    assert bench.frames_holding(frames, ("red_can", "blue_can")) == {"red_can": 2, "blue_can": 1}


def test_summary_and_table_carry_per_class_means() -> None:
    def rounds(maps: list[float], blue: list[float]) -> list[dict]:
        return [{"labelled": n, "map": m, "map_per_class": {"red_can": 2 * m - b,
                                                             "blue_can": b}}
                for n, m, b in zip([24, 48], maps, blue)]

    runs = {"random": {0: rounds([0.1, 0.2], [0.02, 0.04]),
                       1: rounds([0.1, 0.2], [0.04, 0.06])},
            "disagreement": {0: rounds([0.1, 0.3], [0.02, 0.2]),
                             1: [{"labelled": 24, "map": 0.1, "map_per_class": {"red_can": 0.2}},
                                 {"labelled": 48, "map": 0.3,
                                  "map_per_class": {"red_can": 0.3, "blue_can": 0.3}}]}}
    curves = bench.summarise(runs)["curves"]
    assert curves["random"]["class_map_mean"]["blue_can"] == pytest.approx([0.03, 0.05])
    # a class missing from a round's results (not detected at all) counts as 0
    assert curves["disagreement"]["class_map_mean"]["blue_can"] == pytest.approx([0.01, 0.25])
    text = bench.table(bench.summarise(runs))
    assert "blue_can: random / disagreement |" in text.splitlines()[0]
    assert "| 1 | 48 | 0.200 ± 0.000 | 0.300 ± 0.000 | 0.050 / 0.250 |" in text


def test_a_third_arm_gets_its_own_verdict_line() -> None:
    runs = {"random": {0: _rounds([24, 48, 72], [0.1, 0.2, 0.3])},
            "disagreement": {0: _rounds([24, 48, 72], [0.1, 0.2, 0.25])},
            "diverse": {0: _rounds([24, 48, 72], [0.1, 0.3, 0.35])}}
    s = bench.summarise(runs)
    assert s["arms"]["diverse"]["label_ratio"] == pytest.approx(48 / 72)
    lines = bench.verdict_lines(s)
    assert lines[0].startswith("disagreement reaches") and "never" in lines[0]
    assert "with 48 labels (67%); target <= 60%: not met" in lines[1]


def test_merge_takes_the_arms_not_run_now_and_checks_the_settings() -> None:
    import argparse  # noqa: PLC0415

    args = argparse.Namespace(**{k: 1 for k in bench._SAME_SETTINGS})
    now = {"diverse": {0: _rounds([24, 48], [0.1, 0.3])}}
    earlier = {"settings": dict(vars(args)),
               "runs": {"random": {"0": _rounds([24, 48], [0.1, 0.2])},
                        "diverse": {"0": _rounds([24, 48], [0.1, 0.9])}}}
    merged = bench.merge_runs(now, earlier, args)
    assert list(merged) == ["random", "diverse"]
    assert merged["diverse"] is now["diverse"] and merged["random"][0][1]["map"] == 0.2
    with pytest.raises(SystemExit, match="settings differ: imgsz"):
        bench.merge_runs(now, {**earlier, "settings": {**earlier["settings"], "imgsz": 5}},
                         args)
    with pytest.raises(SystemExit, match="settings differ: rounds .the earlier run has fewer"):
        bench.merge_runs(now, {**earlier, "settings": {**earlier["settings"], "rounds": 0}},
                         args)
    # A longer earlier run contributes its first rounds.
    longer = {"settings": {**earlier["settings"], "rounds": 2},
              "runs": {"random": {"0": _rounds([24, 48, 72], [0.1, 0.2, 0.25])}}}
    assert len(bench.merge_runs(now, longer, args)["random"][0]) == 2
    earlier["runs"]["random"]["0"][0]["map"] = 0.5
    with pytest.raises(SystemExit, match="round 0 differs"):
        bench.merge_runs(now, earlier, args)


def _pool_frame(name: str) -> "bench.PoolFrame":
    return bench.PoolFrame(name, Path(f"{name}.png"), [], np.zeros((2, 2)), {}, np.zeros(4))


def test_a_round_is_keyed_on_its_frames_starting_weights_and_settings(tmp_path: Path) -> None:
    weights = tmp_path / "last.pt"
    weights.write_bytes(b"model A")
    frames = [_pool_frame("b0_0001"), _pool_frame("b1_0007")]
    key = bench.round_key(frames, str(weights), epochs=3, test_images=tmp_path)
    assert key == bench.round_key(frames, str(weights), epochs=3, test_images=tmp_path)
    assert key != bench.round_key(frames[:1], str(weights), epochs=3, test_images=tmp_path)
    assert key != bench.round_key(frames, str(weights), epochs=4, test_images=tmp_path)
    weights.write_bytes(b"model B")  # same path, retrained weights: not the same round
    assert key != bench.round_key(frames, str(weights), epochs=3, test_images=tmp_path)
    assert bench.round_key(frames, "yolo11n-seg.yaml")["init"] == "yolo11n-seg.yaml"


def test_a_round_already_trained_with_the_same_inputs_is_read_back(tmp_path: Path) -> None:
    import argparse
    import json

    frames = [_pool_frame("b0_0001")]
    args = argparse.Namespace(iters=30, imgsz=64)
    root = tmp_path / "round1"
    (root / "run").mkdir(parents=True)
    (root / "run" / "last.pt").write_bytes(b"w")
    key = bench.round_key(frames, "yolo11n-seg.yaml", epochs=30, imgsz=64, seed=0,
                          test_images=tmp_path / "test")
    result = {"labelled": 1, "map": 0.25, "train_s": 9.0, "weights": str(root / "run/last.pt")}
    (root / "round.json").write_text(json.dumps({"key": key, "result": result}))
    got = bench.train_round(root, frames, tmp_path / "test", ("red_can",),
                            init="yolo11n-seg.yaml", args=args, seed=0)
    assert got == result | {"resumed": True}  # read back: no training ran
    assert bench._took(got) == "(resumed)"


def test_report_redraws_a_results_file_and_prints_its_verdict(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    def rounds(maps: list[float], blue: list[float]) -> list[dict]:
        return [{"labelled": n, "map": m, "map_per_class": {"blue_can": b, "red_can": m}}
                for n, m, b in zip([24, 48, 72], maps, blue)]

    runs = {"random": {"0": rounds([0.1, 0.2, 0.3], [0.0, 0.1, 0.1])},
            "disagreement": {"0": rounds([0.1, 0.3, 0.4], [0.0, 0.2, 0.3])}}
    results = tmp_path / "results_pretrained_longtail.json"
    results.write_text(json.dumps({"settings": {"init": "pretrained", "scenario": "longtail"},
                                   "runs": runs}))
    bench.main(["--report", str(results)])
    out = capsys.readouterr().out
    assert "disagreement reaches random's final mask mAP50-95 0.300 (72 labels) with 48 labels" \
        in out
    assert "| 2 | 72 | 0.300 ± 0.000 | 0.400 ± 0.000 |" in out
    assert (tmp_path / "label_efficiency_pretrained_longtail.png").stat().st_size > 10_000


def test_a_later_turn_trains_on_the_earlier_labels_too_but_counts_only_new_ones(
        tmp_path: Path) -> None:
    import argparse  # noqa: PLC0415

    earlier = tmp_path / "stock" / "images"
    earlier.mkdir(parents=True)
    (tmp_path / "stock" / "labels").mkdir()
    for name, lines in (("p0_0000", "0 0 0 1 0 1 1\n0 0 0 1 0 1 1\n"), ("p0_0003", "\n")):
        (earlier / f"{name}.png").write_bytes(b"png")
        (tmp_path / "stock" / "labels" / f"{name}.txt").write_text(lines)
    assert bench.earlier_counts(earlier, ("red_can", "blue_can")) == {"red_can": 2,
                                                                       "blue_can": 0}
    assert bench.earlier_counts(None, ("red_can",)) == {"red_can": 0}

    image = tmp_path / "b0_0001.png"
    image.write_bytes(b"png")
    frame = bench.PoolFrame("b0_0001", image, ["1 0 0 1 0 1 1"], np.zeros((2, 2)), {},
                            np.zeros(4))
    bench.write_dataset(tmp_path / "data", [frame], tmp_path / "test", ("red_can", "blue_can"),
                        earlier)
    train = tmp_path / "data" / "labels" / "train"
    assert sorted(p.name for p in train.iterdir()) == ["b0_0001.txt", "p0_0000.txt",
                                                       "p0_0003.txt"]
    assert (train / "p0_0000.txt").read_text().count("\n") == 2

    # The earlier labels change what a round trains on, so they are part of its key.
    plain = bench.round_key([frame], "yolo11n-seg.yaml", epochs=3)
    assert "earlier" not in plain  # rounds cached before this setting existed still match
    assert plain != bench.round_key([frame], "yolo11n-seg.yaml", epochs=3, earlier=earlier)
    # Runs from before the setting did not keep earlier labels: not mergeable with one that does.
    args = argparse.Namespace(**{k: 1 for k in bench._SAME_SETTINGS} | {"keep_earlier": True})
    old = {k: 1 for k in bench._SAME_SETTINGS if k != "keep_earlier"}
    with pytest.raises(SystemExit, match="settings differ: keep_earlier"):
        bench.check_merge_settings({"settings": old}, args)


def test_a_retrain_takes_each_rounds_labelled_frames_and_the_recorded_world() -> None:
    import argparse  # noqa: PLC0415

    rounds = [{"picked": ["b0_0001", "b3_0040"], "map": 0.1},
              {"picked": ["b1_0007"], "map": 0.2}, {"picked": ["b2_0100"], "map": 0.3}]
    # each round trains on what it and every earlier round labelled, in pick order
    assert bench.labelled_sets(rounds) == [["b0_0001", "b3_0040"],
                                           ["b0_0001", "b3_0040", "b1_0007"],
                                           ["b0_0001", "b3_0040", "b1_0007", "b2_0100"]]

    settings = {k: f"recorded {k}" for k in bench._RECORDED} | {"rounds": 5}
    recorded = {"settings": settings,
                "runs": {"random": {"0": rounds, "1": rounds}, "balanced": {"0": rounds}}}
    args = argparse.Namespace(**{k: "mine" for k in bench._RECORDED},
                              arms=["random", "disagreement", "balanced"], seeds=[0, 2])
    bench.adopt_recorded_settings(recorded, args)
    # the pool, test set and seed model are rebuilt as recorded, so frame names match
    assert all(getattr(args, k) == f"recorded {k}" for k in bench._RECORDED)
    assert args.keep_earlier is False  # runs before the setting did not keep earlier labels
    assert args.arms == ["random", "balanced"] and args.seeds == [0]  # what was recorded

    with pytest.raises(SystemExit, match="picked frames"):
        bench.adopt_recorded_settings(
            {"settings": settings, "runs": {"random": {"0": [{"map": 0.1}]}}}, args)
    with pytest.raises(SystemExit, match="no random arm"):
        bench.adopt_recorded_settings({"settings": settings, "runs": {"balanced": {"0": rounds}}},
                                      argparse.Namespace(arms=["balanced"], seeds=[0]))


def test_a_table_of_some_rounds_names_them_as_recorded() -> None:
    runs = {arm: {0: [{"round": r, "labelled": n, "map": m} for r, n, m in
                      ((0, 24, 0.1), (3, 96, 0.2 + d), (5, 144, 0.3 + d))]}
            for arm, d in (("random", 0.0), ("balanced", 0.1))}
    lines = bench.table(bench.summarise(runs)).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["0", "3", "5"]
    assert "| 3 | 96 | 0.200 ± 0.000 | 0.300 ± 0.000 |" in lines


def test_a_retrain_trains_what_the_verdict_needs_first() -> None:
    # seed round, random's final (the bar), the selection arm's curve, then random's shape
    assert bench.retrain_order(["random", "balanced"], 5, [0, 5, 2, 3]) == [
        ("random", 0), ("balanced", 0), ("random", 5), ("balanced", 2), ("balanced", 3),
        ("balanced", 5), ("random", 2), ("random", 3)]
    assert bench.retrain_order(["random"], 2) == [("random", 0), ("random", 2), ("random", 1)]


def test_a_round_one_arm_has_no_result_for_shows_a_dash() -> None:
    runs = {"random": {0: [{"round": 0, "labelled": 24, "map": 0.1},
                           {"round": 5, "labelled": 144, "map": 0.3}]},
            "balanced": {0: [{"round": 2, "labelled": 72, "map": 0.25},
                             {"round": 3, "labelled": 96, "map": 0.35}]}}
    summary = bench.summarise(runs)
    assert bench.table(summary).splitlines()[2:] == [
        "| 0 | 24 | 0.100 ± 0.000 | – |", "| 2 | 72 | – | 0.250 ± 0.000 |",
        "| 3 | 96 | – | 0.350 ± 0.000 |", "| 5 | 144 | 0.300 ± 0.000 | – |"]
    assert summary["arms"]["balanced"]["labels_to_reach"] == 84.0  # between rounds 2 and 3


def test_a_second_run_in_the_same_work_folder_is_refused(tmp_path: Path) -> None:
    # it would rebuild the pool from under the first run's trainings
    held = bench.hold_work(tmp_path / "work")
    with pytest.raises(SystemExit, match="in use by another run"):
        bench.hold_work(tmp_path / "work")
    held.close()
    bench.hold_work(tmp_path / "work").close()  # free again once the first run ends


def test_a_missing_or_broken_results_file_is_refused_before_any_training(
        tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--retrain: .* does not exist"):
        bench.main(["--retrain", str(tmp_path / "results_nowhere.json")])
    broken = tmp_path / "results_broken.json"
    broken.write_text('{"settings": ')  # cut off mid-write
    with pytest.raises(SystemExit, match="--report: .* is not a results file"):
        bench.main(["--report", str(broken)])


def test_means_only_average_rounds_every_seed_has() -> None:
    # a retrain stopped after random's round 5 on seed 1 but went on to round 2 on seed 0:
    # seed 0's round 2 must not be averaged with seed 1's round 5
    def r(n: int, m: float) -> dict:
        return {"round": n, "labelled": 24 * (n + 1), "map": m}

    runs = {"random": {0: [r(2, 0.30), r(5, 0.34)], 1: [r(5, 0.32)]},
            "balanced": {0: [r(2, 0.37)], 1: [r(2, 0.36)]}}
    s = bench.summarise(runs)
    assert s["curves"]["random"]["round"] == [5]
    assert s["curves"]["random"]["map_mean"] == [pytest.approx(0.33)]
    assert s["random_final_labels"] == 144
    v = s["arms"]["balanced"]
    assert v["labels_to_reach"] == 72 and v["target_met"] is True
    assert v["label_ratio_per_seed"] == {"0": 0.5, "1": 0.5}
    assert bench.verdict_lines(s)[0].endswith("[per seed 0: 50%, 1: 50%]")
    assert bench.seed_table(runs).splitlines() == [
        "| seed | arm | round 2 (72) | round 5 (144) |", "|---:|---|---:|---:|",
        "| 0 | random | 0.300 | 0.340 |", "| 0 | balanced | 0.370 | – |",
        "| 1 | random | – | 0.320 |", "| 1 | balanced | 0.360 | – |"]
