"""Image embedders for dedup: what a duplicate looks like, and a ResNet50 IR cache you can trust."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cv_autolabel.core.embedders import EMBEDDERS, Embedder, create_embedder, l2_normalise
from cv_autolabel.core.embedders.resnet50 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNet50Embedder,
    build_torch_resnet50,
    ensure_ir,
    resize_for_network,
    resolve_weights,
    verify_ir,
)
from cv_autolabel.core.embedders.thumbnail import ThumbnailEmbedder
from cv_autolabel.core.geometry import look_at_optical
from cv_autolabel.errors import EmbedderError

DUPLICATE = 0.95  # the dedup stage's threshold
REPO = Path(__file__).resolve().parents[2]


# -- fixtures: rendered views of the bin world ------------------------------------------------
@pytest.fixture(scope="module")
def views() -> dict[str, np.ndarray]:
    """Noisy 320x240 views of a bin: one pose, the camera moved sideways, another scene."""
    from cv_autolabel.tools.sim import assets
    from cv_autolabel.tools.sim.sensor import noisy_rgb
    from cv_autolabel.tools.sim.world import BinWorld, default_intrinsics

    rng = np.random.default_rng(11)
    centre = np.array([0.0, 0.0, 0.05])
    el, az = np.deg2rad(65.0), np.deg2rad(-100.0)
    eye = centre + 0.6 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    right = look_at_optical(eye, centre)[:, 0]  # camera x axis: content slides sideways
    out: dict[str, np.ndarray] = {}
    with BinWorld(assets.resolve_classes(assets.DEFAULT_CLASSES),
                  assets.resolve_classes(assets.DEFAULT_DISTRACTORS), per_class=4,
                  n_distractors=3, intrinsics=default_intrinsics(320, 240), rng=rng) as world:
        world.new_scene()
        clean = world.render(eye, centre).rgb
        out["view"], out["same"] = noisy_rgb(clean, rng), noisy_rgb(clean, rng)
        for cm in (1, 5, 20):
            move = right * cm / 100
            out[f"{cm}cm"] = noisy_rgb(world.render(eye + move, centre + move).rgb, rng)
        world.new_scene()
        out["other"] = noisy_rgb(world.render(eye, centre).rgb, rng)
    out["clean"] = clean
    out["bright"] = np.clip(out["same"].astype(np.int16) + 20, 0, 255).astype(np.uint8)
    return out


def cosine(embedder: Embedder, a: np.ndarray, b: np.ndarray) -> float:
    """Return the cosine similarity of two images' embeddings (they are unit vectors)."""
    return float(embedder.embed(a) @ embedder.embed(b))


# -- registry and helpers ---------------------------------------------------------------------
def test_registry_creates_thumbnail_embedder_that_satisfies_the_protocol() -> None:
    embedder = create_embedder("thumbnail")
    assert isinstance(embedder, Embedder)
    assert set(EMBEDDERS) == {"resnet50", "thumbnail"}


@pytest.mark.parametrize(("name", "options", "message"), [
    ("clip", {}, "known embedders: resnet50, thumbnail"),
    ("thumbnail", {"size": 64}, "bad options for the 'thumbnail' embedder"),
    ("resnet50", {"weigths": None}, "bad options for the 'resnet50' embedder"),
])
def test_registry_rejects_unknown_names_and_options(name: str, options: dict,
                                                     message: str) -> None:
    with pytest.raises(EmbedderError, match=message):
        create_embedder(name, **options)


def test_importing_embedders_imports_neither_torch_nor_openvino() -> None:
    code = ("import sys; from cv_autolabel.core.embedders import create_embedder; "
            "create_embedder('thumbnail').embed(__import__('numpy').zeros((8, 8, 3), 'uint8')); "
            "print(sorted(m for m in ('torch', 'openvino') if m in sys.modules))")
    assert _python(code).stdout.strip().splitlines()[-1] == "[]"


def test_l2_normalise_scales_rows_and_leaves_zero_rows_alone() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


