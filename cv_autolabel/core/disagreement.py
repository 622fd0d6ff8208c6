"""Disagreement mining: find where the student (YOLO) and the teacher (SAM3 or ground truth) differ.

Active learning sends a human only the frames the student gets wrong. :func:`compare` lines up
the student's instances with the teacher's and lists every disagreement as a :class:`Reason`
a reviewer can read; the frame is queued when its score reaches ``threshold``.

Steps, all on masks (boxes only prune the pairs whose IoU is computed):

1. **Clean the teacher.** Drop instances below ``min_teacher_score``, then merge same-class
   instances whose mask IoU exceeds ``merge_iou`` (SAM3 returns duplicates and overlapping
   pieces of one object, which would otherwise each count as a miss), then drop instances
   smaller than ``min_area`` pixels, the student's too: a few pixels is noise, not an object.
2. **Match per class name** (not id: the two models may order their classes differently) by
   an optimal one-to-one assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``)
   that maximises the total IoU of the pairs with IoU >= ``match_iou``. Greedy "best pair
   first" matching can leave an object unmatched that an optimal pairing would match.
3. **Classify.** A match with IoU < ``low_iou`` is a ``low_iou`` reason. Among what is left,
   a student and a teacher instance of different classes overlapping by IoU >=
   ``confusion_iou`` (again paired optimally) are one ``class_confusion``: one object with a
   wrong label, not a miss plus a false alarm. Remaining teacher instances are ``missed``,
   remaining student instances ``spurious``.

**Score.** Every object seen by either side is one unit: a match, a confusion, a miss or a
spurious detection. A unit costs the weight of its reason (0 for a match with IoU >=
``low_iou``), and the score is the mean cost per unit::

    score = sum(weight(reason) for reason in reasons) / (matches + confusions + missed + spurious)

With weights in [0, 1] the score lies in [0, 1]: 0 when every object agrees (and when both
sides are empty), 1 when nothing does and every weight is 1. It is the weighted fraction of
objects the two models disagree on, so it does not depend on how crowded a frame is: one
miss among ten objects scores 0.1, one miss among two scores 0.5. Turning any unit from
agreement into a disagreement (or splitting a low-IoU match into a miss and a spurious
detection) never lowers it. A frame is queued when ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from cv_autolabel.core.instances import Instances, masks_to_boxes
from cv_autolabel.errors import ConfigError, CvAutolabelError

ReasonKind = Literal["missed", "spurious", "low_iou", "class_confusion"]
#: Every reason kind, in the order reasons are listed.
KINDS: tuple[ReasonKind, ...] = ("missed", "spurious", "low_iou", "class_confusion")


class ImageSizeMismatchError(CvAutolabelError, ValueError):
    """The student's and the teacher's masks describe images of different sizes."""


@dataclass(frozen=True)
class DisagreementConfig:
    """Settings of :func:`compare` (see the module docstring for how they are used).

    Attributes:
        match_iou: least mask IoU for a student and a teacher instance of the same class to be
            one object.
        low_iou: a match with IoU below this is a ``low_iou`` disagreement (a value <=
            ``match_iou`` switches that reason off).
        merge_iou: same-class teacher instances with IoU above this are merged first (1.0
            switches merging off).
        confusion_iou: least IoU for an unmatched student and teacher instance of different
            classes to be one object with a wrong class.
        min_area: instances smaller than this many pixels are ignored on both sides.
        min_teacher_score: teacher instances with a lower confidence are ignored.
        missed_weight, spurious_weight, low_iou_weight, class_confusion_weight: cost in
            [0, 1] of one reason of that kind in the score.
        threshold: a frame is queued when its score is >= this (0 queues every frame).
    """

    match_iou: float = 0.5
    low_iou: float = 0.75
    merge_iou: float = 0.6
    confusion_iou: float = 0.5
    min_area: int = 50
    min_teacher_score: float = 0.0
    missed_weight: float = 1.0
    spurious_weight: float = 1.0
    low_iou_weight: float = 0.5
    class_confusion_weight: float = 1.0
    threshold: float = 0.25

    def __post_init__(self) -> None:
        weights = [self.weight(kind) for kind in KINDS]
        checks = {
            "match_iou and confusion_iou must be in (0, 1]":
                0.0 < self.match_iou <= 1.0 and 0.0 < self.confusion_iou <= 1.0,
            "low_iou, merge_iou, min_teacher_score and threshold must be in [0, 1]":
                all(0.0 <= v <= 1.0 for v in (self.low_iou, self.merge_iou,
                                              self.min_teacher_score, self.threshold)),
            "min_area must be an integer >= 0":
                isinstance(self.min_area, (int, np.integer)) and self.min_area >= 0,
            "weights must be in [0, 1]": all(0.0 <= w <= 1.0 for w in weights),
        }
        failed = [text for text, ok in checks.items() if not ok]
        if failed:
            raise ConfigError("invalid DisagreementConfig: " + "; ".join(failed))

    def weight(self, kind: ReasonKind) -> float:
        """Return the score cost of one reason of ``kind``."""
        return float(getattr(self, f"{kind}_weight"))


@dataclass(frozen=True)
class Reason:
    """One disagreement, as a reviewer reads it.

    Attributes:
        kind: ``missed`` (teacher only), ``spurious`` (student only), ``low_iou`` (matched,
            masks differ) or ``class_confusion`` (same object, different class).
        teacher_index: index into :attr:`Disagreement.teacher` (the cleaned teacher), None
            for ``spurious``.
        student_index: index into the student :class:`Instances` given to :func:`compare`,
            None for ``missed``.
        class_name: the object's class; ``"student_class -> teacher_class"`` for a confusion.
        iou: mask IoU of the pair, None for ``missed`` and ``spurious``.
        detail: one human-readable line, e.g. ``"low mask IoU 0.41 on blue_can"``.
    """

    kind: ReasonKind
    teacher_index: int | None
    student_index: int | None
    class_name: str
    iou: float | None
    detail: str


@dataclass(frozen=True, eq=False)  # holds arrays, which have no single truth value
class Disagreement:
    """How far the student is from the teacher on one frame.

    Attributes:
        score: weighted fraction of objects the two disagree on, in [0, 1] (module
            docstring); 0 means full agreement.
        reasons: every disagreement, grouped by kind in the order of :data:`KINDS`, then by
            index.
        matches: ``(student index, teacher index, iou)`` of every same-class match, low-IoU
            ones included, ordered by student index.
        counts: number of reasons of each kind (every kind present, zeros included).
        objects: units the score is averaged over: matches + confusions + missed + spurious.
        queued: ``score >= threshold``.
        teacher: the teacher as compared (low scores dropped, overlaps merged, tiny instances
            dropped); ``teacher_index`` values index it, so a labelling tool can show it.
    """

    score: float
    reasons: tuple[Reason, ...]
    matches: tuple[tuple[int, int, float], ...]
    counts: dict[str, int]
    objects: int
    queued: bool
    teacher: Instances = field(repr=False)


@dataclass(frozen=True, eq=False)
class _Footprints:
    """Tight integer boxes ``x0, y0, x1, y1`` (N, 4) and pixel areas (N,) of some masks.

    ``masks[index[i]]`` is mask i: selecting a subset never copies the (N, H, W) masks,
    which at 640x480 would cost more than the whole comparison.
    """

    masks: np.ndarray
    index: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray

    def select(self, idx: np.ndarray) -> _Footprints:
        """Return the footprints of the masks picked by an index array."""
        return _Footprints(self.masks, self.index[idx], self.boxes[idx], self.areas[idx])

    def mask(self, i: int) -> np.ndarray:
        """Return mask i (H, W)."""
        return self.masks[self.index[i]]


def _footprints(masks: np.ndarray) -> _Footprints:
    """Return the tight boxes and areas of (N, H, W) masks (empty masks get a zero box)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([x0, y0, x1, y1], axis=1) * rows.any(axis=1)[:, None]
    # Counting inside the box reads a few thousand pixels instead of the whole image.
    areas = np.array([np.count_nonzero(m[b[1]:b[3], b[0]:b[2]]) for m, b in zip(masks, boxes)],
                     np.int64)
    return _Footprints(masks, np.arange(len(masks)), boxes.astype(np.int64), areas)


