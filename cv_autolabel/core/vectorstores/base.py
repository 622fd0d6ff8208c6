"""The vector-store contract: :class:`VectorRecord`, the :class:`VectorStore` Protocol and
the input checks every backend shares (numpy only, no backend imports)."""

from __future__ import annotations

import json
import operator
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from cv_autolabel.errors import VectorStoreError

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_S = TypeVar("_S", bound="VectorStore")


@dataclass(frozen=True, eq=False)
class VectorRecord:
    """One stored frame: its embedding and where the frame's files live.

    Attributes:
        id: caller-assigned unique id, a signed 64-bit integer (the primary key).
        vector: (dim,) float32 embedding; copied, made contiguous and read-only.
        stamp_ns: header stamp of the frame, integer nanoseconds.
        frame_id: optical frame of the image (``header.frame_id``).
        source: where the frame came from (topic, bag path, ...).
        path: where the frame's files live (image, depth, metadata).
        extra: small JSON-serialisable metadata.

    Records compare by identity (``vector`` is an array); compare fields to test equality.
    """

    id: int
    vector: np.ndarray
    stamp_ns: int = 0
    frame_id: str = ""
    source: str = ""
    path: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _int64(self.id, "id"))
        object.__setattr__(self, "stamp_ns", _int64(self.stamp_ns, "stamp_ns"))
        object.__setattr__(self, "vector", _frozen_vector(self.vector, self.id))
        for name in ("frame_id", "source", "path"):
            if not isinstance(getattr(self, name), str):
                msg = f"record {self.id}: {name} must be a str, got {type(getattr(self, name))}"
                raise VectorStoreError(msg)
        object.__setattr__(self, "extra", dict(self.extra))
        self.extra_json()  # fail at construction, not at insert time, on bad metadata

    def extra_json(self) -> str:
        """Return ``extra`` as compact JSON (raise VectorStoreError if it is not JSON)."""
        try:
            return json.dumps(self.extra, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as err:
            raise VectorStoreError(f"record {self.id}: extra is not JSON: {err}") from err


def _int64(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise VectorStoreError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError as err:
        raise VectorStoreError(f"{name} must be an integer, got {value!r}") from err
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise VectorStoreError(f"{name} {number} does not fit a signed 64-bit integer")
    return number


def _frozen_vector(vector: object, record_id: int) -> np.ndarray:
    array = np.array(vector, dtype=np.float32, copy=True, order="C")
    if array.ndim != 1 or array.size == 0:
        msg = f"record {record_id}: vector must be 1-D and non-empty, got shape {array.shape}"
        raise VectorStoreError(msg)
    if not np.isfinite(array).all():
        raise VectorStoreError(f"record {record_id}: vector has NaN or infinite values")
    array.setflags(write=False)
    return array


_Store = TypeVar("_Store", bound="OpenCloseContext")


class OpenCloseContext:
    """``with store:`` opens the store and closes it on the way out (backends inherit this)."""

    def open(self) -> None:  # pragma: no cover - every backend defines it
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - every backend defines it
        raise NotImplementedError

    def __enter__(self: _Store) -> _Store:
        """Open the store and return it."""
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the store."""
        self.close()


@runtime_checkable
class VectorStore(Protocol):
    """A durable store of :class:`VectorRecord` (one collection, one embedding space).

    Every method may raise :class:`~cv_autolabel.errors.VectorStoreError`. Implementations
    are safe to call from several threads.
    """

    uri: str
    collection: str
    dim: int
    embedder_name: str

    def open(self) -> None:
        """Open (or create) the collection; idempotent."""

    def close(self) -> None:
        """Make everything durable and release the store; idempotent."""

    def __enter__(self: _S) -> _S:
        """Open the store and return it."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the store."""

    def insert(self, rows: Sequence[VectorRecord]) -> None:
        """Store ``rows``; they survive a crash (kill -9) of this process once this returns."""

    def count(self) -> int:
        """Return the number of stored records."""

    def iter_vectors(self, batch_size: int = 1000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids (B,) int64, vectors (B, dim) float32)`` batches of every record."""

    def get(self, ids: Sequence[int]) -> list[VectorRecord]:
        """Return the records of ``ids`` that exist, in the order asked."""

    def search(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """Return up to ``limit`` ``(id, cosine similarity)`` pairs, most similar first."""

    def delete(self, ids: Sequence[int]) -> None:
        """Delete the records of ``ids`` (ids not stored are ignored)."""


def check_query(vector: object, dim: int, limit: int, where: str) -> np.ndarray:
    """Return a search query as a (dim,) float32 array, or raise VectorStoreError.

    Shared by the backends so that both refuse the same bad input the same way.
    """
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape != (dim,):
        raise VectorStoreError(f"{where}: query has {query.size} values, the store holds {dim}-d")
    if not np.isfinite(query).all() or not np.any(query):
        raise VectorStoreError(f"{where}: query must be finite and non-zero")
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise VectorStoreError(f"{where}: limit must be a positive integer, got {limit!r}")
    return query


def check_rows(rows: Sequence[VectorRecord], dim: int, where: str) -> None:
    """Raise VectorStoreError unless ``rows`` are VectorRecords of ``dim`` with unique ids."""
    seen: set[int] = set()
    for row in rows:
        if not isinstance(row, VectorRecord):
            raise VectorStoreError(f"{where}: expected VectorRecord, got {type(row).__name__}")
        if row.vector.shape != (dim,):
            msg = f"{where}: record {row.id} has a {row.vector.size}-d vector, store is {dim}-d"
            raise VectorStoreError(msg)
        if row.id in seen:
            raise VectorStoreError(f"{where}: id {row.id} appears twice in one insert")
        seen.add(row.id)
