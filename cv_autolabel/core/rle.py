"""COCO run-length encoding of masks, and a compact JSON form of ``Instances``.

COCO RLE counts alternate runs of 0s and 1s over the mask read in column-major (Fortran)
order, starting with a run of 0s. pycocotools stores them "compressed" as an ASCII string;
CVAT's COCO importer (via Datumaro) also reads the "uncompressed" form, a list of ints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cv_autolabel.core.instances import Instances
from cv_autolabel.errors import QueueError

#: Version of the JSON written by :func:`instances_to_json`.
INSTANCES_JSON_VERSION = 1


def encode_masks(masks: np.ndarray) -> list[str]:
    """Return the compressed COCO RLE counts (ASCII) of (N, H, W) boolean masks.

    Example:
        >>> m = np.zeros((1, 2, 3), bool); m[0, :, 1] = True
        >>> encode_masks(m)
        ['222']
    """
    if len(masks) == 0:
        return []
    fortran = np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0))
    return [rle["counts"].decode("ascii") for rle in mask_utils.encode(fortran)]


def decode_masks(counts: Sequence[str], height: int, width: int) -> np.ndarray:
    """Return (N, H, W) boolean masks from compressed COCO RLE counts.

    Example:
        >>> decode_masks(["222"], 2, 3)[0].astype(int).tolist()
        [[0, 1, 0], [0, 1, 0]]
    """
    if not counts:
        return np.zeros((0, height, width), bool)
    rles = [{"size": [height, width], "counts": c.encode("ascii")} for c in counts]
    decoded = mask_utils.decode(rles)  # (H, W, N), Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1), dtype=bool)


def uncompressed_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """Return the uncompressed COCO RLE ``{"counts": [...], "size": [h, w]}`` of a mask.

    Example:
        >>> uncompressed_rle(np.array([[0, 1, 1], [0, 1, 0]], bool))
        {'counts': [2, 3, 1], 'size': [2, 3]}
    """
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)  # COCO counts always start with a (possibly empty) run of 0s
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def instances_to_json(instances: Instances) -> str:
    """Serialise instances compactly: class names, size and per instance class, score, box, RLE.

    Example:
        >>> m = np.zeros((1, 2, 3), bool); m[0, :, 1] = True
        >>> inst = Instances.from_masks(m, np.array([0]), np.array([0.5]), ("can",))
        >>> instances_from_json(instances_to_json(inst)).boxes.tolist()
        [[1.0, 0.0, 2.0, 2.0]]
    """
    height, width = instances.image_size
    items = [{"class": name, "score": float(score), "box": [float(v) for v in box],
              "rle": counts}
             for name, score, box, counts in zip(instances.names(), instances.scores,
                                                 instances.boxes, encode_masks(instances.masks))]
    return json.dumps({"v": INSTANCES_JSON_VERSION, "size": [height, width],
                       "class_names": list(instances.class_names), "instances": items},
                      separators=(",", ":"))


def instances_from_json(text: str) -> Instances:
    """Rebuild the ``Instances`` written by :func:`instances_to_json` (masks bit-identical).

    Raises:
        QueueError: the JSON was written by an unknown version of this format.
    """
    data: dict[str, Any] = json.loads(text)
    if data.get("v") != INSTANCES_JSON_VERSION:
        raise QueueError(f"unsupported instances JSON version {data.get('v')!r}")
    height, width = data["size"]
    names = tuple(data["class_names"])
    items = data["instances"]
    masks = decode_masks([it["rle"] for it in items], height, width)
    boxes = np.array([it["box"] for it in items], np.float32).reshape(-1, 4)
    class_ids = np.array([names.index(it["class"]) for it in items], np.int32)
    scores = np.array([it["score"] for it in items], np.float32)
    return Instances(masks, boxes, class_ids, scores, names)
