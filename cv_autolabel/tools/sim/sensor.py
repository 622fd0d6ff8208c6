"""A RealSense-like RGB-D sensor model applied to perfect rendered images.

Measured behaviour of active-stereo depth cameras (D435-class) that the model reproduces:
axial noise growing with the square of the distance, no depth closer than the minimum range,
holes at depth discontinuities (stereo occlusion shadow on the side of the projector baseline
and mixed pixels at edges), holes on dark, low-texture surfaces, sparse random dropouts, and
millimetre quantisation of the 16UC1 output.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DepthNoiseModel:
    """Parameters of the depth error model (metres unless stated)."""

    sigma_base: float = 0.0008
    sigma_per_m2: float = 0.0015
    min_range: float = 0.20
    max_range: float = 4.0
    edge_jump: float = 0.02
    shadow_px: int = 5
    dark_luminance: float = 35.0
    dark_dropout: float = 0.75
    speckle_dropout: float = 0.003


def noisy_depth_mm(depth_m: np.ndarray, rgb: np.ndarray, rng: np.random.Generator,
                   model: DepthNoiseModel = DepthNoiseModel()) -> np.ndarray:
    """Return 16UC1 millimetres (0 = invalid) measured by the sensor from true depth.

    Args:
        depth_m: (H, W) float true depth along the optical axis, NaN/inf where no surface.
        rgb: (H, W, 3) uint8 colour aligned to ``depth_m`` (dark surfaces lose depth).
        rng: the world's RNG, so the noise is reproducible per seed.
        model: noise parameters.
    """
    z = np.asarray(depth_m, dtype=np.float64)
    valid = np.isfinite(z) & (z >= model.min_range) & (z <= model.max_range)
    zf = np.where(valid, z, 0.0)
    sigma = model.sigma_base + model.sigma_per_m2 * zf * zf
    noisy = zf + rng.normal(0.0, 1.0, z.shape) * sigma
    holes = _edge_holes(zf, valid, model) | _dark_holes(rgb, rng, model)
    holes |= rng.random(z.shape) < model.speckle_dropout
    out = np.where(valid & ~holes, np.round(noisy * 1000.0), 0.0)
    return np.clip(out, 0, 65535).astype(np.uint16)


def _edge_holes(z: np.ndarray, valid: np.ndarray, model: DepthNoiseModel) -> np.ndarray:
    # Mixed pixels straddle a jump; the occlusion shadow falls left of near objects because
    # the projector/left imager baseline runs along +x.
    jump_x = np.abs(np.diff(z, axis=1, append=z[:, -1:])) > model.edge_jump
    jump_y = np.abs(np.diff(z, axis=0, append=z[-1:, :])) > model.edge_jump
    edges = cv2.dilate((jump_x | jump_y).astype(np.uint8), np.ones((2, 2), np.uint8)) > 0
    farther = np.zeros_like(valid)
    for shift in range(1, model.shadow_px + 1):
        nearer_right = np.zeros_like(valid)
        nearer_right[:, :-shift] = z[:, shift:] < z[:, :-shift] - model.edge_jump
        farther |= nearer_right
    return edges | farther


def _dark_holes(rgb: np.ndarray, rng: np.random.Generator,
                model: DepthNoiseModel) -> np.ndarray:
    luminance = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    dark = cv2.blur(luminance, (5, 5)) < model.dark_luminance
    return dark & (rng.random(dark.shape) < model.dark_dropout)


def noisy_rgb(rgb: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    """Return ``rgb`` with Gaussian read noise (uint8 in, uint8 out)."""
    noise = rng.normal(0.0, sigma, rgb.shape)
    return np.clip(rgb.astype(np.float32) + noise, 0, 255).astype(np.uint8)