# -- thumbnail ------------------------------------------------------------------------------
def test_thumbnail_embedding_is_a_unit_float32_vector(views: dict[str, np.ndarray]) -> None:
    embedder = ThumbnailEmbedder()
    vector = embedder.embed(views["view"])
    assert vector.shape == (embedder.dim,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert cosine(embedder, views["view"], views["view"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("other", "low", "high"), [
    ("same", 0.98, 1.0),     # the same view, fresh sensor noise
    ("bright", DUPLICATE, 1.0),  # auto-exposure brightened it by 20 levels
    ("1cm", DUPLICATE, 1.0),  # a camera that barely moved
    ("5cm", -1.0, DUPLICATE),  # content slid by ~8% of the width: a new view
    ("20cm", -1.0, 0.9),     # a third of the view is new
    ("other", -1.0, 0.9),    # another pile in another bin
])
def test_thumbnail_scores_duplicates_high_and_new_views_low(
        views: dict[str, np.ndarray], other: str, low: float, high: float) -> None:
    assert low <= cosine(ThumbnailEmbedder(), views["view"], views[other]) <= high + 1e-5


def test_thumbnail_similarity_falls_as_the_camera_moves(views: dict[str, np.ndarray]) -> None:
    embedder = ThumbnailEmbedder()
    scores = [cosine(embedder, views["view"], views[k]) for k in ("same", "1cm", "5cm", "20cm")]
    assert scores == sorted(scores, reverse=True)


def test_thumbnail_view_shifted_by_a_third_of_its_width_is_new(
        views: dict[str, np.ndarray]) -> None:
    image = views["view"]
    third = image.shape[1] // 3
    left, right = image[:, : 2 * third], image[:, third: 3 * third]
    assert cosine(ThumbnailEmbedder(), left, right) < 0.9


def test_thumbnail_featureless_frames_are_duplicates_of_each_other() -> None:
    # A capped lens yields dark frames that differ only by sensor noise: one is enough.
    rng = np.random.default_rng(0)
    dark = [np.clip(rng.normal(3, 2, (240, 320, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    white = np.full((240, 320, 3), 250, np.uint8)
    embedder = ThumbnailEmbedder()
    assert cosine(embedder, dark[0], dark[1]) >= DUPLICATE
    assert cosine(embedder, dark[0], white) < 0.5


def test_thumbnail_batch_equals_singles(views: dict[str, np.ndarray]) -> None:
    embedder = ThumbnailEmbedder()
    images = [views["view"], views["other"][:100, :150], views["5cm"]]
    batch = embedder.embed_batch(images)
    assert batch.shape == (3, embedder.dim) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, [embedder.embed(im) for im in images], atol=1e-6)
    assert embedder.embed_batch([]).shape == (0, embedder.dim)


BAD_IMAGES = [
    pytest.param(np.zeros((48, 64), np.uint8), id="grey"),
    pytest.param(np.zeros((48, 64, 4), np.uint8), id="rgba"),
    pytest.param(np.zeros((48, 64, 3), np.float32), id="float"),
    pytest.param(np.zeros((0, 64, 3), np.uint8), id="empty"),
    pytest.param([[0, 0, 0]], id="list"),
]


@pytest.mark.parametrize("image", BAD_IMAGES)
def test_thumbnail_rejects_what_is_not_an_rgb8_image(image: np.ndarray) -> None:
    with pytest.raises(EmbedderError, match="uint8"):
        ThumbnailEmbedder().embed(image)
    with pytest.raises(EmbedderError, match="uint8"):
        ThumbnailEmbedder().embed_batch([np.zeros((8, 8, 3), np.uint8), image])


# -- ResNet50: conversion, cache, OpenVINO ----------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the FP32 IR of the seeded random ResNet50 (no weights exist here)."""
    root = tmp_path_factory.mktemp("embedders")
    started = time.perf_counter()
    ensure_ir(None, root)
    print(f"random ResNet50 -> FP32 IR: {time.perf_counter() - started:.1f} s")
    return root


@pytest.fixture(scope="module")
def resnet(cache: Path) -> ResNet50Embedder:
    """The FP32 embedder loaded from ``cache``."""
    return ResNet50Embedder(None, cache_dir=cache)


def test_conversion_writes_ir_and_manifest_atomically(cache: Path,
                                                      resnet: ResNet50Embedder) -> None:
    directory = resnet.ir_path.parent
    assert directory.parent == cache and directory.name == "resnet50-random-seed0-224-fp32"
    assert {p.name for p in directory.iterdir()} == {"model.xml", "model.bin", "manifest.json"}
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["name"] == resnet.name == "resnet50-random-seed0-224-fp32"
    assert manifest["weights_sha256"] is None and manifest["precision"] == "fp32"
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temp dirs


def test_resnet_embedding_is_a_unit_float32_vector(resnet: ResNet50Embedder,
                                                   views: dict[str, np.ndarray]) -> None:
    vector = resnet.embed(views["view"])
    assert vector.shape == (2048,) and vector.dtype == np.float32
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_resnet_batch_equals_singles(resnet: ResNet50Embedder,
                                     views: dict[str, np.ndarray]) -> None:
    images = [views["view"], views["other"][:120, :200], views["20cm"]]
    batch = resnet.embed_batch(images)
    assert batch.shape == (3, 2048) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, [resnet.embed(im) for im in images], atol=1e-5)
    assert resnet.embed_batch([]).shape == (0, 2048)


@pytest.mark.parametrize("image", BAD_IMAGES)
def test_resnet_rejects_what_is_not_an_rgb8_image(resnet: ResNet50Embedder,
                                                  image: np.ndarray) -> None:
    with pytest.raises(EmbedderError, match="uint8"):
        resnet.embed(image)


def test_openvino_ir_matches_the_torch_model(resnet: ResNet50Embedder,
                                             views: dict[str, np.ndarray]) -> None:
    import torch

    images = [views[k] for k in ("view", "20cm", "other")]
    batch = np.stack([resize_for_network(im, 224) for im in images]).astype(np.float32)
    x = torch.from_numpy((batch - IMAGENET_MEAN) / IMAGENET_STD).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = l2_normalise(build_torch_resnet50(None)(x).numpy())
    agreement = (resnet.embed_batch(images) * expected).sum(axis=1)
    assert agreement.min() > 0.999


def test_cached_ir_loads_without_importing_torch(cache: Path, resnet: ResNet50Embedder) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in resnet.ir_path.parent.iterdir()}
    code = ("import sys, numpy as np; "
            "from cv_autolabel.core.embedders.resnet50 import ResNet50Embedder; "
            f"e = ResNet50Embedder(None, cache_dir={str(cache)!r}); "
            "v = e.embed(np.zeros((480, 640, 3), np.uint8)); "
            "print(e.name, v.shape, 'torch' in sys.modules)")
    out = _python(code).stdout.strip().splitlines()[-1]
    assert out == f"{resnet.name} (2048,) False"
    assert {p.name: p.stat().st_mtime_ns for p in resnet.ir_path.parent.iterdir()} == before


def test_weights_content_not_path_keys_the_cache(tmp_path: Path, cache: Path) -> None:
    import torch

    state = build_torch_resnet50(None).state_dict()
    torch.save(state, tmp_path / "a.pth")
    shutil.copy(tmp_path / "a.pth", tmp_path / "copy.pth")
    first = ResNet50Embedder(tmp_path / "a.pth", cache_dir=tmp_path / "cache")
    same = ensure_ir(tmp_path / "copy.pth", tmp_path / "cache")
    assert same == first.ir_path  # same bytes elsewhere: reused, not reconverted
    state["layer4.2.conv3.weight"].mul_(-1.0)  # fine-tuned in place, same file name
    torch.save(state, tmp_path / "a.pth")
    second = ResNet50Embedder(tmp_path / "a.pth", cache_dir=tmp_path / "cache")
    assert second.name != first.name and second.ir_path != first.ir_path
    assert resolve_weights(tmp_path / "a.pth").digest in second.name
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), np.uint8)
    assert not np.allclose(first.embed(image), second.embed(image), atol=1e-4)


def test_corrupted_ir_is_detected_and_rebuilt(tmp_path: Path, cache: Path,
                                              resnet: ResNet50Embedder,
                                              caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    ir = copy / resnet.ir_path.parent.name
    _truncate(ir / "model.bin")
    assert "model.bin does not match" in verify_ir(ir)
    with caplog.at_level(logging.WARNING):
        rebuilt = ResNet50Embedder(None, cache_dir=copy)
    assert "rebuilding cached IR" in caplog.text
    assert verify_ir(ir) is None
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    np.testing.assert_allclose(rebuilt.embed(image), resnet.embed(image), atol=1e-5)


def test_corrupted_ir_without_torch_is_a_clear_error(tmp_path: Path, cache: Path,
                                                     resnet: ResNet50Embedder) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    _truncate(copy / resnet.ir_path.parent.name / "model.bin")
    code = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = None; "
            "from cv_autolabel.errors import EmbedderError; "
            "from cv_autolabel.core.embedders.resnet50 import ResNet50Embedder\n"
            f"try: ResNet50Embedder(None, cache_dir={str(copy)!r})\n"
            "except EmbedderError as err: print('error:', err)")
    assert "error: building the ResNet50 IR needs torch" in _python(code).stdout


def test_missing_weights_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError) as caught:
        ResNet50Embedder(tmp_path / "nope.pth", cache_dir=tmp_path)
    assert str(tmp_path / "nope.pth") in str(caught.value)
    assert "weights=PATH" in str(caught.value) and "'thumbnail'" in str(caught.value)


