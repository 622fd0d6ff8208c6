"""cv_autolabel: turn an RGB-D camera stream into a continuously improving segmentation model."""

from __future__ import annotations

__version__ = "0.1.0"
