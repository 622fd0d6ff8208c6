"""Batch selection for labelling: the best frame of each visual cluster, not the top-k."""

from __future__ import annotations

import numpy as np
import pytest

from cv_autolabel.core.disagreement import Disagreement, DisagreementConfig, compare
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.selection import (
    MAX_CLASS_WEIGHT,
    class_balance_weights,
    kmeans,
    labelling_priority,
    select_diverse,
)
from cv_autolabel.errors import ConfigError


def _scenes(n_scenes: int, per_scene: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """``per_scene`` noisy views of each of ``n_scenes`` well-separated scenes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_scenes, dim)) * 10
    return np.repeat(centres, per_scene, 0) + rng.normal(size=(n_scenes * per_scene, dim)) * 0.1


def test_kmeans_recovers_separated_scenes_and_is_deterministic() -> None:
    x = _scenes(5, 8)
    labels = kmeans(x, 5, seed=3)
    assert len({tuple(labels[s * 8:(s + 1) * 8]) for s in range(5)}) == 5  # one label per scene
    assert all(len(set(labels[s * 8:(s + 1) * 8])) == 1 for s in range(5))
    assert np.array_equal(labels, kmeans(x, 5, seed=3))


def test_kmeans_keeps_every_cluster_populated_even_with_duplicates() -> None:
    x = np.zeros((6, 3))
    x[5] = 1.0  # five identical points and one other: 4 clusters still all get members
    labels = kmeans(x, 4)
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3]


def test_one_pick_per_scene_even_when_one_scene_holds_all_the_top_scores() -> None:
    x = _scenes(4, 10)
    scores = np.full(40, 0.2)
    scores[:10] = np.linspace(0.9, 1.0, 10)  # scene 0: a new product, every view disagrees
    scores[[15, 27, 33]] = 0.5  # the best view of each other scene
    picks = select_diverse(scores, x, 4)
    assert picks == [9, 15, 27, 33]  # highest first; top-4 would be 9, 8, 7, 6: one scene
    assert select_diverse(scores, x, 40) == sorted(range(40), key=lambda i: (-scores[i], i))


def test_edge_cases() -> None:
    x = _scenes(2, 2)
    assert select_diverse([0.1, 0.2, 0.3, 0.4], x, 0) == []
    assert select_diverse([], np.zeros((0, 4)), 3) == []
    assert select_diverse([0.5, 0.5], x[:2], 5) == [0, 1]  # fewer candidates than k
    with pytest.raises(ConfigError, match="3 scores for 4 embeddings"):
        select_diverse([0.1, 0.2, 0.3], x, 2)
    with pytest.raises(ConfigError, match="k must be"):
        kmeans(x, 5)


def test_identical_looks_spend_the_rest_of_the_budget_on_the_best_scores() -> None:
    from cv_autolabel.core.selection import select_diverse

    same = np.ones((10, 4))
    assert select_diverse(list(range(10)), same, 5) == [9, 8, 7, 6, 5]
    two_looks = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.8, 0.7, 0.6, 0.55]
    # one per look (5 and 4), then the next best scores whatever their look
    assert select_diverse(scores, two_looks, 4) == [5, 6, 7, 4]


def test_class_balance_weights_favour_classes_with_few_labels() -> None:
    names = ["red_can", "blue_can", "green_can"]
    weights = class_balance_weights({"red_can": 300, "blue_can": 100}, names)
    assert weights == {"red_can": 1.0, "blue_can": 3.0, "green_can": MAX_CLASS_WEIGHT}
    assert class_balance_weights({"red_can": 1000, "blue_can": 1}, names[:2])["blue_can"] == 10
    assert class_balance_weights({}, names) == dict.fromkeys(names, 1.0)  # nothing labelled
    assert class_balance_weights({"red_can": -3}, names[:1]) == {"red_can": 1.0}
    with pytest.raises(ConfigError, match="cap"):
        class_balance_weights({"red_can": 1}, names, cap=0.5)


def _frame(student: list[tuple[str, tuple[int, int]]],
           teacher: list[tuple[str, tuple[int, int]]]) -> Disagreement:
    """compare() on 40x40 squares at the given corners, one class per instance."""
    names = ("red_can", "blue_can")

    def instances(items: list[tuple[str, tuple[int, int]]]) -> Instances:
        masks = np.zeros((len(items), 200, 200), bool)
        for k, (_, (y, x)) in enumerate(items):
            masks[k, y:y + 40, x:x + 40] = True
        return Instances.from_masks(masks, np.array([names.index(c) for c, _ in items]),
                                    np.ones(len(items)), names)

    return compare(instances(student), instances(teacher))


def test_labelling_priority_sums_the_weighted_mistakes() -> None:
    corners = [(0, 0), (0, 60), (60, 0), (60, 60), (120, 120)]
    blind = _frame([], [("blue_can", c) for c in corners[:4]])
    assert labelling_priority(blind) == 4.0  # four objects to correct
    # The score is the fraction of objects in disagreement, the priority their number: one
    # miss among two objects scores higher than two among five, but the second frame has
    # more to correct, and ranks first by priority.
    small = _frame([("red_can", corners[0])], [("red_can", c) for c in corners[:2]])
    crowded = _frame([("red_can", c) for c in corners[:3]], [("red_can", c) for c in corners])
    assert small.score == 0.5 and crowded.score == 0.4
    assert labelling_priority(small) == 1.0 and labelling_priority(crowded) == 2.0
    # Class weights: a blue miss counts three red ones; a confusion counts under the
    # teacher's class; a spurious detection under its own.
    weights = {"red_can": 1.0, "blue_can": 3.0}
    assert labelling_priority(blind, weights) == 12.0
    confused = _frame([("red_can", corners[0])], [("blue_can", corners[0])])
    assert [r.kind for r in confused.reasons] == ["class_confusion"]
    assert labelling_priority(confused, weights) == 3.0
    spurious = _frame([("blue_can", corners[0])], [])
    assert labelling_priority(spurious, weights) == 3.0
    assert labelling_priority(_frame([], [])) == 0.0
    low = DisagreementConfig(missed_weight=0.5)
    assert labelling_priority(blind, weights, low) == 6.0  # the reasons' own weights apply