def _pairwise_iou(a: _Footprints, b: _Footprints, allowed: np.ndarray | None = None
                  ) -> np.ndarray:
    """Return the (N, M) mask IoU of ``a`` and ``b``, computed only where boxes overlap.

    A full matrix product reads N x M x H x W values (about 90 ms for 20 x 20 masks at
    640x480); masks of distinct objects rarely share box area, so crops are far cheaper.
    Pairs outside ``allowed`` (N, M) bool are left at 0.
    """
    lo = np.maximum(a.boxes[:, None, :2], b.boxes[None, :, :2])
    hi = np.minimum(a.boxes[:, None, 2:], b.boxes[None, :, 2:])
    todo = (hi > lo).all(axis=2)
    if allowed is not None:
        todo &= allowed
    iou = np.zeros(todo.shape, np.float64)
    for i, j in zip(*np.nonzero(todo)):
        (x0, y0), (x1, y1) = lo[i, j], hi[i, j]
        inter = np.count_nonzero(a.mask(i)[y0:y1, x0:x1] & b.mask(j)[y0:y1, x0:x1])
        iou[i, j] = inter / (a.areas[i] + b.areas[j] - inter)
    return iou


def _overlap_groups(instances: Instances, fp: _Footprints, iou: float) -> list[list[int]]:
    """Return groups of same-class instances linked by IoU > ``iou`` (union-find)."""
    ids = instances.class_ids
    same = np.triu(ids[:, None] == ids[None, :], k=1)
    parent = list(range(len(instances)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(_pairwise_iou(fp, fp, same) > iou)):
        parent[max(root(int(i)), root(int(j)))] = min(root(int(i)), root(int(j)))
    groups: dict[int, list[int]] = {}
    for i in range(len(instances)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _merge(instances: Instances, iou: float) -> tuple[Instances, _Footprints]:
    """Merge overlapping same-class instances; return them with their footprints."""
    fp = _footprints(instances.masks)
    groups = _overlap_groups(instances, fp, iou)
    if len(groups) == len(instances):
        return instances, fp
    masks = np.stack([np.logical_or.reduce(instances.masks[g]) for g in groups])
    boxes = np.stack([instances.boxes[g[0]] if len(g) == 1 else masks_to_boxes(m[None])[0]
                      for g, m in zip(groups, masks)])
    merged = Instances(masks, boxes.astype(np.float32),
                       instances.class_ids[[g[0] for g in groups]],
                       np.array([instances.scores[g].max() for g in groups], np.float32),
                       instances.class_names)
    return merged, _footprints(masks)


def merge_overlapping(instances: Instances, iou: float) -> Instances:
    """Merge same-class instances whose masks overlap by IoU > ``iou``.

    Overlap is transitive (A~B and B~C merge all three, whatever the IoU of A and C); IoUs
    are those of the instances given, not of the growing unions. A merged instance has the
    union of the masks, the highest score, the masks' tight box and the class of its
    members; it takes the place of its first member, so untouched instances keep their order.

    Args:
        instances: the instances to merge (usually the teacher's).
        iou: IoU in [0, 1] that two instances must exceed to merge; 1 merges nothing.

    Returns:
        The merged instances; ``instances`` itself when nothing overlapped.

    Example:
        >>> m = np.zeros((3, 4, 8), bool)
        >>> m[0, :, 0:4] = m[1, :, 1:4] = m[2, :, 1:4] = True
        >>> inst = Instances.from_masks(m, np.array([0, 0, 1]), np.array([0.6, 0.9, 0.8]),
        ...                             ("can", "box"))
        >>> out = merge_overlapping(inst, 0.6)
        >>> out.names(), [round(float(s), 2) for s in out.scores], out.boxes.tolist()
        (['can', 'box'], [0.9, 0.8], [[0.0, 0.0, 4.0, 4.0], [1.0, 0.0, 4.0, 4.0]])
    """
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"merge IoU must be in [0, 1], got {iou}")
    return _merge(instances, iou)[0]


def _assign(gain: np.ndarray, minimum: float) -> list[tuple[int, int, float]]:
    """Return one-to-one ``(row, col, gain)`` pairs maximising the total gain >= ``minimum``."""
    valid = np.where(gain >= minimum, gain, 0.0)
    if not valid.any():
        return []
    rows, cols = linear_sum_assignment(valid, maximize=True)
    return [(int(r), int(c), float(gain[r, c])) for r, c in zip(rows, cols) if valid[r, c] > 0]


def _match_same_class(iou: np.ndarray, s_names: list[str], t_names: list[str],
                      minimum: float) -> list[tuple[int, int, float]]:
    """Return the optimal same-class ``(student, teacher, iou)`` matches, by class name."""
    s_arr, t_arr = np.array(s_names, object), np.array(t_names, object)
    matches = []
    for name in set(s_names) & set(t_names):
        si, ti = np.flatnonzero(s_arr == name), np.flatnonzero(t_arr == name)
        matches += [(int(si[r]), int(ti[c]), v)
                    for r, c, v in _assign(iou[np.ix_(si, ti)], minimum)]
    return sorted(matches)


def _match_confusions(iou: np.ndarray, s_free: list[int], t_free: list[int],
                      s_names: list[str], t_names: list[str], minimum: float
                      ) -> list[tuple[int, int, float]]:
    """Return optimal different-class ``(student, teacher, iou)`` pairs among the unmatched."""
    if not s_free or not t_free:
        return []
    sub = iou[np.ix_(s_free, t_free)].copy()
    same = np.array([[s_names[s] == t_names[t] for t in t_free] for s in s_free])
    sub[same] = 0.0  # an unmatched same-class overlap is a poor match, not a confusion
    return sorted((s_free[r], t_free[c], v) for r, c, v in _assign(sub, minimum))


def _keep(instances: Instances, keep: np.ndarray) -> Instances:
    """Return the instances picked by ``keep`` (N,) bool, without a copy when all are."""
    return instances if keep.all() else instances.select(keep)


def _prepare_teacher(teacher: Instances, config: DisagreementConfig
                     ) -> tuple[Instances, _Footprints]:
    """Drop unsure teacher instances, merge duplicates, then drop tiny ones."""
    merged, fp = _merge(_keep(teacher, teacher.scores >= config.min_teacher_score),
                        config.merge_iou)
    big = fp.areas >= config.min_area
    return _keep(merged, big), fp.select(np.flatnonzero(big))


def _check_sizes(student: Instances, teacher: Instances) -> None:
    """Raise when the two sets of masks belong to images of different sizes."""
    if student.image_size != teacher.image_size:
        raise ImageSizeMismatchError(
            f"student masks are {student.image_size} (H, W) but teacher masks are "
            f"{teacher.image_size}; run both on the same image or resize the masks first")


def _pair_reasons(matches: list[tuple[int, int, float]],
                  confusions: list[tuple[int, int, float]], s_names: list[str],
                  t_names: list[str], low_iou: float) -> list[Reason]:
    """Return the ``low_iou`` and ``class_confusion`` reasons (local student indices)."""
    reasons = [Reason("low_iou", t, s, s_names[s], v, f"low mask IoU {v:.2f} on {s_names[s]}")
               for s, t, v in matches if v < low_iou]
    reasons += [Reason("class_confusion", t, s, f"{s_names[s]} -> {t_names[t]}", v,
                       f"class confusion: student {s_names[s]}, teacher {t_names[t]} "
                       f"(IoU {v:.2f})") for s, t, v in confusions]
    return reasons


def _single_reasons(s_free: list[int], t_free: list[int], s_scores: np.ndarray,
                    t_scores: np.ndarray, s_names: list[str], t_names: list[str]
                    ) -> list[Reason]:
    """Return the ``missed`` and ``spurious`` reasons (local student indices)."""
    reasons = [Reason("missed", t, None, t_names[t], None,
                      f"missed {t_names[t]} (teacher {t_scores[t]:.2f})") for t in t_free]
    reasons += [Reason("spurious", None, s, s_names[s], None,
                       f"spurious {s_names[s]} (student {s_scores[s]:.2f})") for s in s_free]
    return reasons


def _summarise(reasons: list[Reason], matches: list[tuple[int, int, float]],
               teacher: Instances, config: DisagreementConfig) -> Disagreement:
    """Score the reasons and pack the result (indices already global)."""
    counts = {kind: sum(r.kind == kind for r in reasons) for kind in KINDS}
    objects = len(matches) + counts["class_confusion"] + counts["missed"] + counts["spurious"]
    cost = sum(config.weight(r.kind) for r in reasons)
    score = min(1.0, cost / objects) if objects else 0.0  # min(): guard float round-off only
    reasons.sort(key=_reason_order)
    return Disagreement(score, tuple(reasons), tuple(matches), counts, objects,
                        score >= config.threshold, teacher)


def _reason_order(reason: Reason) -> tuple[int, int, int]:
    """Sort key: kind in the order of :data:`KINDS`, then teacher index, then student index."""
    def index(i: int | None) -> int:
        return -1 if i is None else i

    return KINDS.index(reason.kind), index(reason.teacher_index), index(reason.student_index)


def _to_global(reasons: list[Reason], s_index: np.ndarray) -> list[Reason]:
    """Replace local (kept) student indices by indices into the caller's student."""
    return [Reason(r.kind, r.teacher_index,
                   None if r.student_index is None else int(s_index[r.student_index]),
                   r.class_name, r.iou, r.detail) for r in reasons]


def compare(student: Instances, teacher: Instances,
            config: DisagreementConfig = DisagreementConfig()) -> Disagreement:
    """Compare the student's instances of one frame with the teacher's.

    Args:
        student: the student's (YOLO's) instances.
        teacher: the teacher's (SAM3's or ground-truth) instances of the same (H, W) image;
            its ``class_names`` may differ from the student's, classes are matched by name.
        config: thresholds and weights.

    Returns:
        The score, the reasons, the matches and the cleaned teacher (module docstring).

    Raises:
        ImageSizeMismatchError: the two describe images of different sizes (it is both a
            :class:`~cv_autolabel.errors.CvAutolabelError` and a ``ValueError``).

    Example:
        >>> m = np.zeros((2, 40, 60), bool); m[0, 5:25, 5:25] = m[1, 5:25, 35:55] = True
        >>> teacher = Instances.from_masks(m, np.array([0, 1]), np.ones(2), ("red", "blue"))
        >>> student = Instances.from_masks(m[:1], np.array([0]), np.array([0.8]), ("red",))
        >>> d = compare(student, teacher)
        >>> d.score, d.queued, [r.detail for r in d.reasons]
        (0.5, True, ['missed blue (teacher 1.00)'])
    """
    _check_sizes(student, teacher)
    s_fp = _footprints(student.masks)
    s_index = np.flatnonzero(s_fp.areas >= config.min_area)
    s_fp, s_scores = s_fp.select(s_index), student.scores[s_index]
    s_names = [student.class_names[c] for c in student.class_ids[s_index].tolist()]
    t_kept, t_fp = _prepare_teacher(teacher, config)
    t_names = t_kept.names()
    iou = _pairwise_iou(s_fp, t_fp)
    matches = _match_same_class(iou, s_names, t_names, config.match_iou)
    s_free = sorted(set(range(len(s_index))) - {s for s, _, _ in matches})
    t_free = sorted(set(range(len(t_kept))) - {t for _, t, _ in matches})
    confusions = _match_confusions(iou, s_free, t_free, s_names, t_names, config.confusion_iou)
    s_free = sorted(set(s_free) - {s for s, _, _ in confusions})
    t_free = sorted(set(t_free) - {t for _, t, _ in confusions})
    reasons = (_pair_reasons(matches, confusions, s_names, t_names, config.low_iou)
               + _single_reasons(s_free, t_free, s_scores, t_kept.scores, s_names, t_names))
    global_matches = [(int(s_index[s]), t, v) for s, t, v in matches]
    return _summarise(_to_global(reasons, s_index), global_matches, t_kept, config)
