"""Image embedders for the dedup stage: a Protocol, a registry and shared helpers.

Dedup compares frames by the cosine similarity of their embeddings, so every embedder returns
L2-normalised float32 vectors and cosine similarity is a plain dot product. Backends live in
their own modules and are imported only when created: importing this package never imports
torch or openvino.

Backends:
    ``thumbnail``: :class:`~cv_autolabel.core.embedders.thumbnail.ThumbnailEmbedder`, a
        model-free descriptor of small blurred thumbnails (works everywhere, no weights).
    ``resnet50``: :class:`~cv_autolabel.core.embedders.resnet50.ResNet50Embedder`, ImageNet
        ResNet50 features run by OpenVINO (FP32 or INT8), converted once and cached on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cv_autolabel.core.registry import check_rgb as _check_rgb
from cv_autolabel.core.registry import construct, lookup
from cv_autolabel.errors import EmbedderError


@runtime_checkable
class Embedder(Protocol):
    """What the dedup stage needs from an image embedder.

    Attributes:
        name: stable identifier of the embedding space; it changes whenever embeddings stop
            being comparable (other weights, precision, input size or descriptor version), so
            a vector store can refuse to mix embeddings of different models.
        dim: length of every embedding.
    """

    name: str
    dim: int

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Return the (dim,) float32 unit-norm embedding of one (H, W, 3) uint8 RGB image."""
        ...

    def embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return (N, dim) float32 embeddings with unit-norm rows, one per RGB image."""
        ...


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Return ``x`` (dim,) or (N, dim) as float32 with every row scaled to unit L2 norm.

    Rows whose norm is below ``eps`` are returned unchanged (all zeros stay zeros) rather than
    divided by zero.

    Example:
        >>> l2_normalise(np.array([[3.0, 4.0], [0.0, 2.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Return ``rgb`` if it is a non-empty (H, W, 3) uint8 image; raise EmbedderError if not."""
    return _check_rgb(rgb, "an embedder", EmbedderError)


def _construct(cls: Callable[..., Any], name: str, options: dict[str, Any]) -> Any:
    return construct(cls, "embedder", name, options, EmbedderError)


def _thumbnail(**options: Any) -> Embedder:
    from cv_autolabel.core.embedders.thumbnail import ThumbnailEmbedder  # noqa: PLC0415

    return _construct(ThumbnailEmbedder, "thumbnail", options)


def _resnet50(**options: Any) -> Embedder:
    # Deferred so that only a ResNet50 user pays for openvino (and torch on a first conversion).
    from cv_autolabel.core.embedders.resnet50 import ResNet50Embedder  # noqa: PLC0415

    return _construct(ResNet50Embedder, "resnet50", options)


#: Embedder factories by name; each takes the backend's keyword options.
EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "resnet50": _resnet50,
    "thumbnail": _thumbnail,
}


def create_embedder(name: str, **options: Any) -> Embedder:
    """Create the embedder registered as ``name`` with backend-specific ``options``.

    Raises:
        EmbedderError: ``name`` is not registered, or the backend cannot be built.

    Example:
        >>> create_embedder("thumbnail").dim > 0
        True
    """
    factory = lookup(EMBEDDERS, "embedder", name, EmbedderError)
    return factory(**options)
