"""The PyBullet bin-picking world: a textured table, a bin, piles of cans and distractors.

Runs headless (``pybullet.DIRECT``, CPU TinyRenderer) and is deterministic for a given RNG.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cv_autolabel.core.geometry import look_at_optical, matrix_to_quat, quat_to_matrix
from cv_autolabel.core.types import CameraIntrinsics
from cv_autolabel.errors import SimulationError
from cv_autolabel.tools.sim import assets

BIN_INNER = (0.42, 0.32)
BIN_WALL = (0.10, 0.012)  # height, thickness
NEAR, FAR = 0.05, 6.0
_MASS = {"can": 0.35, "box": 0.2, "ball": 0.1}


@dataclass(frozen=True)
class ObjectTruth:
    """Ground truth of one object in one frame (optical frame of the camera, metres)."""

    instance_id: int
    class_name: str
    target: bool
    position: np.ndarray
    orientation: np.ndarray
    size: np.ndarray
    visible_pixels: int
    visibility: float
    bbox: tuple[int, int, int, int] | None


@dataclass(frozen=True)
class Render:
    """One perfect rendering: colour, true depth (inf = no surface), labels, truth."""

    rgb: np.ndarray
    depth_m: np.ndarray
    labels: np.ndarray
    objects: list[ObjectTruth]
    camera_rotation: np.ndarray
    camera_position: np.ndarray


@dataclass
class _Body:
    instance_id: int
    cls: assets.ObjectClass
    body: int
    size: np.ndarray
    vertices: np.ndarray


def opengl_projection(k: CameraIntrinsics, near: float = NEAR, far: float = FAR) -> list[float]:
    """Return the column-major OpenGL projection matching ROS intrinsics ``k`` exactly.

    Pixel centres sit at integer ``(u, v)`` in ROS and at ``+0.5`` in OpenGL window
    coordinates; the principal point terms carry that half-pixel shift.
    """
    w, h = k.width, k.height
    p = np.zeros((4, 4))
    p[0, 0], p[0, 2] = 2 * k.fx / w, 1 - 2 * (k.cx + 0.5) / w
    p[1, 1], p[1, 2] = 2 * k.fy / h, 2 * (k.cy + 0.5) / h - 1
    p[2, 2], p[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    p[3, 2] = -1.0
    return p.T.flatten().tolist()


def opengl_view(r_world_optical: np.ndarray, eye: np.ndarray) -> list[float]:
    """Return the column-major OpenGL view matrix of an optical-frame camera pose."""
    r_world_gl = r_world_optical * np.array([1.0, -1.0, -1.0])
    view = np.eye(4)
    view[:3, :3] = r_world_gl.T
    view[:3, 3] = -r_world_gl.T @ eye
    return view.T.flatten().tolist()


def default_intrinsics(width: int, height: int) -> CameraIntrinsics:
    """Return D435-like colour intrinsics (about 55 x 42 degrees at 4:3) for a size."""
    f = 0.96 * width
    return CameraIntrinsics(width, height, f, f, (width - 1) / 2, (height - 1) / 2)


class BinWorld:
    """A bin on a table, refilled with a fresh pile per scene and emptied by picks."""

    def __init__(self, classes: list[assets.ObjectClass], distractors: list[assets.ObjectClass],
                 *, per_class: int, n_distractors: int, intrinsics: CameraIntrinsics,
                 rng: np.random.Generator) -> None:
        import pybullet  # noqa: PLC0415 - only the simulator needs it (prints a banner on stderr)

        self.p = pybullet
        self.client = pybullet.connect(pybullet.DIRECT)
        if self.client < 0:
            raise SimulationError("cannot start PyBullet in DIRECT mode")
        self.classes, self.distractors = classes, distractors
        self.per_class, self.n_distractors = per_class, n_distractors
        self.k, self.rng = intrinsics, rng
        self._tmp = tempfile.TemporaryDirectory(prefix="cv_autolabel_sim_")
        self.assets = Path(self._tmp.name)
        self.projection = opengl_projection(intrinsics)
        self.bodies: list[_Body] = []
        self.static: list[int] = []
        self.next_id = 1
        self.light: dict = {}
        self.p.setGravity(0, 0, -9.81, physicsClientId=self.client)
        self.p.setPhysicsEngineParameter(deterministicOverlappingPairs=1,
                                         physicsClientId=self.client)

    def close(self) -> None:
        """Disconnect PyBullet and delete generated assets."""
        if self.client >= 0:
            self.p.disconnect(physicsClientId=self.client)
            self.client = -1
        self._tmp.cleanup()

    def __enter__(self) -> BinWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_scene(self) -> None:
        """Replace table, bin, lighting and pile with freshly drawn ones."""
        for body in [b.body for b in self.bodies] + self.static:
            self.p.removeBody(body, physicsClientId=self.client)
        self.bodies, self.static = [], []
        self._build_table_and_bin()
        self._draw_light()
        kinds = [c for c in self.classes for _ in range(self.per_class)]
        kinds += [self.distractors[i % len(self.distractors)] for i in range(self.n_distractors)]
        for order in self.rng.permutation(len(kinds)):
            self._drop(kinds[order], height=0.12 + 0.05 * len(self.bodies))
        self._settle(seconds=2.0)

    def pick_one(self) -> int | None:
        """Remove the topmost object (what a picker would grasp first) and let the pile settle."""
        if not self.bodies:
            return None
        heights = [self._pose(b)[0][2] for b in self.bodies]
        top = self.bodies.pop(int(np.argmax(heights)))
        self.p.removeBody(top.body, physicsClientId=self.client)
        self._settle(seconds=0.7)
        return top.instance_id

    # -- scene construction -------------------------------------------------------------
    def _texture(self, image: np.ndarray) -> int:
        path = assets.write_texture(image, self.assets / f"tex_{self.next_id}_{len(self.static)}"
                                    f"_{self.rng.integers(1 << 30)}.png")
        return self.p.loadTexture(str(path), physicsClientId=self.client)

    def _static_box(self, half: tuple[float, float, float], pos: tuple[float, float, float],
                    rgba: list[float], texture: int | None = None) -> int:
        p, c = self.p, self.client
        col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=rgba, physicsClientId=c)
        body = p.createMultiBody(0, col, vis, basePosition=pos, physicsClientId=c)
        if texture is not None:
            p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=[1, 1, 1, 1],
                                physicsClientId=c)
        self.static.append(body)
        return body

    def _build_table_and_bin(self) -> None:
        kind = ["wood", "concrete", "cloth"][int(self.rng.integers(3))]
        table_tex = self._texture(assets.surface_texture(kind, self.rng, 512))
        self._static_box((1.5, 1.5, 0.02), (0, 0, -0.02), [1, 1, 1, 1], table_tex)
        color = [*self.rng.uniform(0.15, 0.75, 3).tolist(), 1.0]
        (ix, iy), (h, t) = BIN_INNER, BIN_WALL
        self._static_box((ix / 2 + t, iy / 2 + t, t / 2), (0, 0, t / 2), color)
        for sx, sy, hx, hy in ((1, 0, t / 2, iy / 2 + t), (0, 1, ix / 2 + t, t / 2)):
            for sign in (-1, 1):
                pos = (sign * sx * (ix / 2 + t / 2), sign * sy * (iy / 2 + t / 2), h / 2)
                self._static_box((hx, hy, h / 2), pos, color)

    def _draw_light(self) -> None:
        az, el = self.rng.uniform(0, 2 * np.pi), self.rng.uniform(np.deg2rad(35), np.deg2rad(85))
        self.light = {
            "lightDirection": [np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)],
            "lightColor": (self.rng.uniform(0.85, 1.0, 3)).tolist(),
            "lightDistance": 2.0,
            "lightAmbientCoeff": float(self.rng.uniform(0.45, 0.7)),
            "lightDiffuseCoeff": float(self.rng.uniform(0.35, 0.6)),
            "lightSpecularCoeff": float(self.rng.uniform(0.05, 0.3)),
            "shadow": 1,
        }

    def _shape(self, cls: assets.ObjectClass, scale: float) -> tuple[int, int, np.ndarray,
                                                                       np.ndarray, int | None]:
        p, c = self.p, self.client
        size = np.array(cls.size) * scale
        if cls.shape == "can":
            d, h = size
            obj = self.assets / f"can_{cls.name}_{d:.4f}_{h:.4f}.obj"
            if not obj.exists():
                assets.write_can_obj(obj, d, h)
            col = p.createCollisionShape(p.GEOM_CYLINDER, radius=d / 2, height=h,
                                         physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_MESH, fileName=str(obj), physicsClientId=c)
            tex = self._texture(assets.can_texture(cls, self.rng))
            return col, vis, np.array([d, d, h]), assets.can_mesh_vertices(d, h), tex
        if cls.shape == "box":
            half = size / 2
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half.tolist(), physicsClientId=c)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half.tolist(), physicsClientId=c)
            corners = np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T * half
            tex = self._texture(assets.surface_texture("cardboard", self.rng, 128))
            return col, vis, size, corners, tex
        (d,) = size
        col = p.createCollisionShape(p.GEOM_SPHERE, radius=d / 2, physicsClientId=c)
        rgba = [*(np.array(cls.colors[0]) / 255 * self.rng.uniform(0.8, 1.1)).clip(0, 1), 1.0]
        vis = p.createVisualShape(p.GEOM_SPHERE, radius=d / 2, rgbaColor=rgba, physicsClientId=c)
        return col, vis, np.array([d, d, d]), _sphere_points(d / 2), None

    def _drop(self, cls: assets.ObjectClass, height: float) -> None:
        p, c = self.p, self.client
        col, vis, size, vertices, tex = self._shape(cls, float(self.rng.uniform(0.96, 1.04)))
        pos = [self.rng.uniform(-0.15, 0.15), self.rng.uniform(-0.1, 0.1), height]
        quat = p.getQuaternionFromEuler(self.rng.uniform(0, 2 * np.pi, 3).tolist())
        body = p.createMultiBody(_MASS[cls.shape], col, vis, basePosition=pos,
                                 baseOrientation=quat, physicsClientId=c)
        p.changeDynamics(body, -1, lateralFriction=0.6, rollingFriction=0.002,
                         spinningFriction=0.002, physicsClientId=c)
        if tex is not None:
            p.changeVisualShape(body, -1, textureUniqueId=tex, rgbaColor=[1, 1, 1, 1],
                                physicsClientId=c)
        self.bodies.append(_Body(self.next_id, cls, body, size, vertices))
        self.next_id += 1

    def _settle(self, seconds: float) -> None:
        for _ in range(int(seconds * 240)):
            self.p.stepSimulation(physicsClientId=self.client)
        fallen = [b for b in self.bodies if self._pose(b)[0][2] < -0.2]
        for b in fallen:
            self.p.removeBody(b.body, physicsClientId=self.client)
            self.bodies.remove(b)

    def _pose(self, b: _Body) -> tuple[np.ndarray, np.ndarray]:
        pos, quat = self.p.getBasePositionAndOrientation(b.body, physicsClientId=self.client)
        return np.array(pos), np.array(quat)

    # -- rendering -------------------------------------------------------------------------
    def render(self, eye: np.ndarray, target: np.ndarray) -> Render:
        """Render the world from a camera at ``eye`` looking at ``target``."""
        p, k = self.p, self.k
        r_wo = look_at_optical(eye, target)
        _, _, rgba, zbuf, seg = p.getCameraImage(
            k.width, k.height, opengl_view(r_wo, eye), self.projection,
            renderer=p.ER_TINY_RENDERER, physicsClientId=self.client, **self.light)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(k.height, k.width, 4)[..., :3].copy()
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(k.height, k.width)
        with np.errstate(divide="ignore"):
            depth = FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)
        depth[zbuf >= 1.0] = np.inf
        labels = self._labels(np.asarray(seg, dtype=np.int64).reshape(k.height, k.width))
        objects = [self._truth(b, r_wo, eye, labels) for b in self.bodies]
        return Render(rgb, depth.astype(np.float32), labels, objects, r_wo, np.asarray(eye))

    def _labels(self, seg: np.ndarray) -> np.ndarray:
        lut = np.zeros(max([b.body for b in self.bodies] + self.static + [0]) + 2, np.uint16)
        for b in self.bodies:
            lut[b.body + 1] = b.instance_id
        return lut[np.clip(seg, -1, len(lut) - 2) + 1]

    def _truth(self, b: _Body, r_wo: np.ndarray, eye: np.ndarray,
               labels: np.ndarray) -> ObjectTruth:
        pos_w, quat_w = self._pose(b)
        r_ow = r_wo.T
        rot = r_ow @ quat_to_matrix(quat_w)
        pos = r_ow @ (pos_w - eye)
        visible = labels == b.instance_id
        n_visible = int(visible.sum())
        bbox = None
        if n_visible:
            ys, xs = np.nonzero(visible)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        full = self._silhouette_area((rot @ b.vertices.T).T + pos)
        visibility = min(1.0, n_visible / full) if full > 0 else 0.0
        return ObjectTruth(b.instance_id, b.cls.name, b.cls.target, pos, matrix_to_quat(rot),
                           b.size, n_visible, visibility, bbox)

    def _silhouette_area(self, points: np.ndarray) -> float:
        # Every object is convex, so its unoccluded silhouette is the convex hull of its
        # projected vertices; the area counts pixels outside the image as not visible.
        if (points[:, 2] <= NEAR).any():
            return 0.0
        uv = self.k.project(points).astype(np.float32)
        return float(cv2.contourArea(cv2.convexHull(uv)))


def _sphere_points(radius: float, n: int = 96) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return radius * np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi),
                                     np.cos(phi)])
