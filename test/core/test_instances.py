"""The shared Instances type: validated shapes, conversions every stage relies on."""

from __future__ import annotations

import numpy as np
import pytest

from cv_autolabel.core.instances import Instances, mask_iou, masks_to_boxes


def _two() -> Instances:
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 3:6, 5:8] = True
    return Instances.from_masks(masks, np.array([1, 0]), np.array([0.9, 0.4]), ("a", "b"))


def test_from_masks_derives_tight_boxes() -> None:
    inst = _two()
    assert inst.boxes.tolist() == [[1, 1, 4, 3], [5, 3, 8, 6]]
    assert inst.names() == ["b", "a"] and len(inst) == 2 and inst.image_size == (6, 8)


@pytest.mark.parametrize(("change", "message"), [
    ({"masks": np.zeros((2, 6, 8), np.uint8)}, "bool"),
    ({"boxes": np.zeros((3, 4), np.float32)}, "boxes"),
    ({"scores": np.zeros(1, np.float32)}, "scores"),
    ({"class_ids": np.array([0, 5], np.int32)}, "index class_names"),
])
def test_invalid_shapes_raise(change: dict, message: str) -> None:
    inst = _two()
    fields = {k: getattr(inst, k) for k in ("masks", "boxes", "class_ids", "scores",
                                            "class_names")}
    with pytest.raises(ValueError, match=message):
        Instances(**{**fields, **change})


def test_select_and_empty() -> None:
    inst = _two()
    assert inst.select(inst.scores > 0.5).names() == ["b"]
    assert inst.select([1, 0]).names() == ["a", "b"]
    empty = Instances.empty(6, 8, ("a",))
    assert len(empty) == 0 and empty.masks.shape == (0, 6, 8)


def test_from_label_image_keeps_configured_classes() -> None:
    labels = np.zeros((5, 5), np.uint16)
    labels[0:2, 0:2] = 3
    labels[3:5, 3:5] = 7
    labels[0, 4] = 9
    inst = Instances.from_label_image(labels, {3: "red_can", 7: "box", 9: "blue_can"},
                                      ("red_can", "blue_can"))
    assert inst.names() == ["red_can", "blue_can"]
    assert inst.masks[0].sum() == 4 and np.all(inst.scores == 1)
    assert len(Instances.from_label_image(labels, {3: "red_can"}, ("red_can",),
                                          min_pixels=5)) == 0


def test_mask_iou_and_boxes() -> None:
    inst = _two()
    iou = mask_iou(inst.masks, inst.masks)
    assert np.allclose(np.diag(iou), 1.0) and iou[0, 1] == 0.0
    assert masks_to_boxes(np.zeros((1, 3, 3), bool)).tolist() == [[0, 0, 0, 0]]


def test_unletterbox_masks_crops_padding_of_non_square_images() -> None:
    from cv_autolabel.core.instances import unletterbox_masks

    # A 480x640 image letterboxed into 640x640: 80 rows of padding above and below.
    letterboxed = np.zeros((1, 640, 640), bool)
    letterboxed[0, 80:160, 0:64] = True  # the image's top-left 80x64 corner
    out = unletterbox_masks(letterboxed, (480, 640))
    assert out.shape == (1, 480, 640)
    ys, xs = np.nonzero(out[0])
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (0, 79, 0, 63)
