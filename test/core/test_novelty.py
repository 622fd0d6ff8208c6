"""The novelty index answers exactly what brute force answers, however large it grows."""

from __future__ import annotations

import numpy as np
import pytest

from cv_autolabel.core.novelty import NoveltyIndex


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _clustered(n: int, dim: int, rng: np.random.Generator, spread: float) -> np.ndarray:
    # Camera streams are clustered: many views near a few places.
    centers = _unit(rng.normal(size=(max(1, n // 50), dim)) + 3.0)
    picks = centers[rng.integers(0, len(centers), n)]
    return _unit(picks + spread * rng.normal(size=(n, dim)) / np.sqrt(dim))


@pytest.mark.parametrize("n", [10, 1500, 5000])
@pytest.mark.parametrize("threshold", [0.9, 0.95, 0.99])
def test_decisions_equal_brute_force(n: int, threshold: float) -> None:
    rng = np.random.default_rng(n)
    dim = 256
    stored = _clustered(n, dim, rng, spread=0.4)
    idx = NoveltyIndex(dim, threshold=threshold, projection_dim=32, fit_after=1000)
    idx.add(np.arange(n) + 100, stored)
    queries = np.vstack([_clustered(300, dim, rng, spread=0.4),
                         stored[rng.integers(0, n, 50)]])  # exact duplicates too
    truth = queries @ stored.T
    for q, sims in zip(queries, truth):
        m = idx.query(q)
        assert m.duplicate == bool(sims.max() >= threshold)
        if m.duplicate:
            assert m.similarity == pytest.approx(float(sims.max()), abs=1e-5)
            assert m.match_id == int(np.argmax(sims)) + 100
        else:
            assert m.similarity < threshold


def test_threshold_is_inclusive_at_the_boundary() -> None:
    idx = NoveltyIndex(2, threshold=0.95)
    idx.add(1, np.array([1.0, 0.0], np.float32))
    at = np.array([0.95, np.sqrt(1 - 0.95**2)], np.float64)
    assert idx.query(at.astype(np.float32), threshold=0.9499).duplicate
    assert not idx.query(np.array([0.9, np.sqrt(1 - 0.81)], np.float32)).duplicate


def test_fitted_index_checks_few_candidates() -> None:
    rng = np.random.default_rng(0)
    dim = 512
    idx = NoveltyIndex(dim, threshold=0.95, projection_dim=64, fit_after=1024)
    idx.add(np.arange(4000), _clustered(4000, dim, rng, spread=1.0))
    far = _clustered(200, dim, rng, spread=1.0)
    checked = [idx.query(q).candidates for q in far]
    assert np.mean(checked) < 0.05 * len(idx)  # the bound prunes almost everything


def test_empty_index_and_bad_shapes() -> None:
    idx = NoveltyIndex(4)
    m = idx.query(_unit(np.ones(4)))
    assert not m.duplicate and m.match_id is None and len(idx) == 0
    with pytest.raises(ValueError, match="dim 4"):
        idx.query(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="vectors of dim 4"):
        idx.add([1, 2], np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="threshold"):
        NoveltyIndex(4, threshold=1.5)


def test_ids_survive_growth_and_refit() -> None:
    rng = np.random.default_rng(1)
    idx = NoveltyIndex(64, capacity=4, fit_after=50, projection_dim=8)
    vecs = _unit(rng.normal(size=(300, 64)))
    for i, v in enumerate(vecs):
        idx.add(1000 + i, v)
    idx.fit(sample=100)
    assert list(idx.ids) == list(range(1000, 1300))
    for i in (0, 77, 299):
        m = idx.query(vecs[i])
        assert m.duplicate and m.match_id == 1000 + i and m.similarity == pytest.approx(1.0)


@pytest.mark.parametrize("fitted", [False, True])
def test_discard_forgets_vectors(fitted: bool) -> None:
    rng = np.random.default_rng(2)
    vecs = _unit(rng.normal(size=(60, 32)))
    idx = NoveltyIndex(32, fit_after=10 if fitted else 10**6, projection_dim=8)
    idx.add(np.arange(60), vecs)
    idx.discard([3, 40])
    assert len(idx) == 58 and 3 not in idx.ids and 40 not in idx.ids
    assert not idx.query(vecs[3]).duplicate
    assert idx.query(vecs[41]).match_id == 41


def test_a_saved_basis_gives_the_same_answers_without_refitting() -> None:
    rng = np.random.default_rng(5)
    dim, n = 256, 3000
    stored = _clustered(n, dim, rng, spread=0.4)
    fitted = NoveltyIndex(dim, projection_dim=32, fit_after=1000)
    fitted.add(np.arange(n), stored)
    reloaded = NoveltyIndex(dim, projection_dim=32, fit_after=1000)
    reloaded.use_basis(fitted.basis)  # what a start-up from the snapshot does
    reloaded.add(fitted.ids, fitted.vectors)
    queries = _clustered(200, dim, rng, spread=0.4)
    for q in queries:
        a, b = fitted.query(q), reloaded.query(q)
        assert (a.duplicate, a.match_id, a.candidates) == (b.duplicate, b.match_id, b.candidates)
    with pytest.raises(ValueError, match="orthonormal"):
        reloaded.use_basis(np.ones((32, dim)))
