"""Batch selection for labelling: the best frame of each visual cluster, not the top-k."""

from __future__ import annotations

import numpy as np
import pytest

from cv_autolabel.core.selection import kmeans, select_diverse
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
