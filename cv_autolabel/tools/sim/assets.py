"""Procedural assets of the synthetic world: object catalogue, label textures and can meshes.

Everything is generated from a seeded RNG, so a world is reproducible from ``--seed`` alone,
and nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Fraction of the texture's height (bottom rows) reserved for the metal lid and base.
CAP_BAND = 0.12


@dataclass(frozen=True)
class ObjectClass:
    """One kind of object the world can drop into the bin.

    Attributes:
        name: class name written to the ground truth (``red_can``).
        shape: ``can`` (textured cylinder), ``box`` or ``ball``.
        size: nominal size in metres: (diameter, height) for cans, (x, y, z) for boxes,
            (diameter,) for balls.
        colors: label colours as RGB 0..255, primary first.
        pattern: label pattern for cans: ``stripe``, ``wave``, ``chevron`` or ``dots``.
        target: True for the classes a model should learn; False for distractors.
    """

    name: str
    shape: str
    size: tuple[float, ...]
    colors: tuple[tuple[int, int, int], ...]
    pattern: str = "stripe"
    target: bool = True


CATALOGUE: dict[str, ObjectClass] = {
    c.name: c
    for c in (
        ObjectClass("red_can", "can", (0.066, 0.115), ((200, 20, 30), (245, 245, 245)), "stripe"),
        ObjectClass("blue_can", "can", (0.053, 0.135), ((20, 50, 170), (230, 200, 40)), "wave"),
        ObjectClass("green_can", "can", (0.066, 0.115), ((20, 140, 60), (20, 20, 20)), "chevron"),
        ObjectClass("yellow_can", "can", (0.058, 0.125), ((235, 200, 20), (30, 30, 160)), "dots"),
        ObjectClass("black_can", "can", (0.053, 0.135), ((25, 25, 25), (120, 230, 40)), "wave"),
        ObjectClass("box", "box", (0.09, 0.06, 0.04), ((170, 130, 85),), target=False),
        ObjectClass("ball", "ball", (0.06,), ((230, 120, 20),), target=False),
    )
}

DEFAULT_CLASSES = ("red_can", "blue_can")
DEFAULT_DISTRACTORS = ("box", "ball")


def resolve_classes(names: list[str] | tuple[str, ...]) -> list[ObjectClass]:
    """Return catalogue entries for ``names``; raise KeyError naming the known classes."""
    unknown = [n for n in names if n not in CATALOGUE]
    if unknown:
        msg = f"unknown class(es) {unknown}; the synthetic world knows {sorted(CATALOGUE)}"
        raise KeyError(msg)
    return [CATALOGUE[n] for n in names]


def can_texture(cls: ObjectClass, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Return an (size, size, 3) uint8 RGB label texture for a can class.

    Row 0 is the top of the texture image (v = 1); the bottom ``CAP_BAND`` rows are brushed
    metal for the lid and base. The pattern is fixed per class (so a class is learnable)
    with small random variation in phase, shade and fine print.
    """
    primary, secondary = (np.array(c, dtype=np.float32) for c in cls.colors[:2])
    v, u = np.mgrid[0:size, 0:size].astype(np.float32) / size
    shade = rng.uniform(0.9, 1.1)
    tex = np.broadcast_to(np.clip(primary * shade, 0, 255), (size, size, 3)).copy()
    mask = _pattern_mask(cls.pattern, u, v, rng.uniform(0, 1))
    tex[mask] = secondary
    _fine_print(tex, rng, secondary if cls.pattern != "dots" else primary * 0.5)
    cap_rows = int(round(CAP_BAND * size))
    metal = 170 + 40 * np.sin(u[:cap_rows] * 60.0)[..., None]
    tex[size - cap_rows:] = metal
    return np.clip(tex, 0, 255).astype(np.uint8)


