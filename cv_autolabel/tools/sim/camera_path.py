"""Camera trajectories of a wrist/overhead camera surveying a bin: smooth moves and pauses.

Pauses produce runs of near-identical frames (what dedup must drop); moves sweep new views of
the pile (what it must keep).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CameraPath:
    """Per-frame camera placement.

    Attributes:
        eye: (N, 3) camera positions in the world frame (metres).
        target: (N, 3) points the optical axis passes through.
        paused: (N,) bool, True while the camera holds still.
    """

    eye: np.ndarray
    target: np.ndarray
    paused: np.ndarray


def _min_jerk(t: np.ndarray) -> np.ndarray:
    return 10 * t**3 - 15 * t**4 + 6 * t**5


def _spherical(center: np.ndarray, radius: float, elevation: float, azimuth: float) -> np.ndarray:
    return center + radius * np.array([
        np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation),
    ])


def survey_path(frames: int, rng: np.random.Generator, *, center: np.ndarray,
                radius: tuple[float, float] = (0.45, 0.85),
                elevation_deg: tuple[float, float] = (50.0, 80.0),
                move_frames: tuple[int, int] = (25, 60),
                pause_frames: tuple[int, int] = (8, 30)) -> CameraPath:
    """Return a trajectory of ``frames`` poses alternating pauses and min-jerk moves.

    Viewpoints are drawn on a spherical cap around ``center``; moves interpolate radius,
    elevation and azimuth (so the camera arcs over the bin instead of cutting through it).
    """
    keys = [_draw_key(rng, radius, elevation_deg, azimuth=rng.uniform(0, 2 * np.pi))]
    eyes, targets, paused = [], [], []
    while len(eyes) < frames:
        r, el, az, tgt = keys[-1]
        n_pause = int(rng.integers(*pause_frames, endpoint=True))
        eyes += [_spherical(center, r, el, az)] * n_pause
        targets += [center + tgt] * n_pause
        paused += [True] * n_pause
        nxt = _draw_key(rng, radius, elevation_deg, azimuth=az + rng.uniform(-1.2, 1.2))
        n_move = int(rng.integers(*move_frames, endpoint=True))
        for s in _min_jerk(np.arange(1, n_move + 1) / n_move):
            mix = [(1 - s) * a + s * b for a, b in zip(keys[-1], nxt)]
            eyes.append(_spherical(center, *mix[:3]))
            targets.append(center + mix[3])
            paused.append(False)
        keys.append(nxt)
    return CameraPath(np.array(eyes[:frames]), np.array(targets[:frames]),
                      np.array(paused[:frames], dtype=bool))


def _draw_key(rng: np.random.Generator, radius: tuple[float, float],
              elevation_deg: tuple[float, float], azimuth: float) -> tuple:
    return (
        rng.uniform(*radius),
        np.deg2rad(rng.uniform(*elevation_deg)),
        azimuth,
        np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06), 0.0]),
    )