def test_imagenet_without_torch_cache_names_the_expected_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(EmbedderError) as caught:
        create_embedder("resnet50", weights="imagenet", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}/resnet50-*.pth" in message
    assert "weights=PATH" in message and "'thumbnail'" in message
    assert not (tmp_path / "cache").exists()


def test_imagenet_uses_torchvision_cached_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-11ad3fa6.pth").write_bytes(b"weights")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = resolve_weights("imagenet")
    assert source.path == checkpoints / "resnet50-11ad3fa6.pth"
    assert source.digest == hashlib.sha256(b"weights").hexdigest()[:16]


@pytest.mark.parametrize(("content", "message"), [
    (b"not a checkpoint", "is not a torch state_dict file"),
    ("other_model", "does not hold torchvision ResNet50 weights"),
])
def test_a_file_without_resnet50_weights_is_rejected(tmp_path: Path, content: object,
                                                     message: str) -> None:
    import torch

    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(EmbedderError, match=message):
        ensure_ir(path, tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").iterdir()] == []  # no half-built IR left


@pytest.mark.parametrize(("options", "message"), [
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"input_size": 8}, "input_size must be an integer in 32..1024"),
])
def test_bad_conversion_options_are_rejected(tmp_path: Path, options: dict,
                                             message: str) -> None:
    with pytest.raises(EmbedderError, match=message):
        ensure_ir(None, tmp_path, **options)


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(EmbedderError, match="cannot write the embedder cache"):
        ensure_ir(None, tmp_path / "file" / "cache")