def _pattern_mask(pattern: str, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    if pattern == "stripe":
        return np.abs(((v - 0.6 * u + phase) % 1.0) - 0.5) < 0.09
    if pattern == "wave":
        return np.abs(v - 0.55 - 0.12 * np.sin(2 * np.pi * (3 * u + phase))) < 0.06
    if pattern == "chevron":
        return np.abs(((v + 0.3 * np.abs(((6 * u + phase) % 1.0) - 0.5)) % 0.33) - 0.16) < 0.05
    if pattern == "dots":
        return ((u * 8 + phase) % 1.0 - 0.5) ** 2 + ((v * 6) % 1.0 - 0.5) ** 2 < 0.08
    msg = f"unknown label pattern {pattern!r}"
    raise ValueError(msg)


def _fine_print(tex: np.ndarray, rng: np.random.Generator, color: np.ndarray) -> None:
    # Small rectangles stand in for the logo text and nutrition table real cans carry.
    size = tex.shape[0]
    for _ in range(int(rng.integers(6, 12))):
        x0, y0 = (int(a) for a in rng.integers(0, size - 24, 2))
        w, h = int(rng.integers(8, 40)), int(rng.integers(2, 6))
        tex[y0:y0 + h, x0:x0 + w] = color


def surface_texture(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Return an (size, size, 3) uint8 texture for the table (``wood``/``concrete``/``cloth``)
    or a distractor (``cardboard``)."""
    base = {
        "wood": (150, 105, 60), "concrete": (150, 150, 145), "cloth": (60, 70, 90),
        "cardboard": (175, 135, 90),
    }[kind] * rng.uniform(0.75, 1.15, 3)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 3)
    if kind == "wood":
        v = np.mgrid[0:size, 0:size][0].astype(np.float32)
        noise = noise + 1.5 * np.sin(v / 5.0 + 3 * noise)
    tex = base[None, None, :] * (1.0 + 0.08 * noise[..., None])
    return np.clip(tex, 0, 255).astype(np.uint8)


def write_texture(image: np.ndarray, path: Path) -> Path:
    """Write an RGB texture as PNG (the format PyBullet's loadTexture reads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        msg = f"cannot write texture {path}"
        raise OSError(msg)
    return path


def can_mesh_vertices(diameter: float, height: float, segments: int = 32) -> np.ndarray:
    """Return the (2 * segments, 3) rim vertices of a can centred at the origin (metres)."""
    angles = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], 1) * diameter / 2
    return np.concatenate([
        np.column_stack([ring, np.full(segments, -height / 2)]),
        np.column_stack([ring, np.full(segments, height / 2)]),
    ])


def write_can_obj(path: Path, diameter: float, height: float, segments: int = 32) -> Path:
    """Write a Wavefront OBJ can (side wall + lid + base) with UVs for the label texture.

    The side wall maps the texture's label area (v in [CAP_BAND, 1]) once around the can;
    lid and base map into the metal band.
    """
    r, hz = diameter / 2, height / 2
    lines = ["# procedural can, cv_autolabel"]
    angles = np.linspace(0, 2 * np.pi, segments + 1)
    for z in (-hz, hz):
        lines += [f"v {r * np.cos(a):.6f} {r * np.sin(a):.6f} {z:.6f}" for a in angles]
    lines += [f"v 0 0 {-hz:.6f}", f"v 0 0 {hz:.6f}"]
    lines += [f"vt {i / segments:.6f} {CAP_BAND:.6f}" for i in range(segments + 1)]
    lines += [f"vt {i / segments:.6f} 1.0" for i in range(segments + 1)]
    lines.append(f"vt 0.5 {CAP_BAND / 2:.6f}")
    lines += [f"vn {np.cos(a):.6f} {np.sin(a):.6f} 0" for a in angles]
    lines += ["vn 0 0 -1", "vn 0 0 1"]
    n = segments + 1
    bottom_c, top_c, cap_vt = 2 * n + 1, 2 * n + 2, 2 * n + 1
    for i in range(1, segments + 1):
        b0, b1, t0, t1 = i, i + 1, n + i, n + i + 1
        lines.append(f"f {b0}/{b0}/{i} {b1}/{b1}/{i + 1} {t1}/{t1}/{i + 1}")
        lines.append(f"f {b0}/{b0}/{i} {t1}/{t1}/{i + 1} {t0}/{t0}/{i}")
        lines.append(f"f {bottom_c}/{cap_vt}/{n + 1} {b1}/{cap_vt}/{n + 1} {b0}/{cap_vt}/{n + 1}")
        lines.append(f"f {top_c}/{cap_vt}/{n + 2} {t0}/{cap_vt}/{n + 2} {t1}/{cap_vt}/{n + 2}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
