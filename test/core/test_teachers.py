"""SAM3 teacher: a clear start-up error without weights; the real path wherever sam3.pt exists."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.teachers.sam3 import Sam3Teacher, flatten_prompts
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import TeacherError

PROMPTS = {"red_can": ["red soda can", "red energy drink can"], "blue_can": "blue can"}


def test_missing_weights_fail_at_start_up_with_guidance(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="SAM3 weights not found .*gated.*groundtruth"):
        Sam3Teacher(tmp_path / "sam3.pt", PROMPTS)


@pytest.mark.parametrize(("prompts", "message"), [
    ({}, "at least one class"),
    ({"red_can": []}, "needs at least one"),
    ({"red_can": ["", "x"]}, "needs at least one"),
])
def test_bad_prompts(prompts: dict, message: str) -> None:
    with pytest.raises(TeacherError, match=message):
        flatten_prompts(prompts)


def _sam3_weights() -> Path | None:
    for candidate in (os.environ.get("CV_AUTOLABEL_SAM3"), "sam3.pt",
                      Path.home() / ".cache" / "cv_autolabel" / "sam3.pt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_sam3_weights() is None,
                    reason="sam3.pt not present (gated weights; set CV_AUTOLABEL_SAM3)")
def test_real_sam3_segments_a_synthetic_frame(tmp_path: Path) -> None:
    from cv_autolabel.ros.bag import BagReader
    from cv_autolabel.ros.frames import iter_frames
    from cv_autolabel.tools.sim.run import SimConfig, simulate

    simulate(SimConfig(frames=1, seed=3), tmp_path / "bag")
    with BagReader(tmp_path / "bag") as bag:
        frame: Frame = next(iter_frames(bag))
    teacher = Sam3Teacher(_sam3_weights(), PROMPTS)
    found = teacher(frame)
    assert found.class_names == ("red_can", "blue_can")
    assert found.image_size == frame.rgb.shape[:2]
    assert len(found) > 0 and np.all((found.scores > 0) & (found.scores <= 1))
