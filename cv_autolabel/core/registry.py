"""Helpers shared by the backend registries (embedders, segmenters): checked construction."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from cv_autolabel.errors import CvAutolabelError

T = TypeVar("T")


def check_rgb(rgb: np.ndarray, who: str, error: type[CvAutolabelError]) -> np.ndarray:
    """Return ``rgb`` if it is a non-empty (H, W, 3) uint8 image; raise ``error`` if not.

    ``who`` names the taker in the message ("an embedder", "a segmenter").
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, "shape", type(rgb).__name__)
        raise error(f"{who} takes (H, W, 3) uint8 RGB images, got {shape}")
    if rgb.dtype != np.uint8 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise error(f"{who} takes non-empty uint8 RGB images, got {rgb.shape} {rgb.dtype}")
    return rgb


def construct(cls: Callable[..., T], kind: str, name: str, options: dict[str, Any],
              error: type[CvAutolabelError]) -> T:
    """Build ``cls(**options)``, turning options that do not fit into ``error``."""
    # Options usually come from a config file: a typo is bad input, not a programming error.
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as err:
        raise error(f"bad options for the {name!r} {kind}: {err}") from err
    return cls(**options)


def lookup(registry: Mapping[str, T], kind: str, name: str,
           error: type[CvAutolabelError]) -> T:
    """Return ``registry[name]`` or raise ``error`` listing the known names."""
    try:
        return registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise error(f"unknown {kind} {name!r}; known {kind}s: {known}") from None
