"""Durable record of stored frames' embeddings, behind one Protocol and a registry.

The dedup stage decides novelty with an in-memory index (:mod:`cv_autolabel.core.novelty`);
the vector store is the durable record that index is rebuilt from on start-up. So a store
must give: inserts that are durable when they return, a full scan of ``(id, vector)``, a
count, lookups by id, deletes, and a (not time-critical) cosine search.

Backends, chosen by :func:`open_vector_store` from the URI:

=============================================  ===========  ==================================
URI                                            backend      class
=============================================  ===========  ==================================
``":memory:"``                                 ``memory``   :class:`MemoryVectorStore`
a local path (``data/frames.db``, ``/x/y``)    ``milvus``   Milvus Lite directory, in-process
``http://``, ``https://``, ``tcp://`` host     ``milvus``   Milvus server (same pymilvus code)
=============================================  ===========  ==================================

Example:
    >>> import numpy as np
    >>> store = open_vector_store(":memory:", collection="frames", dim=2, embedder_name="toy")
    >>> store.insert([VectorRecord(id=1, vector=np.array([1.0, 0.0], np.float32))])
    >>> store.count(), store.search(np.array([1.0, 0.0], np.float32), limit=1)
    (1, [(1, 1.0)])
    >>> store.close()
"""

from __future__ import annotations

from typing import Any, Callable

from cv_autolabel.core.vectorstores.base import (
    VectorRecord,
    VectorStore,
    check_query,
    check_rows,
)
from cv_autolabel.core.vectorstores.memory import MemoryVectorStore
from cv_autolabel.errors import VectorStoreError


def _milvus_factory(uri: str, **kwargs: Any) -> VectorStore:
    from cv_autolabel.core.vectorstores.milvus import MilvusVectorStore  # noqa: PLC0415

    return MilvusVectorStore(uri, **kwargs)


def _memory_factory(uri: str, **kwargs: Any) -> VectorStore:
    kwargs.pop("token", None)
    kwargs.pop("timeout_s", None)
    return MemoryVectorStore(uri, **kwargs)


#: Backend name -> factory ``(uri, *, collection, dim, embedder_name, token, timeout_s)``.
VECTOR_STORES: dict[str, Callable[..., VectorStore]] = {
    "memory": _memory_factory,
    "milvus": _milvus_factory,
}

_SERVER_SCHEMES = ("http://", "https://", "tcp://")


def backend_for_uri(uri: str) -> str:
    """Return the :data:`VECTOR_STORES` key that serves ``uri``.

    Example:
        >>> [backend_for_uri(u) for u in (":memory:", "data/frames.db", "http://milvus:19530")]
        ['memory', 'milvus', 'milvus']
    """
    if not isinstance(uri, str) or not uri.strip():
        raise VectorStoreError(f"vector store URI must be a non-empty string, got {uri!r}")
    if uri == ":memory:":
        return "memory"
    if uri.lower().startswith(_SERVER_SCHEMES):
        return "milvus"
    if "://" in uri:
        msg = f"unsupported vector store URI {uri!r}: use a local path, ':memory:' or " \
              f"{', '.join(_SERVER_SCHEMES)}"
        raise VectorStoreError(msg)
    return "milvus"


def open_vector_store(uri: str, *, collection: str, dim: int, embedder_name: str,
                      token: str = "", timeout_s: float = 60.0) -> VectorStore:
    """Build the backend for ``uri``, open it and return it (close it when done).

    Args:
        uri: ``":memory:"``, a local Milvus Lite path, or a Milvus server URL.
        collection: collection name; one collection holds one embedding space.
        dim: embedding dimension.
        embedder_name: name of the embedder that produced the vectors; a collection made by
            another embedder or dimension is refused.
        token: Milvus server token (``user:password`` or API key); ignored by local stores.
        timeout_s: upper bound on each Milvus call, so nothing can hang.
    """
    factory = VECTOR_STORES[backend_for_uri(uri)]
    store = factory(uri, collection=collection, dim=dim, embedder_name=embedder_name,
                    token=token, timeout_s=timeout_s)
    store.open()
    return store


__all__ = [
    "VECTOR_STORES",
    "MemoryVectorStore",
    "VectorRecord",
    "VectorStore",
    "backend_for_uri",
    "check_query",
    "check_rows",
    "open_vector_store",
]
