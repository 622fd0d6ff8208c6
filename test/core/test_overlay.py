"""Overlays people look at: one class keeps one colour wherever it is drawn."""

from __future__ import annotations

import numpy as np

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.overlay import class_color, draw_instances, review_image


def _one(name_order: tuple[str, ...], name: str) -> Instances:
    mask = np.zeros((1, 60, 80), bool)
    mask[0, 20:40, 20:50] = True
    return Instances.from_masks(mask, [name_order.index(name)], [0.9], name_order)


def test_review_panels_colour_a_class_alike_when_the_models_order_classes_differently() -> None:
    rgb = np.full((60, 80, 3), 128, np.uint8)
    student = _one(("blue_can", "red_can"), "red_can")  # red_can is class 1 here ...
    teacher = _one(("red_can", "blue_can"), "red_can")  # ... and class 0 here
    img = review_image(rgb, student, teacher, ["low IoU"], 0.5)
    left, right = img[30, 35], img[30, 80 + 35]
    assert left.tolist() == right.tolist()
    assert left.tolist() != [128, 128, 128]


def test_draw_instances_colours_by_the_given_class_order() -> None:
    rgb = np.zeros((60, 80, 3), np.uint8)
    inst = _one(("blue_can", "red_can"), "red_can")
    own = draw_instances(rgb, inst, alpha=1.0)[30, 35]
    shared = draw_instances(rgb, inst, alpha=1.0, class_order=["red_can", "blue_can"])[30, 35]
    assert own.tolist() == list(class_color(1))
    assert shared.tolist() == list(class_color(0))
