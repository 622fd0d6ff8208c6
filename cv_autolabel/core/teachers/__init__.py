"""Teachers: text-prompted segmenters whose masks the student is measured against.

A teacher turns a :class:`~cv_autolabel.core.types.Frame` into
:class:`~cv_autolabel.core.instances.Instances` over the configured classes. Backends:

- ``sam3``: ultralytics' SAM3 semantic predictor, one or more text prompts per class
  (:mod:`cv_autolabel.core.teachers.sam3`); weights are gated and must be on disk.
- ``groundtruth``: the synthetic world's truth (``cv_autolabel.ros.ground_truth``), for the
  demo, tests and benchmarks where SAM3 weights are not available.

Other text-prompted segmenters (YOLOE, a remote SAM3 server) fit the same Protocol.
"""

from __future__ import annotations

from typing import Protocol

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame


class Teacher(Protocol):
    """What active learning needs from a teacher."""

    name: str
    class_names: tuple[str, ...]

    def __call__(self, frame: Frame) -> Instances:
        """Return the teacher's instances of ``frame`` (masks at the frame's size)."""
        ...
