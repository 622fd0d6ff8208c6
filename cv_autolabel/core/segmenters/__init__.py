"""Instance segmenters: a Protocol, a registry and a shared input check.

A segmenter turns one RGB image into :class:`~cv_autolabel.core.instances.Instances` with
masks at the image's own size, so the detector, depth fusion and disagreement mining never
need to know which model produced them. Backends live in their own modules and are imported
only when created: importing this package never imports torch, ultralytics or openvino.

Backends:
    ``yolo``: :class:`~cv_autolabel.core.segmenters.yolo_openvino.YoloOpenVINOSegmenter`, an
        ultralytics YOLO-seg export (``format="openvino"``, FP32 or INT8) run by OpenVINO with
        numpy and OpenCV pre- and postprocessing only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.registry import check_rgb as _check_rgb
from cv_autolabel.core.registry import construct, lookup
from cv_autolabel.errors import SegmenterError


@runtime_checkable
class Segmenter(Protocol):
    """What the detector needs from an instance segmentation model.

    Attributes:
        name: identifies the model (e.g. its export directory) in logs and outputs.
        class_names: the model's classes; ``Instances.class_ids`` index into them.
    """

    name: str
    class_names: tuple[str, ...]

    def segment(self, rgb: np.ndarray) -> Instances:
        """Return the instances in one (H, W, 3) uint8 RGB image, masks at (H, W)."""
        ...


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Return ``rgb`` if it is a non-empty (H, W, 3) uint8 image; raise SegmenterError if not."""
    return _check_rgb(rgb, "a segmenter", SegmenterError)


def _construct(cls: Callable[..., Any], name: str, options: dict[str, Any]) -> Any:
    return construct(cls, "segmenter", name, options, SegmenterError)


def _yolo(**options: Any) -> Segmenter:
    # Deferred so that importing the package costs no openvino import.
    from cv_autolabel.core.segmenters.yolo_openvino import YoloOpenVINOSegmenter  # noqa: PLC0415

    return _construct(YoloOpenVINOSegmenter, "yolo", options)


#: Segmenter factories by name; each takes the backend's keyword options.
SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "yolo": _yolo,
}


def create_segmenter(name: str, **options: Any) -> Segmenter:
    """Create the segmenter registered as ``name`` with backend-specific ``options``.

    Raises:
        SegmenterError: ``name`` is not registered, the options do not fit the backend, or
            the backend cannot load its model.

    Example:
        >>> create_segmenter("mask-rcnn")
        Traceback (most recent call last):
        ...
        cv_autolabel.errors.SegmenterError: unknown segmenter 'mask-rcnn'; known segmenters: yolo
    """
    factory = lookup(SEGMENTERS, "segmenter", name, SegmenterError)
    return factory(**options)
