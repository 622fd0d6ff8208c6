"""Choose a labelling batch: the frames most worth a person's time, not twenty views of one.

:func:`labelling_priority` ranks the annotation queue: a frame's disagreements summed, each
weighted by its class's :func:`class_balance_weights` (inverse frequency in the student's
training labels), so the mistakes on a product the student has few labels of come first.

Taking the ``k`` highest priorities spends a batch on whatever the student fails at
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
0.119). Top-k by score reached random's final mAP with 74% of the labels, diverse with 91%.
So it is an option (``flush --diverse``), not the default. Top-k by priority, on a pool where
the new product is rarer still: 72% (by score 69%), with the new product's mAP 0.247 after
144 labels against 0.187 by score and 0.077 for random; see the benchmark's README.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cv_autolabel.core.disagreement import Disagreement, DisagreementConfig
from cv_autolabel.errors import ConfigError

#: The most a class's balance weight can be: a class with no labels yet gets this.
MAX_CLASS_WEIGHT = 10.0


def class_balance_weights(counts: Mapping[str, int], class_names: Sequence[str], *,
                          cap: float = MAX_CLASS_WEIGHT) -> dict[str, float]:
    """Inverse-frequency weight of each class from the instances labelled so far.

    The best-labelled class weighs 1, a class with half as many instances 2, and so on up to
    ``cap`` (a class with none gets ``cap``). Without any labels every class weighs 1.

    Example:
        >>> class_balance_weights({"red_can": 100, "blue_can": 25}, ["red_can", "blue_can"])
        {'red_can': 1.0, 'blue_can': 4.0}
        >>> class_balance_weights({"red_can": 100}, ["red_can", "blue_can"])
        {'red_can': 1.0, 'blue_can': 10.0}
    """
    if cap < 1.0:
        raise ConfigError(f"cap must be >= 1, got {cap}")
    n = {c: max(0, int(counts.get(c, 0))) for c in class_names}
    most = max(n.values(), default=0)
    if most == 0:
        return dict.fromkeys(class_names, 1.0)
    return {c: min(cap, most / k) if k else cap for c, k in n.items()}


def labelling_priority(result: Disagreement, class_weights: Mapping[str, float] | None = None,
                       config: DisagreementConfig = DisagreementConfig()) -> float:
    """How much labelling a frame is worth: its disagreements, each costing its reason's weight
    times its class's weight (1 for a class not in ``class_weights``), summed.

    Unlike :attr:`Disagreement.score` (the *fraction* of objects in disagreement, which the
    queueing threshold reads), the sum grows with the number of objects a person would correct,
    and with ``class_weights`` from :func:`class_balance_weights` the objects of classes the
    student has seen few labels of count more: a frame with four missed cans of a new product
    outranks one with four missed cans of the usual stock.
    A class confusion counts under the teacher's class (``"student -> teacher"``).
    """
    weights = class_weights or {}
    return float(sum(config.weight(r.kind)
                     * weights.get(r.class_name.rsplit(" -> ", 1)[-1], 1.0)
                     for r in result.reasons))


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