# -- INT8 -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet_int8(cache: Path, views: dict[str, np.ndarray]) -> ResNet50Embedder:
    """INT8 embedder quantised from the cached FP32 IR, calibrated on rendered frames."""
    calibration = [views[k] for k in ("clean", "view", "1cm", "5cm", "20cm", "other")]
    calibration += [im[:, ::-1] for im in calibration]
    started = time.perf_counter()
    embedder = ResNet50Embedder(None, precision="int8", cache_dir=cache,
                                calibration=calibration)
    print(f"FP32 IR -> INT8 IR: {time.perf_counter() - started:.1f} s")
    return embedder


def test_int8_ir_is_cached_under_its_own_name(cache: Path, resnet: ResNet50Embedder,
                                              resnet_int8: ResNet50Embedder) -> None:
    assert resnet_int8.ir_path.parent.name == "resnet50-random-seed0-224-int8"
    assert resnet_int8.name.startswith("resnet50-random-seed0-224-int8-")
    assert resnet_int8.name != resnet.name
    manifest = json.loads((resnet_int8.ir_path.parent / "manifest.json").read_text())
    assert manifest["calibration"] == "12 caller images"
    again = ResNet50Embedder(None, precision="int8", cache_dir=cache)  # no calibration needed
    assert again.name == resnet_int8.name


def test_int8_embeddings_agree_with_fp32(resnet: ResNet50Embedder,
                                         resnet_int8: ResNet50Embedder,
                                         views: dict[str, np.ndarray]) -> None:
    images = [views[k] for k in ("view", "1cm", "20cm", "other")]
    fp32, int8 = resnet.embed_batch(images), resnet_int8.embed_batch(images)
    assert int8.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert (fp32 * int8).sum(axis=1).min() > 0.98
    # Random weights map every image close together, so also check that quantisation moves
    # an embedding less than a change of scene does.
    error = np.linalg.norm(fp32 - int8, axis=1).max()
    assert error < 0.5 * np.linalg.norm(fp32[0] - fp32[3])


# -- helpers --------------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _truncate(path: Path) -> None:
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
