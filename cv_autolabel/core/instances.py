"""``Instances``: the one instance-segmentation value type every stage speaks.

The student (YOLO on OpenVINO), the teacher (SAM3 or ground truth), disagreement mining, COCO
export and depth fusion all take and return this type, so none of them needs to know where
the others' results came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Instances:
    """N instance masks of one (H, W) image with boxes, classes and scores.

    Attributes:
        masks: (N, H, W) bool, full image size.
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in pixels (x2, y2 exclusive edges).
        class_ids: (N,) int32 indices into ``class_names``.
        scores: (N,) float32 confidences in [0, 1] (1 for ground truth).
        class_names: the model's class list; ``class_names[class_ids[i]]`` names instance i.

    Example:
        >>> m = np.zeros((1, 4, 6), bool); m[0, 1:3, 2:5] = True
        >>> inst = Instances.from_masks(m, np.array([0]), np.array([0.9]), ("can",))
        >>> inst.boxes.tolist(), inst.names()
        ([[2.0, 1.0, 5.0, 3.0]], ['can'])
    """

    masks: np.ndarray
    boxes: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.class_ids)
        problems = []
        if self.masks.ndim != 3 or self.masks.shape[0] != n or self.masks.dtype != np.bool_:
            problems.append(f"masks must be (N, H, W) bool, got {self.masks.shape} "
                            f"{self.masks.dtype}")
        if self.boxes.shape != (n, 4):
            problems.append(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.scores.shape != (n,) or self.class_ids.shape != (n,):
            problems.append(f"class_ids and scores must be ({n},)")
        if n and (self.class_ids.min() < 0 or self.class_ids.max() >= len(self.class_names)):
            problems.append(f"class ids must index class_names ({len(self.class_names)} names)")
        if problems:
            raise ValueError("invalid Instances: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.class_ids)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the masks."""
        return int(self.masks.shape[1]), int(self.masks.shape[2])

    def names(self) -> list[str]:
        """Return the class name of every instance."""
        return [self.class_names[i] for i in self.class_ids.tolist()]

    def select(self, keep: np.ndarray | Sequence[int]) -> Instances:
        """Return the instances picked by a boolean mask or an index list."""
        idx = np.asarray(keep)
        if idx.dtype == np.bool_:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return Instances(self.masks[idx], self.boxes[idx], self.class_ids[idx],
                         self.scores[idx], self.class_names)

    @classmethod
    def empty(cls, height: int, width: int, class_names: Sequence[str]) -> Instances:
        """Return zero instances for an (H, W) image."""
        return cls(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32),
                   np.zeros(0, np.int32), np.zeros(0, np.float32), tuple(class_names))

    @classmethod
    def from_masks(cls, masks: np.ndarray, class_ids: np.ndarray, scores: np.ndarray,
                   class_names: Sequence[str]) -> Instances:
        """Build instances from masks alone; boxes are the masks' tight bounds."""
        masks = np.asarray(masks, bool)
        return cls(masks, masks_to_boxes(masks), np.asarray(class_ids, np.int32),
                   np.asarray(scores, np.float32), tuple(class_names))

    @classmethod
    def from_label_image(cls, labels: np.ndarray, classes: dict[int, str],
                         class_names: Sequence[str], min_pixels: int = 1) -> Instances:
        """Build instances from an instance-id image (0 = background).

        Only ids listed in ``classes`` whose class is in ``class_names`` are kept, so
        distractors of a synthetic world can be left out; scores are 1.
        """
        names = tuple(class_names)
        ids = [i for i in np.unique(labels).tolist()
               if i and classes.get(i) in names and int((labels == i).sum()) >= min_pixels]
        if not ids:
            return cls.empty(*labels.shape, names)
        masks = np.stack([labels == i for i in ids])
        cids = np.array([names.index(classes[i]) for i in ids], np.int32)
        return cls.from_masks(masks, cids, np.ones(len(ids), np.float32), names)

    @classmethod
    def from_ultralytics(cls, result: Any) -> Instances:
        """Convert one ultralytics ``Results`` (segmentation) without importing ultralytics."""
        names = tuple(result.names[i] for i in sorted(result.names))
        h, w = result.orig_shape
        if result.masks is None or len(result.boxes) == 0:
            return cls.empty(h, w, names)
        masks = result.masks.data.cpu().numpy() > 0.5
        if masks.shape[1:] != (h, w):  # ultralytics keeps masks at the letterbox size
            masks = unletterbox_masks(masks, (h, w))
        return cls(masks, result.boxes.xyxy.cpu().numpy().astype(np.float32),
                   result.boxes.cls.cpu().numpy().astype(np.int32),
                   result.boxes.conf.cpu().numpy().astype(np.float32), names)


def unletterbox_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Map (N, mh, mw) masks of a centre-letterboxed input back to an (H, W) image.

    The letterbox scaled the image by ``min(mh / H, mw / W)`` and padded it equally on both
    sides; the padding is cropped before resizing, so non-square images keep their geometry.
    """
    import cv2  # noqa: PLC0415

    h, w = shape
    mh, mw = masks.shape[1:]
    gain = min(mh / h, mw / w)
    pad_y, pad_x = (mh - h * gain) / 2, (mw - w * gain) / 2
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    bottom, right = mh - int(round(pad_y + 0.1)), mw - int(round(pad_x + 0.1))
    return np.stack([cv2.resize(m[top:bottom, left:right].astype(np.uint8), (w, h),
                                interpolation=cv2.INTER_NEAREST) > 0 for m in masks])


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Return (N, 4) float32 tight ``x1, y1, x2, y2`` boxes of (N, H, W) masks (0 if empty).

    Example:
        >>> m = np.zeros((1, 3, 3), bool); m[0, 1, 2] = True
        >>> masks_to_boxes(m).tolist()
        [[2.0, 1.0, 3.0, 2.0]]
    """
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys = np.flatnonzero(m.any(axis=1))
        xs = np.flatnonzero(m.any(axis=0))
        if ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the (N, M) IoU matrix of (N, H, W) and (M, H, W) boolean masks.

    Example:
        >>> x = np.zeros((1, 2, 2), bool); x[0, 0] = True
        >>> mask_iou(x, np.ones((1, 2, 2), bool)).tolist()
        [[0.5]]
    """
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)
