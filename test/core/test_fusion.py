"""Depth fusion: centres against the synthetic world's true poses, edge cases on built depth."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from cv_autolabel.core.fusion import FusionConfig, Object3D, _Cells, estimate_center, fuse
from cv_autolabel.core.geometry import quat_to_matrix
from cv_autolabel.core.instances import Instances
from cv_autolabel.core.types import CameraIntrinsics
from cv_autolabel.errors import ConfigError, FusionError
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.ground_truth import GroundTruth, ObjectPose, iter_frames_with_truth
from cv_autolabel.tools.sim.run import SimConfig, simulate

CLASSES = ("red_can", "blue_can", "box", "ball")
#: Four piles, nine views each: about 350 object views, 8 s to render.
WORLD = SimConfig(frames=36, width=640, height=480, seed=11, scenes=4)
K = CameraIntrinsics(640, 480, 600.0, 600.0, 319.5, 239.5)


@dataclass(frozen=True)
class Sample:
    """One object view: the truth, what fusion made of it and its frame's depth."""

    class_name: str
    visibility: float
    truth: ObjectPose
    obj: Object3D
    depth: np.ndarray
    intrinsics: CameraIntrinsics


@dataclass(frozen=True)
class World:
    """Every fused view of the recording, and how long each frame took."""

    samples: list[Sample]
    seconds_per_frame: list[float]
    instances_per_frame: list[int]

    def graded(self, min_visibility: float = 0.3) -> list[Sample]:
        """Return the views the accuracy target is about (visible enough, 0.4-1.2 m)."""
        return [s for s in self.samples if s.visibility >= min_visibility
                and 0.4 <= s.truth.position[2] <= 1.2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    bag_path = tmp_path_factory.mktemp("fusion") / "bag"
    simulate(WORLD, bag_path)
    samples, seconds, counts = [], [], []
    with BagReader(bag_path) as bag:
        for frame, gt in iter_frames_with_truth(bag):
            ids, inst = _ground_truth_instances(gt)
            started = time.perf_counter()
            objects = fuse(inst, frame.depth, frame.intrinsics)
            seconds.append(time.perf_counter() - started)
            counts.append(len(inst))
            samples += [Sample(gt.instances[i]["class"], gt.instances[i]["visibility"],
                               gt.objects[i], obj, frame.depth, frame.intrinsics)
                        for i, obj in zip(ids, objects)]
    return World(samples, seconds, counts)


def _ground_truth_instances(gt: GroundTruth) -> tuple[list[int], Instances]:
    ids = sorted(i for i, r in gt.instances.items() if r["class"] in CLASSES)
    masks = np.stack([gt.labels == i for i in ids])
    class_ids = [CLASSES.index(gt.instances[i]["class"]) for i in ids]
    return ids, Instances.from_masks(masks, class_ids, np.ones(len(ids)), CLASSES)


def _contains(obj: Object3D, point: np.ndarray) -> bool:
    local = quat_to_matrix(obj.orientation).T @ (point - obj.center)
    return bool(np.all(np.abs(local) <= obj.size / 2))


# -- accuracy on the synthetic world ---------------------------------------------------------

def test_centres_are_within_centimetres_of_the_true_centres(world: World) -> None:
    graded = world.graded()
    invalid = [s.obj.reason for s in graded if not s.obj.valid]
    ok = [s for s in graded if s.obj.valid]
    errors = np.array([np.linalg.norm(s.obj.center - s.truth.position) for s in ok])
    inside = np.array([_contains(s.obj, s.truth.position) for s in ok])
    per_class = {c: f"{np.median(errors[m]) * 1000:.1f} mm / {inside[m].mean():.0%}"
                 for c in CLASSES if (m := np.array([s.class_name == c for s in ok])).any()}
    report = (f"{len(ok)} views: median error {np.median(errors) * 1000:.1f} mm, 90th "
              f"percentile {np.percentile(errors, 90) * 1000:.1f} mm, true centre inside the "
              f"box {inside.mean():.1%}; per class {per_class}; invalid {invalid}")
    print(report)
    assert len(graded) >= 150 and len(invalid) <= 0.02 * len(graded), report
    assert np.median(errors) <= 0.015, report
    assert inside.mean() >= 0.9, report


def test_box_axes_follow_the_can_axes(world: World) -> None:
    cans = [s for s in world.graded(0.7) if s.class_name.endswith("_can") and s.obj.valid]
    angles = [np.degrees(np.arccos(abs(quat_to_matrix(s.truth.orientation)[:, 2]
                                       @ quat_to_matrix(s.obj.orientation)[:, 0])))
              for s in cans]
    assert len(cans) >= 50
    assert np.median(angles) < 15.0, f"median axis error {np.median(angles):.1f} deg"


def test_grasp_point_is_on_the_visible_top_surface(world: World) -> None:
    views = [s for s in world.graded(0.7) if s.obj.valid]
    surface_gap, off_axis, ahead = [], [], []
    for s in views:
        g = s.obj.grasp_point
        u, v = np.round(s.intrinsics.project(g[None])[0]).astype(int)
        surface_gap.append(abs(g[2] - np.nanmedian(s.depth[v - 2:v + 3, u - 2:u + 3])))
        ray = s.truth.position / np.linalg.norm(s.truth.position)
        rel = g - s.truth.position
        ahead.append(rel @ ray)  # negative: between the camera and the centre
        off_axis.append(np.linalg.norm(rel - (rel @ ray) * ray))
    report = (f"{len(views)} views: |grasp z - measured depth| 95th pct "
              f"{np.percentile(surface_gap, 95) * 1000:.1f} mm, distance from the centre's "
              f"viewing ray 95th pct {np.percentile(off_axis, 95) * 1000:.1f} mm, "
              f"depth behind the centre max {max(ahead) * 1000:.1f} mm")
    assert np.percentile(surface_gap, 95) <= 0.005, report
    assert np.percentile(off_axis, 95) <= 0.02, report
    assert max(ahead) < -0.01, report  # at least 1 cm in front of the centre: the top


def test_grasp_normal_is_the_true_surface_normal(world: World) -> None:
    angles = []
    for s in world.graded(0.7):
        normal = _true_normal(s.class_name, s.truth, s.obj.grasp_point)
        if normal is not None and s.obj.valid:
            angles.append(np.degrees(np.arccos(np.clip(normal @ s.obj.grasp_normal, -1, 1))))
            assert s.obj.grasp_normal @ s.obj.grasp_point < 0  # faces the camera
    assert np.median(angles) < 10.0 and np.percentile(angles, 90) < 20.0, \
        f"normal error median {np.median(angles):.1f}, 90th {np.percentile(angles, 90):.1f}"


def _true_normal(class_name: str, truth: ObjectPose, point: np.ndarray) -> np.ndarray | None:
    rel = point - truth.position
    if class_name == "ball":
        return rel / np.linalg.norm(rel)
    if not class_name.endswith("_can"):
        return None
    axis = quat_to_matrix(truth.orientation)[:, 2]
    along = rel @ axis
    radial = rel - along * axis
    if abs(along) > truth.size[2] / 2 - 0.003:  # on a lid
        return np.sign(along) * axis
    return radial / np.linalg.norm(radial)


def test_fusion_takes_a_few_milliseconds_per_frame(world: World) -> None:
    per_frame = np.median(world.seconds_per_frame) * 1000
    print(f"fusion: {per_frame:.1f} ms per 640x480 frame with "
          f"{np.mean(world.instances_per_frame):.1f} instances (median of "
          f"{len(world.seconds_per_frame)} frames)")
    assert per_frame < 50.0, f"{per_frame:.1f} ms per frame"


def test_a_sparse_mask_over_the_whole_image_costs_no_more_than_a_compact_one() -> None:
    # A speckled mask (a model's noise) spans the image; the work must follow its pixels,
    # bounded by max_points, not its bounding box.
    cfg = FusionConfig()
    speckle = np.zeros((K.height, K.width), bool)
    speckle[::3, ::3] = True
    speckle[200:260, 300:360] = True  # and one real blob
    cells = _Cells.of(speckle, np.full(speckle.shape, 0.8, np.float32), cfg)
    assert not isinstance(cells, str)
    assert len(cells.rows) <= 2 * cfg.max_points
    obj = fuse(_one(speckle), np.full(speckle.shape, 0.8, np.float32), K, cfg)[0]
    assert obj.valid and abs(obj.depth - 0.8) < 1e-6


# -- constructed depth -----------------------------------------------------------------------

BALL = np.array([0.05, -0.02, 0.8])
RADIUS = 0.03


def _sphere(center: np.ndarray = BALL, radius: float = RADIUS,
            background: float = np.nan) -> tuple[np.ndarray, np.ndarray]:
    """Return the exact depth (H, W) of a sphere in front of ``background`` and its mask."""
    v, u = np.mgrid[0:K.height, 0:K.width]
    rays = np.stack([(u - K.cx) / K.fx, (v - K.cy) / K.fy, np.ones(u.shape)], -1)
    a, b = (rays * rays).sum(-1), rays @ center
    disc = b * b - a * (center @ center - radius * radius)
    hit = disc >= 0
    depth = np.where(hit, (b - np.sqrt(np.where(hit, disc, 0))) / a, background)
    return depth.astype(np.float32), hit


def _one(mask: np.ndarray, name: str = "ball") -> Instances:
    return Instances.from_masks(mask[None], [0], [0.8], (name,))


def test_a_sphere_is_centred_boxed_and_grasped_on_top() -> None:
    depth, mask = _sphere()
    obj = fuse(_one(mask), depth, K)[0]
    top = BALL - RADIUS * BALL / np.linalg.norm(BALL)
    assert obj.valid and obj.reason is None
    assert (obj.index, obj.class_name, obj.score) == (0, "ball", pytest.approx(0.8))
    assert np.linalg.norm(obj.center - BALL) < 0.004
    assert _contains(obj, BALL) and np.allclose(obj.size, 2 * RADIUS, atol=0.008)
    assert np.linalg.norm(obj.grasp_point - top) < 0.002
    assert obj.grasp_normal @ (-BALL / np.linalg.norm(BALL)) > np.cos(np.radians(5))


Spoiler = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@pytest.mark.parametrize(("spoil", "reason"), [
    (lambda d, m: (np.full_like(d, np.nan), m), "no valid depth in mask"),
    (lambda d, m: (np.zeros_like(d), m), "no valid depth in mask"),
    (lambda d, m: (np.full_like(d, 9.0), m), "no valid depth in mask"),  # beyond range
    (lambda d, m: (_keep_block(d, 3, 4), m), "too few depth points (12 < 30)"),
    (lambda d, m: (d, np.zeros_like(m)), "mask empty"),
    (lambda d, m: (d, _thin_line(m)), "mask empty after erosion"),
])
def test_unusable_objects_are_flagged_with_a_reason(spoil: Spoiler, reason: str) -> None:
    depth, mask = spoil(*_sphere())
    obj = fuse(_one(mask), depth, K)[0]
    assert not obj.valid and obj.reason == reason
    for value in (obj.center, obj.size, obj.orientation, obj.grasp_point, obj.grasp_normal):
        assert np.isnan(value).all()  # never silent zeros
    assert np.isnan(obj.depth)


def _keep_block(depth: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.full_like(depth, np.nan)
    u, v = np.round(K.project(BALL[None])[0]).astype(int)
    out[v:v + rows, u:u + cols] = depth[v:v + rows, u:u + cols]
    return out


def _thin_line(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    u, v = np.round(K.project(BALL[None])[0]).astype(int)
    out[v - 1:v + 2, u - 20:u + 20] = True  # 3 px wide: nothing survives a 2 px erosion
    return out


def test_a_mask_spilling_onto_the_background_keeps_the_object() -> None:
    depth, disk = _sphere(background=1.3)
    ys, xs = np.nonzero(disk)
    mask = np.zeros_like(disk)
    width = xs.max() - xs.min()
    mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1 + width] = True  # half on background
    assert (mask & ~disk).sum() > disk.sum()  # more background than object
    obj = fuse(_one(mask), depth, K)[0]
    assert obj.valid and np.linalg.norm(obj.center - BALL) < 0.005
    assert obj.size.max() < 2 * RADIUS + 0.01  # the background is not part of the box
    assert abs(obj.depth - BALL[2]) < RADIUS


def test_holes_flying_pixels_and_noise_are_survived() -> None:
    rng = np.random.default_rng(0)
    depth, mask = _sphere(background=1.0)
    depth = np.round(depth + rng.normal(0, 0.0015, depth.shape), 3).astype(np.float32)
    depth[rng.random(depth.shape) < 0.3] = np.nan  # 30% dropouts
    u, v = np.round(K.project(BALL[None])[0]).astype(int)
    depth[v - 6:v + 7, u - 6:u + 7] = np.nan  # a hole right where the grasp would go
    spikes = rng.random(depth.shape) < 0.01
    depth[spikes] = rng.choice([0.4, 1.6], spikes.sum())  # flying pixels, near and far
    obj = fuse(_one(mask), depth, K)[0]
    assert obj.valid and np.linalg.norm(obj.center - BALL) < 0.006
    assert _contains(obj, BALL)
    top = BALL - RADIUS * BALL / np.linalg.norm(BALL)
    assert np.linalg.norm(obj.grasp_point - top) < 0.01  # beside the hole, still on top


def test_objects_keep_their_order_and_index() -> None:
    near, near_mask = _sphere()
    far_centre = np.array([-0.1, 0.05, 1.0])
    far, far_mask = _sphere(far_centre, 0.04)
    depth = np.where(near_mask, near, far)
    masks = np.stack([far_mask & ~near_mask, near_mask])
    inst = Instances.from_masks(masks, [1, 0], [0.5, 0.9], ("ball", "big_ball"))
    objects = fuse(inst, depth, K)
    assert [(o.index, o.class_name, o.score) for o in objects] == [
        (0, "big_ball", 0.5), (1, "ball", pytest.approx(0.9))]
    assert np.linalg.norm(objects[0].center - far_centre) < 0.006
    assert np.linalg.norm(objects[1].center - BALL) < 0.004


def test_no_instances_give_no_objects() -> None:
    assert fuse(Instances.empty(480, 640, CLASSES), np.ones((480, 640), np.float32), K) == []


@pytest.mark.parametrize(("depth", "intrinsics", "message"), [
    (np.ones((240, 320), np.float32), K, "not aligned to the masks"),
    (np.ones((480, 640), np.uint16), K, "float image in metres"),
    (np.ones((480, 640, 1), np.float32), K, "float image in metres"),
    (np.ones((480, 640), np.float32), CameraIntrinsics(320, 240, 300, 300, 160, 120),
     "intrinsics are for 320x240"),
])
def test_depth_not_aligned_to_the_masks_is_a_clear_error(depth: np.ndarray,
                                                         intrinsics: CameraIntrinsics,
                                                         message: str) -> None:
    _, mask = _sphere()
    with pytest.raises(FusionError, match=message):
        fuse(_one(mask), depth, intrinsics)


@pytest.mark.parametrize(("change", "message"), [
    ({"erode_px": -1}, "erode_px"),
    ({"depth_range": (1.0, 0.5)}, "depth_range"),
    ({"mad_k": 0.0}, "must be positive"),
    ({"near_cluster_ratio": 1.5}, "near_cluster_ratio"),
    ({"max_points": 10}, "max_points"),
])
def test_invalid_config_raises(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FusionConfig(**change)


def test_estimate_center_pushes_a_cylinder_surface_back_to_its_axis() -> None:
    # The front half of a lying can (r = 33 mm, axis along x) seen from 0.7 m, sampled
    # evenly across the image as pixels sample it.
    along, across = np.meshgrid(np.linspace(-0.05, 0.05, 40), np.linspace(-0.033, 0.033, 60))
    points = np.stack([along, across, 0.7 - np.sqrt(0.033**2 - across**2)], -1).reshape(-1, 3)
    rays = points / points[:, 2:]
    assert np.linalg.norm(estimate_center(points, rays) - [0, 0, 0.7]) < 0.003
