"""Draw instances on an image for humans: debug overlays and review aids."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cv_autolabel.core.instances import Instances

#: Distinct, colour-blind-friendly RGB colours (Okabe-Ito), indexed by class id.
PALETTE = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167), (120, 120, 120))


def class_color(class_id: int) -> tuple[int, int, int]:
    """Return the RGB colour of a class id."""
    return PALETTE[class_id % len(PALETTE)]


def draw_instances(rgb: np.ndarray, instances: Instances,
                   labels: Sequence[str] | None = None, alpha: float = 0.45,
                   class_order: Sequence[str] | None = None) -> np.ndarray:
    """Return a copy of ``rgb`` with masks blended, outlines, boxes and one label each.

    Args:
        rgb: (H, W, 3) uint8 RGB sized like the instances' masks.
        instances: what to draw.
        labels: text per instance (default: "class score").
        alpha: mask opacity.
        class_order: class names whose positions pick the colours (default: the instances'
            own ``class_names``), so two models with different class lists can share colours.
    """
    out = rgb.copy()
    if len(instances) == 0:
        return out
    texts = labels or [f"{n} {s:.2f}" for n, s in zip(instances.names(), instances.scores)]
    order = list(class_order or instances.class_names)
    colors = np.array([class_color(order.index(n) if n in order else len(order))
                       for n in instances.names()], np.float32)
    for mask, color in zip(instances.masks, colors):
        out[mask] = (out[mask] * (1 - alpha) + color * alpha).astype(np.uint8)
    for mask, box, color, text in zip(instances.masks, instances.boxes, colors, texts):
        c = tuple(int(v) for v in color)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, c, 1)
        x1, y1 = int(box[0]), int(box[1])
        _label(out, text, (x1, max(12, y1 - 3)), c)
    return out


def _label(img: np.ndarray, text: str, origin: tuple[int, int], color: tuple) -> None:
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    x, y = origin
    cv2.rectangle(img, (x, y - h - 3), (x + w + 2, y + 2), color, -1)
    cv2.putText(img, text, (x + 1, y - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)


def review_image(rgb: np.ndarray, student: Instances, teacher: Instances,
                 reasons: Sequence[str], priority: float) -> np.ndarray:
    """Return a side-by-side review aid: student | teacher, with a legend and the reasons.

    Args:
        rgb: (H, W, 3) uint8 RGB frame.
        student: the student's instances (left panel).
        teacher: the teacher's instances (right panel).
        reasons: one line per disagreement (``Reason.detail``).
        priority: the frame's labelling priority (its rank in the annotation queue).
    """
    h, w = rgb.shape[:2]
    classes = list(dict.fromkeys(teacher.class_names + student.class_names))
    left = draw_instances(rgb, student, class_order=classes)  # a class has one colour
    right = draw_instances(rgb, teacher, class_order=classes)
    for panel, title in ((left, f"student ({len(student)})"), (right, f"teacher ({len(teacher)})")):
        _label(panel, title, (4, 16), (255, 255, 255))
    lines = [f"labelling priority {priority:.2f}"] + list(reasons)[:12]
    if len(reasons) > 12:
        lines.append(f"... and {len(reasons) - 12} more")
    footer = np.full((18 * (len(lines) + 1) + 8, 2 * w, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(footer, text, (6, 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    x = 6
    for idx, name in enumerate(classes):
        cv2.rectangle(footer, (x, footer.shape[0] - 14), (x + 10, footer.shape[0] - 4),
                      class_color(idx), -1)
        cv2.putText(footer, name, (x + 14, footer.shape[0] - 4), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
        x += 20 + 8 * len(name)
    return np.vstack([np.hstack([left, right]), footer])
