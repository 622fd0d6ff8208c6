"""Disagreement mining finds exactly the objects where the student and the teacher differ."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cv_autolabel.core.disagreement import (
    KINDS,
    DisagreementConfig,
    ImageSizeMismatchError,
    compare,
    merge_overlapping,
)
from cv_autolabel.core.instances import Instances, mask_iou
from cv_autolabel.errors import ConfigError, CvAutolabelError

H, W = 120, 160
NAMES = ("red_can", "blue_can")


def rect(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def disc(cy: int, cx: int, r: int, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def inst(objects: list[tuple[str, np.ndarray]], names: tuple[str, ...] = NAMES,
         scores: list[float] | None = None, shape: tuple[int, int] = (H, W)) -> Instances:
    if not objects:
        return Instances.empty(*shape, names)
    masks = np.stack([m for _, m in objects])
    ids = np.array([names.index(n) for n, _ in objects])
    conf = np.ones(len(objects)) if scores is None else np.array(scores)
    return Instances.from_masks(masks, ids, conf, names)


CAN_A = rect(20, 60, 20, 60)            # 40 x 40
CAN_A_SHIFTED = rect(20, 60, 30, 70)    # IoU with CAN_A: 1200 / 2000 = 0.6
CAN_A_FAR = rect(20, 60, 50, 90)        # IoU with CAN_A: 400 / 2800 = 0.14
CAN_B = rect(20, 60, 90, 130)
DISC = disc(90, 80, 15)
TINY = rect(100, 105, 5, 10)            # 25 px, below the default min_area of 50

NO_REASONS: dict[str, int] = {}


@pytest.mark.parametrize(("student", "teacher", "expected_counts", "expected_score"), [
    pytest.param([("red_can", CAN_A), ("blue_can", CAN_B)],
                 [("red_can", CAN_A), ("blue_can", CAN_B)], NO_REASONS, 0.0, id="perfect"),
    pytest.param([("red_can", CAN_A)], [("red_can", CAN_A), ("blue_can", CAN_B)],
                 {"missed": 1}, 0.5, id="teacher-only"),
    pytest.param([("red_can", CAN_A), ("blue_can", CAN_B)], [("red_can", CAN_A)],
                 {"spurious": 1}, 0.5, id="student-only"),
    pytest.param([("red_can", CAN_A_SHIFTED)], [("red_can", CAN_A)],
                 {"low_iou": 1}, 0.5, id="shifted-mask"),
    pytest.param([("blue_can", CAN_A)], [("red_can", CAN_A)],
                 {"class_confusion": 1}, 1.0, id="same-region-other-class"),
    pytest.param([("blue_can", CAN_A), ("red_can", DISC)], [("red_can", CAN_A), ("red_can", DISC)],
                 {"class_confusion": 1}, 0.5, id="confusion-beside-agreement"),
    pytest.param([("blue_can", CAN_A_FAR)], [("red_can", CAN_A)],
                 {"missed": 1, "spurious": 1}, 1.0, id="other-class-barely-overlapping"),
    pytest.param([("red_can", CAN_B)], [("red_can", CAN_A)],
                 {"missed": 1, "spurious": 1}, 1.0, id="same-class-elsewhere"),
    pytest.param([("red_can", CAN_A), ("blue_can", CAN_A_SHIFTED), ("red_can", DISC)],
                 [("red_can", CAN_A), ("blue_can", CAN_A), ("red_can", CAN_B)],
                 {"low_iou": 1, "missed": 1, "spurious": 1}, (0.5 + 1 + 1) / 4, id="mixed"),
    pytest.param([], [], NO_REASONS, 0.0, id="both-empty"),
])
def test_reasons_and_score(student: list, teacher: list, expected_counts: dict[str, int],
                           expected_score: float) -> None:
    d = compare(inst(student), inst(teacher))
    assert d.counts == {kind: expected_counts.get(kind, 0) for kind in KINDS}
    assert d.score == pytest.approx(expected_score)
    assert d.queued == (expected_score >= 0.5)
    assert len(d.reasons) == sum(expected_counts.values())


def test_low_iou_records_the_pair_and_its_iou() -> None:
    d = compare(inst([("red_can", CAN_A_SHIFTED)]), inst([("red_can", CAN_A)]))
    (reason,) = d.reasons
    assert (reason.kind, reason.student_index, reason.teacher_index) == ("low_iou", 0, 0)
    assert reason.iou == pytest.approx(0.6)
    assert reason.detail == "low mask IoU 0.60 on red_can"
    assert d.matches == ((0, 0, pytest.approx(0.6)),)


def test_class_confusion_is_one_reason_naming_both_classes() -> None:
    d = compare(inst([("blue_can", CAN_A)]), inst([("red_can", CAN_A)]))
    (reason,) = d.reasons
    assert reason.kind == "class_confusion"
    assert reason.class_name == "blue_can -> red_can"
    assert (reason.student_index, reason.teacher_index, reason.iou) == (0, 0, 1.0)
    assert d.matches == ()


def test_missed_and_spurious_details_are_readable() -> None:
    d = compare(inst([("blue_can", CAN_B)], scores=[0.71]),
                inst([("red_can", CAN_A)], scores=[0.93]))
    assert [(r.kind, r.detail) for r in d.reasons] == [
        ("missed", "missed red_can (teacher 0.93)"),
        ("spurious", "spurious blue_can (student 0.71)")]


def test_overlapping_teacher_duplicates_are_merged_before_matching() -> None:
    # SAM3 returns two overlapping pieces of one can (IoU 1600 / 2400 = 0.67).
    top, bottom = rect(20, 70, 20, 60), rect(30, 80, 20, 60)
    student = inst([("red_can", rect(20, 80, 20, 60))])
    teacher = inst([("red_can", top), ("red_can", bottom)], scores=[0.7, 0.9])
    d = compare(student, teacher)
    assert d.score == 0.0 and d.reasons == ()
    assert len(d.teacher) == 1 and d.teacher.scores.tolist() == [pytest.approx(0.9)]
    assert d.teacher.boxes.tolist() == [[20.0, 20.0, 60.0, 80.0]]
    assert d.matches == ((0, 0, 1.0),)
    unmerged = compare(student, teacher, DisagreementConfig(merge_iou=1.0))
    assert unmerged.counts["missed"] == 1  # without merging, the second piece is a "miss"


def test_merge_overlapping_is_per_class_and_transitive() -> None:
    chain = [rect(20, 60, x, x + 40) for x in (20, 28, 36)]  # neighbours IoU 0.67, ends 0.43
    teacher = inst([("red_can", chain[0]), ("red_can", chain[1]), ("blue_can", CAN_B),
                    ("red_can", chain[2]), ("blue_can", chain[1])],
                   scores=[0.5, 0.6, 0.7, 0.8, 0.9])
    merged = merge_overlapping(teacher, 0.6)
    assert merged.names() == ["red_can", "blue_can", "blue_can"]
    assert merged.masks[0].sum() == 40 * 56 and merged.boxes[0].tolist() == [20, 20, 76, 60]
    assert merged.scores.tolist() == pytest.approx([0.8, 0.7, 0.9])
    separate = inst([("red_can", CAN_A), ("red_can", CAN_B)])
    assert merge_overlapping(separate, 0.6) is separate


def _greedy_matches(iou: np.ndarray, minimum: float) -> int:
    taken: set[tuple[int, int]] = set()
    for flat in np.argsort(-iou, axis=None):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] >= minimum and all(r != a and c != b for a, b in taken):
            taken.add((int(r), int(c)))
    return len(taken)


def test_optimal_assignment_beats_greedy() -> None:
    # IoU: S0-T0 0.62 (the best pair), S0-T1 0.56, S1-T0 0.56, S1-T1 0.17. Greedy takes S0-T0
    # and strands S1; the optimal pairing matches both.
    t0, t1 = rect(20, 60, 40, 100), rect(20, 60, 40, 65)
    s0, s1 = rect(20, 60, 35, 80), rect(20, 60, 50, 130)
    student, teacher = inst([("red_can", s0), ("red_can", s1)]), inst([("red_can", t0),
                                                                         ("red_can", t1)])
    assert _greedy_matches(mask_iou(student.masks, teacher.masks), 0.5) == 1
    d = compare(student, teacher)
    assert [(s, t) for s, t, _ in d.matches] == [(0, 1), (1, 0)]
    assert d.counts == {"missed": 0, "spurious": 0, "low_iou": 2, "class_confusion": 0}


def test_classes_are_matched_by_name_across_class_lists() -> None:
    student = inst([("red_can", CAN_A), ("blue_can", CAN_B)], names=("red_can", "blue_can"))
    teacher = inst([("blue_can", CAN_B), ("red_can", CAN_A), ("box", DISC)],
                   names=("box", "blue_can", "red_can"))
    d = compare(student, teacher)
    assert sorted((s, t) for s, t, _ in d.matches) == [(0, 1), (1, 0)]
    assert [(r.kind, r.class_name) for r in d.reasons] == [("missed", "box")]


@pytest.mark.parametrize(("side", "min_area", "expected_counts"), [
    ("student", 50, NO_REASONS),
    ("teacher", 50, NO_REASONS),
    ("student", 0, {"spurious": 1}),
    ("teacher", 0, {"missed": 1}),
])
def test_tiny_instances_are_ignored(side: str, min_area: int,
                                    expected_counts: dict[str, int]) -> None:
    with_tiny = inst([("red_can", TINY), ("red_can", CAN_A)])
    plain = inst([("red_can", CAN_A)])
    student, teacher = (with_tiny, plain) if side == "student" else (plain, with_tiny)
    d = compare(student, teacher, DisagreementConfig(min_area=min_area))
    assert d.counts == {kind: expected_counts.get(kind, 0) for kind in KINDS}


def test_student_indices_refer_to_the_callers_instances() -> None:
    student = inst([("red_can", TINY), ("blue_can", CAN_B), ("red_can", CAN_A_SHIFTED)])
    d = compare(student, inst([("red_can", CAN_A)]))
    assert [(r.kind, r.student_index) for r in d.reasons] == [("spurious", 1), ("low_iou", 2)]
    assert [(s, t) for s, t, _ in d.matches] == [(2, 0)]


@pytest.mark.parametrize(("min_teacher_score", "expected_missed"), [(0.0, 1), (0.2, 1),
                                                                    (0.21, 0)])
def test_unsure_teacher_instances_are_ignored(min_teacher_score: float,
                                              expected_missed: int) -> None:
    teacher = inst([("red_can", CAN_A), ("blue_can", CAN_B)], scores=[0.9, 0.2])
    d = compare(inst([("red_can", CAN_A)]), teacher,
                DisagreementConfig(min_teacher_score=min_teacher_score))
    assert d.counts["missed"] == expected_missed
    assert len(d.teacher) == 1 + expected_missed


@pytest.mark.parametrize(("threshold", "queued"), [(0.0, True), (0.49, True), (0.5, True),
                                                   (0.5001, False), (1.0, False)])
def test_score_at_threshold_queues(threshold: float, queued: bool) -> None:
    d = compare(inst([("red_can", CAN_A)]), inst([("red_can", CAN_A), ("blue_can", CAN_B)]),
                DisagreementConfig(threshold=threshold))
    assert d.score == 0.5
    assert d.queued is queued


@pytest.mark.parametrize(("low_iou_weight", "expected_score"), [(0.0, 0.0), (0.25, 0.25),
                                                                (1.0, 1.0)])
def test_weights_set_the_cost_of_a_reason(low_iou_weight: float, expected_score: float) -> None:
    d = compare(inst([("red_can", CAN_A_SHIFTED)]), inst([("red_can", CAN_A)]),
                DisagreementConfig(low_iou_weight=low_iou_weight))
    assert d.counts["low_iou"] == 1
    assert d.score == pytest.approx(expected_score)


def test_turning_agreement_into_disagreement_never_lowers_the_score() -> None:
    teacher = inst([("red_can", CAN_A), ("blue_can", CAN_B), ("red_can", DISC)])
    steps = [[("red_can", CAN_A), ("blue_can", CAN_B), ("red_can", DISC)],
             [("red_can", CAN_A_SHIFTED), ("blue_can", CAN_B), ("red_can", DISC)],
             [("red_can", CAN_A_FAR), ("blue_can", CAN_B), ("red_can", DISC)],
             [("red_can", CAN_A_FAR), ("red_can", CAN_B), ("red_can", DISC)],
             [("red_can", CAN_A_FAR), ("red_can", CAN_B)],
             []]
    scores = [compare(inst(s), teacher).score for s in steps]
    assert scores == sorted(scores) and scores[0] == 0.0 and scores[-1] == 1.0


@pytest.mark.parametrize(("student_shape", "teacher_shape"), [((H, W), (2 * H, 2 * W)),
                                                              ((H, W), (W, H))])
def test_image_size_mismatch_is_an_error(student_shape: tuple[int, int],
                                         teacher_shape: tuple[int, int]) -> None:
    student = inst([("red_can", rect(20, 60, 20, 60, student_shape))], shape=student_shape)
    teacher = inst([], shape=teacher_shape)
    with pytest.raises(ImageSizeMismatchError, match=r"student masks are \(120, 160\)") as err:
        compare(student, teacher)
    assert isinstance(err.value, CvAutolabelError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, None),
    ({"match_iou": 1.0, "low_iou": 0.0, "merge_iou": 1.0, "threshold": 0.0}, None),
    ({"missed_weight": 0.0, "class_confusion_weight": 1.0, "min_area": 0}, None),
    ({"match_iou": 0.0}, ConfigError),
    ({"match_iou": 1.1}, ConfigError),
    ({"confusion_iou": 0.0}, ConfigError),
    ({"low_iou": -0.1}, ConfigError),
    ({"merge_iou": 1.5}, ConfigError),
    ({"min_teacher_score": 2.0}, ConfigError),
    ({"threshold": float("nan")}, ConfigError),
    ({"min_area": -1}, ConfigError),
    ({"min_area": 10.5}, ConfigError),
    ({"spurious_weight": 1.5}, ConfigError),
    ({"low_iou_weight": -0.5}, ConfigError),
])
def test_config_validation(kwargs: dict, expected: type[Exception] | None) -> None:
    if expected is None:
        assert DisagreementConfig(**kwargs).weight("missed") == kwargs.get("missed_weight", 1.0)
    else:
        with pytest.raises(expected, match="invalid DisagreementConfig"):
            DisagreementConfig(**kwargs)


def _frame(rng: np.random.Generator, n: int, jitter: int) -> tuple[Instances, Instances]:
    """Return student and teacher instances of n objects on a 480x640 grid, slightly apart."""
    shape, teacher, student = (480, 640), [], []
    for k in range(n):
        cy, cx = 60 + 90 * (k // 5), 64 + 128 * (k % 5)
        name = NAMES[k % 2]
        teacher.append((name, disc(cy, cx, 35, shape)))
        dy, dx = rng.integers(-jitter, jitter + 1, 2)
        student.append((NAMES[(k + (k % 7 == 0)) % 2], disc(cy + dy, cx + dx, 33, shape)))
    return inst(student, shape=shape), inst(teacher, shape=shape)


def test_twenty_against_twenty_at_vga_is_fast() -> None:
    student, teacher = _frame(np.random.default_rng(0), 20, jitter=12)
    d = compare(student, teacher)
    assert d.objects >= 20 and d.counts["class_confusion"] >= 1
    times = []
    for _ in range(20):
        start = time.perf_counter()
        compare(student, teacher)
        times.append(time.perf_counter() - start)
    median_ms = 1e3 * float(np.median(times))
    print(f"compare 20+20 at 480x640: median {median_ms:.2f} ms")
    assert median_ms < 50.0
