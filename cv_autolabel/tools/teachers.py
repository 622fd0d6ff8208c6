"""The offline tools' teacher: a synthetic bag's ground truth, or SAM3 (one place for both).

``replay --active-learning``, ``preannotate`` and the demo all build their teacher here, so
they find SAM3's weights the same way (:func:`cv_autolabel.core.teachers.sam3.check_weights`:
the given path, else ``$CV_AUTOLABEL_SAM3``, else ``~/cv_autolabel_data/models/sam3.pt``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros.bag import BagReader

TEACHERS = ("groundtruth", "sam3")
Teacher = Callable[[Frame], Instances]


def make_teacher(kind: str, src: Path, *, weights: Path | None,
                 prompts: dict[str, list[str]] | None) -> tuple[Teacher, tuple[str, ...]]:
    """Return (frame -> Instances, class names) for teacher ``kind`` over ``src``.

    ``prompts`` (class -> text prompts) choose SAM3's classes, and the ground truth's when
    given. ``weights`` None lets SAM3 look in its usual places.

    Raises:
        CvAutolabelError: unknown kind, groundtruth on a non-bag, SAM3 without prompts, or
            SAM3's own TeacherError (weights missing or unloadable).
    """
    from cv_autolabel.tools.dedup import is_bag  # noqa: PLC0415

    if not Path(src).exists():
        raise CvAutolabelError(f"source not found: {src}")
    if kind == "groundtruth":
        if not is_bag(src):
            raise CvAutolabelError("--teacher groundtruth needs a synthetic ROS 2 bag")
        from cv_autolabel.ros.ground_truth import GroundTruthSegmenter  # noqa: PLC0415

        with BagReader(src) as reader:
            truth = GroundTruthSegmenter.from_bag(reader, list(prompts) if prompts else None)
        return truth, truth.class_names
    if kind == "sam3":
        from cv_autolabel.core.teachers.sam3 import Sam3Teacher, check_weights  # noqa: PLC0415

        weights = check_weights(weights)  # the first thing a user without SAM3 must hear
        if not prompts:
            raise CvAutolabelError(
                "the SAM3 teacher needs the classes to look for: give --config with "
                "active_learning_node's classes (and prompts.<class>), as in "
                "config/autolabel.yaml")
        teacher = Sam3Teacher(weights, prompts)
        return teacher, teacher.class_names
    raise CvAutolabelError(f"unknown teacher {kind!r}; use one of {', '.join(TEACHERS)}")
