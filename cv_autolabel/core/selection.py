"""Choose a labelling batch: high disagreement, but not twenty views of one situation.

Taking the ``k`` highest disagreement scores spends a batch on whatever the student fails at
most, and on a robot that is often one situation filmed many times over: in the long-tail
label-efficiency benchmark (``benchmarks/active_learning``), top-k put 21 of its first 24
frames in the 3 recordings where a new product appeared. :func:`select_diverse` is the
batch rule of "diverse mini-batch active learning" (Zhdanov, 2019): cluster the candidates'
image embeddings into ``k`` groups (k-means) and take the highest-scoring frame of each. The
embeddings are the dedup's thumbnail descriptors (no weights needed), so "diverse" means
"looks different", as it does for the dedup.

Measured (long-tail pool, 3 seeds, 2026-11-22): diversity helps the first round or two and
then costs: spreading the batch over every recording also spreads it away from the rare
product, whose mask mAP then grows more slowly (0.156 vs 0.236 after 144 labels; random
0.119). Top-k reached random's final mAP with 74% of the labels, diverse with 91%. So it is
an option (``flush --diverse``), not the default; see the benchmark's README.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cv_autolabel.errors import ConfigError


def kmeans(vectors: np.ndarray, k: int, *, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """Cluster label (0..k-1) of each row of ``vectors``: k-means++ seeding, then Lloyd steps.

    Deterministic for a given ``seed``. Every cluster keeps at least one member (an emptied
    cluster takes the point farthest from its centre).

    Example:
        >>> x = np.array([[0.0], [0.1], [5.0], [5.2]])
        >>> labels = kmeans(x, 2)
        >>> bool(labels[0] == labels[1] != labels[2] == labels[3])
        True
    """
    x = np.asarray(vectors, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in 1..{n}, got {k}")
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.array(centres)
    sq = (x ** 2).sum(1)
    labels = np.full(n, -1)
    for _ in range(iterations):
        dist = np.maximum(sq[:, None] - 2.0 * x @ c.T + (c ** 2).sum(1)[None, :], 0.0)
        new = dist.argmin(1)
        counts = np.bincount(new, minlength=k)
        for j in np.flatnonzero(counts == 0):  # an empty cluster takes the worst-fit point
            fit = dist[np.arange(n), new]
            fit[counts[new] <= 1] = -1.0  # of a cluster that has points to spare (n >= k)
            worst = int(fit.argmax())
            counts[new[worst]] -= 1
            new[worst], counts[j] = j, 1
        if np.array_equal(new, labels):
            break
        labels = new
        c = np.array([x[labels == j].mean(0) for j in range(k)])
    return labels


def select_diverse(scores: Sequence[float], embeddings: np.ndarray, k: int, *,
                   seed: int = 0) -> list[int]:
    """Indices of ``k`` candidates: the highest-scoring one of each of ``k`` k-means clusters of
    ``embeddings`` (ties: the lower index), highest score first. All of them when ``k`` is at
    least the number of candidates.

    Example:
        >>> emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
        >>> select_diverse([0.9, 0.8, 0.5, 0.6], emb, 2)  # top-2 would be 0 and 1: one scene
        [0, 3]
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(embeddings):
        raise ConfigError(f"{len(s)} scores for {len(embeddings)} embeddings")
    if k <= 0 or len(s) == 0:
        return []
    if k >= len(s):
        return sorted(range(len(s)), key=lambda i: (-s[i], i))
    # Fewer distinct looks than k: one cluster per look, the rest of the budget by score
    # (k-means would otherwise split identical points arbitrarily, by index).
    distinct = len(np.unique(np.asarray(embeddings), axis=0))
    clusters = min(k, distinct)
    labels = kmeans(embeddings, clusters, seed=seed)
    picks = []
    for j in range(clusters):
        members = np.flatnonzero(labels == j)
        picks.append(int(members[np.argmax(s[members])]))  # argmax: first of equal scores
    taken = set(picks)
    rest = sorted((i for i in range(len(s)) if i not in taken), key=lambda i: (-s[i], i))
    picks += rest[:k - clusters]
    return sorted(picks, key=lambda i: (-s[i], i))
