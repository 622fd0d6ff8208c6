"""In-memory :class:`~cv_autolabel.core.vectorstores.base.VectorStore` (``uri=":memory:"``).

For tests of other components and for runs that need no durable record: nothing survives the
process, so "durable when insert returns" holds only for the life of the object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from cv_autolabel.core.vectorstores.base import (
    OpenCloseContext, VectorRecord, check_query, check_rows,
)
from cv_autolabel.errors import VectorStoreError


class MemoryVectorStore(OpenCloseContext):
    """Dict-backed store with the same contract as the Milvus backend.

    Like Milvus, ``iter_vectors`` walks ids in ascending order and inserting an existing id
    replaces its record.

    Example:
        >>> store = MemoryVectorStore(collection="frames", dim=2, embedder_name="toy")
        >>> with store:
        ...     store.insert([VectorRecord(id=3, vector=np.array([0.0, 2.0], np.float32))])
        ...     store.search(np.array([0.0, 1.0], np.float32), limit=5)
        [(3, 1.0)]
    """

    def __init__(self, uri: str = ":memory:", *, collection: str, dim: int,
                 embedder_name: str) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise VectorStoreError(f"{uri}: dim must be a positive integer, got {dim!r}")
        self.uri = uri
        self.collection = collection
        self.dim = dim
        self.embedder_name = embedder_name
        self._rows: dict[int, VectorRecord] = {}
        self._lock = threading.RLock()
        self._open = False

    def open(self) -> None:
        """Mark the store open (records of an earlier open are kept)."""
        self._open = True

    def close(self) -> None:
        """Mark the store closed; later calls raise VectorStoreError until ``open``."""
        self._open = False

    def insert(self, rows: Sequence[VectorRecord]) -> None:
        """Store ``rows``, replacing records with the same id."""
        check_rows(rows, self.dim, self._where("insert"))
        with self._lock:
            self._check_open()
            self._rows.update((row.id, row) for row in rows)

    def count(self) -> int:
        """Return the number of stored records."""
        with self._lock:
            self._check_open()
            return len(self._rows)

    def iter_vectors(self, batch_size: int = 1000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (B,) int64, vectors (B, dim) float32)`` in ascending id order.

        The batches are a snapshot taken at the first ``next``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise VectorStoreError(f"{self._where('iter_vectors')}: bad batch_size {batch_size!r}")
        with self._lock:
            self._check_open()
            rows = [self._rows[i] for i in sorted(self._rows)]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = np.fromiter((r.id for r in chunk), dtype=np.int64, count=len(chunk))
            yield ids, np.stack([r.vector for r in chunk])

    def get(self, ids: Sequence[int]) -> list[VectorRecord]:
        """Return the stored records of ``ids``, in the order asked; unknown ids are skipped."""
        with self._lock:
            self._check_open()
            return [self._rows[i] for i in dict.fromkeys(int(i) for i in ids) if i in self._rows]

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """Return up to ``limit`` ``(id, cosine similarity)`` pairs, most similar first."""
        query = check_query(vector, self.dim, limit, self._where("search"))
        with self._lock:
            self._check_open()
            rows = list(self._rows.values())
        if not rows:
            return []
        matrix = np.stack([r.vector for r in rows])
        norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(query)
        sims = matrix @ query / np.where(norms > 0, norms, 1.0)
        order = np.argsort(-sims, kind="stable")[:limit]
        return [(rows[i].id, float(sims[i])) for i in order]

    def delete(self, ids: Sequence[int]) -> None:
        """Delete the records of ``ids``; unknown ids are ignored."""
        with self._lock:
            self._check_open()
            for i in ids:
                self._rows.pop(int(i), None)

    def _check_open(self) -> None:
        if not self._open:
            raise VectorStoreError(f"{self._where('use')}: the store is not open")

    def _where(self, action: str) -> str:
        return f"{action} {self.uri} (collection {self.collection!r})"
