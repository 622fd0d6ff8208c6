"""SAM3 as the teacher: ultralytics' SAM3 semantic predictor with text prompts per class.

Image features are computed once per frame (``set_image``) and every prompt of every class
is answered from them in one grounding pass. Prompts map back to classes (several prompts
may describe one class: "red soda can", "red energy drink can"); overlapping same-class
results are merged later by the disagreement stage.

SAM3 weights (``sam3.pt``) are gated: request access on the model's Hugging Face page,
download the file and point the node's ``teacher_weights`` parameter (or ``--teacher-weights``,
or ``CV_AUTOLABEL_SAM3``) at it. A missing file is an error when the teacher is created, not
at the first frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import Frame
from cv_autolabel.errors import TeacherError

log = logging.getLogger(__name__)


def default_prompt(class_name: str) -> str:
    """The text prompt a class gets when none is configured: its name in words.

    Example:
        >>> default_prompt("red_can")
        'red can'
    """
    return class_name.replace("_", " ")


def flatten_prompts(prompts: Mapping[str, Sequence[str] | str]) -> tuple[list[str], list[int]]:
    """Return (all prompts, class index of each) for ``{class: prompt or prompts}``.

    Example:
        >>> flatten_prompts({"red_can": ["red can", "red soda can"], "blue_can": "blue can"})
        (['red can', 'red soda can', 'blue can'], [0, 0, 1])
    """
    texts, owners = [], []
    for i, (name, value) in enumerate(prompts.items()):
        items = [value] if isinstance(value, str) else list(value)
        if not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise TeacherError(f"class {name!r} needs at least one non-empty text prompt")
        texts += items
        owners += [i] * len(items)
    if not texts:
        raise TeacherError("the teacher needs at least one class with a text prompt")
    return texts, owners


#: Where the node (``teacher_weights``) and ``cv-autolabel demo --teacher sam3`` look by default.
DEFAULT_WEIGHTS = Path("~/cv_autolabel_data/models/sam3.pt")
#: Environment variable naming sam3.pt for the command line (the node has teacher_weights).
WEIGHTS_ENV = "CV_AUTOLABEL_SAM3"


def check_weights(weights: str | Path | None = None) -> Path:
    """Return the SAM3 weights file: ``weights``, else ``$CV_AUTOLABEL_SAM3``, else the default.

    Raises:
        TeacherError: there is no such file (with how to get one).
    """
    path = Path(weights or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS).expanduser()
    if not path.is_file():
        raise TeacherError(
            f"SAM3 weights not found at {path}. SAM3 is gated: request access on its Hugging "
            "Face model page, download sam3.pt, and point at it: the node's teacher_weights "
            "parameter, or for cv-autolabel --teacher-weights or CV_AUTOLABEL_SAM3 (or put it "
            f"at {DEFAULT_WEIGHTS}); without it use the groundtruth teacher on synthetic bags")
    return path


class Sam3Teacher:
    """Text-prompted SAM3 segmentation over the configured classes.

    Args:
        weights: path to ``sam3.pt``.
        prompts: ``{class name: text prompt or list of prompts}``, in class order.
        conf: minimum score of a SAM3 detection.
        device: torch device ("cpu", "cuda:0").
        half: fp16 on a GPU.
    """

    name = "sam3"

    def __init__(self, weights: str | Path, prompts: Mapping[str, Sequence[str] | str], *,
                 conf: float = 0.25, device: str = "cpu", half: bool = False) -> None:
        self.weights = check_weights(weights)
        self.class_names = tuple(prompts)
        self.texts, self.owners = flatten_prompts(prompts)
        self._predictor = self._build(conf, device, half)

    def _build(self, conf: float, device: str, half: bool):  # noqa: ANN202 - ultralytics type
        try:
            import clip  # noqa: F401, PLC0415 - SAM3's text encoder; ultralytics would pip-install it
            from ultralytics.models.sam import SAM3SemanticPredictor  # noqa: PLC0415
        except ImportError as err:
            raise TeacherError(f"SAM3 needs ultralytics and CLIP ({err}); install ultralytics' "
                               "CLIP fork: pip install git+https://github.com/ultralytics/CLIP.git"
                               ) from err
        overrides = {"conf": conf, "task": "segment", "mode": "predict", "save": False,
                     "model": str(self.weights), "half": half, "device": device,
                     "verbose": False}
        predictor = SAM3SemanticPredictor(overrides=overrides)
        try:
            predictor.setup_model(verbose=False)  # load now: a bad file fails at start-up
        except Exception as err:  # noqa: BLE001 - torch/ultralytics raise many types
            raise TeacherError(f"cannot load SAM3 from {self.weights}: {err}") from err
        return predictor

    def __call__(self, frame: Frame) -> Instances:
        bgr = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
        self._predictor.set_image(bgr)  # image features once, reused by every prompt
        try:
            results = self._predictor(text=self.texts)
        finally:
            self._predictor.reset_image()
        found = Instances.from_ultralytics(results[0])
        owners = np.array(self.owners, np.int32)
        return Instances(found.masks, found.boxes, owners[found.class_ids], found.scores,
                         self.class_names)
