"""Exact nearest-neighbour novelty test that stays fast as the store grows.

The dedup decision is "is any stored embedding at cosine similarity >= threshold?". Asking
Milvus Lite per frame costs hundreds of milliseconds at 20k vectors (DESIGN.md), and a
brute-force float32 scan over 100k x 2048 vectors reads 800 MB per frame. This index answers
exactly in a few milliseconds with a bound that never misses a duplicate:

For unit vectors ``a``, ``b`` and an orthonormal projection ``P`` (k x d) with complement
``Q``, ``a.b = (Pa).(Pb) + (Qa).(Qb)`` and, by Cauchy-Schwarz,
``(Qa).(Qb) <= |Qa| |Qb| = sqrt(1 - |Pa|^2) sqrt(1 - |Pb|^2)``. The index keeps ``Pa`` and the
residual norm ``|Qa|`` of every stored vector; a query computes the upper bound for all of
them with one small (N x k) product and checks the full vectors only for the few whose bound
reaches the threshold. The bound holds for *any* orthonormal ``P``; fitting ``P`` to the data
(PCA of the first stored vectors) only makes it tight, so candidates are rare.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Added to every bound so float32 rounding can never turn a true duplicate into a miss.
_BOUND_SLACK = 1e-4


@dataclass(frozen=True)
class Match:
    """Result of a novelty query.

    Attributes:
        similarity: exact cosine similarity of the best stored match when one was checked
            exactly; otherwise an upper bound below the threshold (the frame is novel).
        match_id: id of the best exactly-checked stored vector, None if nothing was checked.
        duplicate: similarity >= threshold.
        candidates: how many stored vectors needed an exact check.
    """

    similarity: float
    match_id: int | None
    duplicate: bool
    candidates: int


class NoveltyIndex:
    """In-memory index of unit vectors answering "max cosine similarity >= threshold?" exactly.

    Example:
        >>> idx = NoveltyIndex(dim=3, threshold=0.95)
        >>> idx.add(7, np.array([1.0, 0.0, 0.0], np.float32))
        >>> idx.query(np.array([0.99, 0.14, 0.0], np.float32)).duplicate
        True
        >>> idx.query(np.array([0.0, 1.0, 0.0], np.float32)).duplicate
        False
    """

    def __init__(self, dim: int, *, threshold: float = 0.95, projection_dim: int = 128,
                 fit_after: int = 1024, capacity: int = 1024) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.dim, self.threshold = dim, float(threshold)
        self.k = min(projection_dim, dim)
        self.fit_after = fit_after
        self._n = 0
        self._ids = np.zeros(capacity, np.int64)
        self._full = np.zeros((capacity, dim), np.float32)
        self._proj: np.ndarray | None = None        # (capacity, k), once fitted
        self._resid = np.zeros(capacity, np.float32)
        self._basis: np.ndarray | None = None       # (k, dim), orthonormal rows

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored vectors, in insertion order."""
        return self._ids[: self._n].copy()

    @property
    def vectors(self) -> np.ndarray:
        """The stored (n, dim) float32 vectors, in the order of :attr:`ids` (a read-only view)."""
        view = self._full[: self._n]
        view.flags.writeable = False
        return view

    def query(self, vector: np.ndarray, threshold: float | None = None) -> Match:
        """Return the best match of a unit ``vector`` (dim,) against everything stored."""
        # Compare in float32, the precision embeddings live in: a similarity that equals the
        # threshold must count as "at" it, not fall just short after rounding.
        t = np.float32(self.threshold if threshold is None else threshold)
        v = self._checked(vector)
        if self._n == 0:
            return Match(-1.0, None, False, 0)
        bound = self._bounds(v)
        if bound is None:  # not fitted yet: the store is small, check everything exactly
            rows = np.arange(self._n)
        else:
            rows = np.flatnonzero(bound >= t)
            if rows.size == 0:
                return Match(float(bound.max()), None, False, 0)
        sims = self._full[rows] @ v
        best = int(np.argmax(sims))
        return Match(float(sims[best]), int(self._ids[rows[best]]), bool(sims[best] >= t),
                     int(rows.size))

    def add(self, ids: int | np.ndarray, vectors: np.ndarray) -> None:
        """Store unit ``vectors`` (N, dim) (or one (dim,)) under ``ids`` without checking them."""
        ids = np.atleast_1d(np.asarray(ids, np.int64))
        vecs = np.atleast_2d(np.asarray(vectors, np.float32))
        if vecs.shape != (ids.size, self.dim):
            raise ValueError(f"expected {ids.size} vectors of dim {self.dim}, got {vecs.shape}")
        self._grow(self._n + ids.size)
        lo, hi = self._n, self._n + ids.size
        self._ids[lo:hi], self._full[lo:hi] = ids, vecs
        self._n = hi
        if self._basis is not None:
            self._project(lo, hi)
        elif self._n >= self.fit_after:
            self.fit()

    def discard(self, ids: list[int] | np.ndarray) -> None:
        """Forget the vectors stored under ``ids`` (e.g. frames that failed to persist)."""
        drop = np.isin(self._ids[: self._n], np.asarray(ids, np.int64))
        if not drop.any():
            return
        keep = np.flatnonzero(~drop)
        n = keep.size
        self._ids[:n], self._full[:n], self._resid[:n] = (
            self._ids[keep], self._full[keep], self._resid[keep])
        if self._proj is not None:
            self._proj[:n] = self._proj[keep]
        self._n = n

    @property
    def basis(self) -> np.ndarray | None:
        """The fitted (k, dim) projection basis, None before the first fit."""
        return None if self._basis is None else self._basis.copy()

    def use_basis(self, basis: np.ndarray) -> None:
        """Adopt a basis fitted earlier (a saved index) instead of fitting one.

        Any orthonormal basis keeps the answers exact; one fitted to similar vectors keeps
        the pruning effective.

        Raises:
            ValueError: ``basis`` is not (k, dim) with orthonormal rows.
        """
        basis = np.asarray(basis, np.float32)
        if basis.shape != (self.k, self.dim) or not np.allclose(
                basis @ basis.T, np.eye(self.k), atol=1e-3):
            raise ValueError(f"a basis must be ({self.k}, {self.dim}) with orthonormal rows")
        self._basis = basis
        self._proj = np.zeros((self._full.shape[0], self.k), np.float32)
        self._project(0, self._n)

    def fit(self, sample: int = 4096, seed: int = 0) -> None:
        """Fit the projection to (a sample of) the stored vectors and re-project all of them."""
        if self._n == 0:
            return
        rng = np.random.default_rng(seed)
        rows = rng.choice(self._n, size=min(sample, self._n), replace=False)
        _, _, vt = np.linalg.svd(self._full[rows].astype(np.float64), full_matrices=False)
        basis = np.zeros((self.k, self.dim))
        basis[: min(self.k, vt.shape[0])] = vt[: self.k]
        if vt.shape[0] < self.k:  # fewer samples than k: complete with an orthonormal basis
            basis = _complete_orthonormal(basis, vt.shape[0], rng)
        self._basis = basis.astype(np.float32)
        self._proj = np.zeros((self._full.shape[0], self.k), np.float32)
        self._project(0, self._n)

    def _bounds(self, v: np.ndarray) -> np.ndarray | None:
        """Return upper bounds (N,) of every stored vector's similarity to ``v``."""
        if self._basis is None or self._proj is None:
            return None
        pv = self._basis @ v
        rv = np.float32(np.sqrt(max(0.0, 1.0 - float(pv @ pv))))
        bound = self._proj[: self._n] @ pv
        bound += self._resid[: self._n] * rv
        bound += _BOUND_SLACK
        return bound

    def _project(self, lo: int, hi: int) -> None:
        assert self._basis is not None and self._proj is not None
        p = self._full[lo:hi] @ self._basis.T
        self._proj[lo:hi] = p
        norms = np.einsum("ij,ij->i", self._full[lo:hi], self._full[lo:hi])
        self._resid[lo:hi] = np.sqrt(np.clip(norms - np.einsum("ij,ij->i", p, p), 0.0, None))

    def _grow(self, needed: int) -> None:
        cap = self._full.shape[0]
        if needed <= cap:
            return
        new = max(needed, 2 * cap)
        self._ids = np.resize(self._ids, new)
        self._full = _resized(self._full, new)
        self._resid = np.resize(self._resid, new)
        if self._proj is not None:
            self._proj = _resized(self._proj, new)

    def _checked(self, vector: np.ndarray) -> np.ndarray:
        v = np.asarray(vector, np.float32).reshape(-1)
        if v.size != self.dim:
            raise ValueError(f"expected a vector of dim {self.dim}, got {v.size}")
        return v


def _resized(a: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def _complete_orthonormal(basis: np.ndarray, have: int, rng: np.random.Generator) -> np.ndarray:
    filler = rng.normal(size=(basis.shape[0] - have, basis.shape[1]))
    q, _ = np.linalg.qr(np.vstack([basis[:have], filler]).T)
    return q.T[: basis.shape[0]]
