"""ResNet50 embeddings run by OpenVINO, converted once from torchvision weights and cached.

Offline, :func:`ensure_ir` turns a torchvision ResNet50 state_dict into an OpenVINO IR whose
input is the camera's own format (uint8 NHWC RGB; ImageNet normalisation and the layout change
are baked into the graph), optionally quantises it to INT8 with NNCF, and caches it under a
directory keyed by the weights' sha256, the input size and the precision. Online,
:class:`ResNet50Embedder` finds the cached IR, checks it against its manifest and runs it with
OpenVINO alone: torch is imported only when an IR has to be built.

Cache layout (one directory per IR, published by an atomic rename)::

    <cache_dir>/resnet50-<sha256[:16] | random-seed0>-<input size>-<fp32 | int8>/
        model.xml  model.bin  manifest.json   (sha256 of both files, name, provenance)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cv_autolabel.core.embedders import check_rgb, l2_normalise
from cv_autolabel.errors import EmbedderError

log = logging.getLogger(__name__)

DIM = 2048
PRECISIONS = ("fp32", "int8")
#: torchvision's ImageNet normalisation, in 0..255 units because the IR takes uint8.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
#: Seed of ``weights=None`` (random initialisation): tests need the same "model" every run.
RANDOM_SEED = 0
#: Images per inference call in ``embed_batch`` (bounds memory for long lists).
BATCH_CHUNK = 16
WEIGHTS_HINT = "resnet50-11ad3fa6.pth"
_XML, _BIN, _MANIFEST = "model.xml", "model.bin", "manifest.json"
# On AMX CPUs OpenVINO silently runs "FP32" in bf16; FP32 must mean FP32. INT8 keeps defaults.
_PRECISION_CONFIG: dict[str, dict[str, str]] = {
    "fp32": {"INFERENCE_PRECISION_HINT": "f32"},
    "int8": {},
}


@dataclass(frozen=True)
class WeightsSource:
    """ResNet50 weights and the digest that keys their cached IR.

    Attributes:
        path: a torchvision state_dict file, or None for seeded random initialisation.
        sha256: hex digest of the file's content; None for random initialisation.
    """

    path: Path | None
    sha256: str | None

    @property
    def digest(self) -> str:
        """Return the short key of these weights (16 hex chars, or ``random-seed0``)."""
        return self.sha256[:16] if self.sha256 else f"random-seed{RANDOM_SEED}"


def torch_home() -> Path:
    """Return torch's cache root, resolved as torch does (``$TORCH_HOME``, else XDG)."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "torch"


def default_cache_dir() -> Path:
    """Return where converted IRs live unless a cache_dir is given."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    return base / "cv_autolabel" / "embedders"


def resolve_weights(weights: str | os.PathLike[str] | None) -> WeightsSource:
    """Locate and fingerprint ``weights``: a state_dict path, ``"imagenet"`` or None.

    ``"imagenet"`` means torchvision's cached download,
    ``$TORCH_HOME/hub/checkpoints/resnet50-*.pth``; nothing is ever downloaded.

    Raises:
        EmbedderError: the file does not exist (the message says where to put it).
    """
    if weights is None:
        return WeightsSource(None, None)
    path = _imagenet_checkpoint() if str(weights) == "imagenet" else Path(weights).expanduser()
    if not path.is_file():
        msg = (f"ResNet50 weights file {path} not found; pass weights=PATH to a "
               "torchvision ResNet50 state_dict (.pth), or use the 'thumbnail' embedder, "
               "which needs no weights")
        raise EmbedderError(msg)
    return WeightsSource(path, _sha256(path))


def _imagenet_checkpoint() -> Path:
    folder = torch_home() / "hub" / "checkpoints"
    found = sorted(folder.glob("resnet50-*.pth"))
    if not found:
        msg = (f"no ImageNet ResNet50 weights found: expected torchvision's file at "
               f"{folder}/resnet50-*.pth (e.g. {WEIGHTS_HINT} from "
               f"https://download.pytorch.org/models/{WEIGHTS_HINT}; set TORCH_HOME to use "
               "another torch cache). Copy it there, pass weights=PATH to a ResNet50 "
               "state_dict, or use the 'thumbnail' embedder, which needs no weights")
        raise EmbedderError(msg)
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def ir_dir(source: WeightsSource, cache_dir: Path, input_size: int, precision: str) -> Path:
    """Return the cache directory of one IR (it may not exist yet)."""
    return cache_dir / f"resnet50-{source.digest}-{input_size}-{precision}"


def ensure_ir(weights: str | os.PathLike[str] | None = "imagenet",
              cache_dir: str | os.PathLike[str] | None = None, input_size: int = 224,
              precision: str = "fp32", calibration: Sequence[np.ndarray] | None = None,
              *, rebuild: bool = False) -> Path:
    """Return the path of a verified cached IR (``model.xml``), building it if needed.

    Building FP32 needs torch and torchvision; INT8 is quantised from the FP32 IR (built
    first if missing) and needs nncf. A cached IR whose files do not match its manifest
    (truncated, edited) is rebuilt.

    Args:
        weights: state_dict path, ``"imagenet"`` (torchvision's cached file) or None
            (random initialisation with a fixed seed, for tests).
        cache_dir: cache root; default ``~/.cache/cv_autolabel/embedders``.
        input_size: side of the square network input in pixels.
        precision: ``"fp32"`` or ``"int8"``.
        calibration: RGB uint8 images (any size) that calibrate INT8; real camera frames
            calibrate better than the synthetic default. Used only when INT8 is (re)built.
        rebuild: rebuild even if a valid IR is cached (e.g. to recalibrate INT8).

    Raises:
        EmbedderError: bad options, missing weights, or a build that cannot run.
    """
    _check_options(input_size, precision)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _ensure(resolve_weights(weights), cache, input_size, precision, calibration, rebuild)


def _check_options(input_size: int, precision: str) -> None:
    if precision not in PRECISIONS:
        msg = f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}"
        raise EmbedderError(msg)
    if not isinstance(input_size, int) or not 32 <= input_size <= 1024:
        msg = f"input_size must be an integer in 32..1024, got {input_size!r}"
        raise EmbedderError(msg)


def _ensure(source: WeightsSource, cache: Path, input_size: int, precision: str,
            calibration: Sequence[np.ndarray] | None, rebuild: bool) -> Path:
    target = ir_dir(source, cache, input_size, precision)
    problem = "a rebuild was requested" if rebuild else verify_ir(target)
    if problem is None:
        return target / _XML
    if target.exists():
        log.warning("rebuilding cached IR %s: %s", target, problem)
    build: Callable[[Path], str]
    if precision == "fp32":
        build = partial(_convert_fp32, source, input_size)
    else:
        fp32 = _ensure(source, cache, input_size, "fp32", None, rebuild=False)
        build = partial(_quantize, fp32, calibration, input_size)
    info = {"weights": str(source.path) if source.path else "random",
            "weights_sha256": source.sha256, "input_size": input_size, "precision": precision}
    _publish(target, build, info)
    return target / _XML


def verify_ir(directory: Path) -> str | None:
    """Return why the cached IR in ``directory`` cannot be used, or None if it is intact."""
    try:
        manifest = read_manifest(directory)
    except EmbedderError as err:
        return str(err)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {_XML, _BIN} or "name" not in manifest:
        return f"the manifest in {directory} is incomplete"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file() or _sha256(path) != expected:
            return f"{name} does not match its manifest (truncated or modified)"
    return None


def read_manifest(directory: Path) -> dict[str, Any]:
    """Return the manifest of the cached IR in ``directory``.

    Raises:
        EmbedderError: there is no manifest, or it is not a JSON object.
    """
    path = directory / _MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"no cached IR at {directory}"
        raise EmbedderError(msg) from None
    except (OSError, ValueError) as err:
        msg = f"unreadable manifest {path}: {err}"
        raise EmbedderError(msg) from err
    if not isinstance(manifest, dict):
        msg = f"manifest {path} is not a JSON object"
        raise EmbedderError(msg)
    return manifest


def _publish(target: Path, build: Callable[[Path], str], info: dict[str, Any]) -> None:
    # Build in a sibling temp directory and rename it into place, so a crash or a concurrent
    # reader never sees half an IR.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        msg = f"cannot write the embedder cache {target.parent}: {err}; pass another cache_dir"
        raise EmbedderError(msg) from err
    try:
        started = time.perf_counter()
        calibration = build(tmp / _XML)
        files = {name: _sha256(tmp / name) for name in (_XML, _BIN)}
        name = f"{target.name}-{files[_BIN][:8]}" if info["precision"] == "int8" else target.name
        manifest = {**info, "name": name, "calibration": calibration, "files": files,
                    "build_seconds": round(time.perf_counter() - started, 2),
                    "openvino": _openvino_version()}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    stale = None
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
        target.rename(stale / "ir")
    try:
        new.rename(target)
    except OSError as err:
        # Another process published the same IR meanwhile: keep theirs if it is intact.
        if verify_ir(target) is not None:
            msg = f"cannot publish the converted IR to {target}: {err}"
            raise EmbedderError(msg) from err
    finally:
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)


def _openvino_version() -> str:
    import openvino  # noqa: PLC0415

    return str(openvino.__version__)


def build_torch_resnet50(weights: Path | None) -> Any:
    """Return the torch ResNet50 feature extractor (fc = identity, eval mode).

    Args:
        weights: a torchvision ResNet50 state_dict file, with or without the ``fc.``
            classifier (also accepted: a dict holding one under ``"state_dict"`` or
            ``"model"``), or None for the seeded random model.

    Raises:
        EmbedderError: torch/torchvision are missing, or the file holds no ResNet50 weights.
    """
    try:
        import torch  # noqa: PLC0415
        import torchvision  # noqa: PLC0415
    except ImportError as err:
        msg = (f"building the ResNet50 IR needs torch and torchvision ({err}); install them, "
               "or copy an already converted IR cache from another machine")
        raise EmbedderError(msg) from err
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    if weights is not None:
        _load_weights(torch, model, weights)
    return model.eval()


def _load_weights(torch: Any, model: Any, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds for a bad file
        msg = f"{path} is not a torch state_dict file: {err}"
        raise EmbedderError(msg) from err
    if isinstance(state, dict) and isinstance(state.get("state_dict", state.get("model")), dict):
        state = state.get("state_dict", state.get("model"))
    if not isinstance(state, dict):
        msg = f"{path} holds a {type(state).__name__}, not a state_dict"
        raise EmbedderError(msg)
    # The classifier is never used: accept ImageNet checkpoints and headless backbones alike.
    state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        msg = f"{path} does not hold torchvision ResNet50 weights: {str(err)[:300]}"
        raise EmbedderError(msg) from err


def _convert_fp32(source: WeightsSource, input_size: int, xml: Path) -> str:
    model = build_torch_resnet50(source.path)
    import openvino as ov  # noqa: PLC0415
    import torch  # noqa: PLC0415

    example = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad(), warnings.catch_warnings():
        # Tracing ourselves skips the trace check that convert_model(model, example_input=...)
        # runs: same graph, 0.6 s instead of 2-12 s (two extra forward passes on a busy CPU).
        # torch flags torch.jit as deprecated; the warning is noise to a user converting.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
        converted = ov.convert_model(traced, input=[(-1, 3, input_size, input_size)])
    ov.save_model(_with_preprocessing(converted), xml, compress_to_fp16=False)
    return "none"


def _with_preprocessing(model: Any) -> Any:
    import openvino as ov  # noqa: PLC0415
    from openvino.preprocess import PrePostProcessor  # noqa: PLC0415

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    steps.mean(list(IMAGENET_MEAN)).scale(list(IMAGENET_STD))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    built = ppp.build()
    built.inputs[0].get_tensor().set_names({"image"})
    built.outputs[0].get_tensor().set_names({"embedding"})
    return built


def _quantize(fp32_xml: Path, calibration: Sequence[np.ndarray] | None, input_size: int,
              xml: Path) -> str:
    try:
        import nncf  # noqa: PLC0415
        import openvino as ov  # noqa: PLC0415
    except ImportError as err:
        msg = f"INT8 quantisation needs nncf ({err}); install it or use precision='fp32'"
        raise EmbedderError(msg) from err
    images = synthetic_calibration(size=input_size) if calibration is None else calibration
    if len(images) == 0:
        raise EmbedderError("INT8 calibration needs at least one image")
    items = [resize_for_network(check_rgb(image), input_size)[None] for image in images]
    model = ov.Core().read_model(fp32_xml)
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    ov.save_model(quantized, xml)
    return f"{len(items)} {'synthetic' if calibration is None else 'caller'} images"


def synthetic_calibration(count: int = 64, size: int = 224, seed: int = 0) -> list[np.ndarray]:
    """Return ``count`` deterministic (size, size, 3) uint8 calibration images.

    Each mixes a colour gradient, blurred noise at a random scale and a few flat-coloured
    discs, which spans the activation ranges of natural images well enough for INT8; real
    camera frames still calibrate better (pass them as ``calibration``).
    """
    images = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        slope = rng.uniform(-60, 60, (2, 3))
        image = 128 + xx[..., None] * slope[0] + yy[..., None] * slope[1] + rng.uniform(-40, 40, 3)
        noise = cv2.GaussianBlur(rng.normal(0, 1, (size, size, 3)).astype(np.float32), (0, 0),
                                 float(rng.uniform(0.5, 8.0)))
        image += noise * float(rng.uniform(15, 70)) / max(float(noise.std()), 1e-6)
        for _ in range(int(rng.integers(2, 9))):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.circle(image, centre, int(rng.integers(size // 40 + 1, size // 4)),
                       rng.integers(0, 256, 3).tolist(), -1)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def resize_for_network(rgb: np.ndarray, input_size: int) -> np.ndarray:
    """Return ``rgb`` area-resized to (input_size, input_size, 3), C-contiguous.

    The whole field of view is kept (stretched, not centre-cropped): what enters at the
    frame's edge is exactly what makes a view new.
    """
    if rgb.shape[:2] == (input_size, input_size):
        return np.ascontiguousarray(rgb)
    # INTER_AREA anti-aliases the ~3x downscale; INTER_LINEAR is ~0.75 ms faster at 640x480
    # but aliases sensor noise into the features.
    return cv2.resize(rgb, (input_size, input_size), interpolation=cv2.INTER_AREA)


class ResNet50Embedder:
    """Global-average-pooled ResNet50 features (2048-d, L2-normalised) run by OpenVINO.

    Construction builds the IR on first use (see :func:`ensure_ir`; needs torch) and then
    only loads it: with a cached IR, torch is never imported. ``embed`` and ``embed_batch``
    may be called from several threads; calls are serialised.

    Attributes:
        name: the manifest's name, e.g. ``resnet50-<sha16>-224-fp32``; INT8 adds a digest of
            the quantised weights, so a recalibrated model gets a new name.
        dim: 2048.
        ir_path: the cached ``model.xml`` in use.
    """

    dim = DIM

    def __init__(self, weights: str | os.PathLike[str] | None = "imagenet", *,
                 precision: str = "fp32", input_size: int = 224,
                 cache_dir: str | os.PathLike[str] | None = None,
                 calibration: Sequence[np.ndarray] | None = None) -> None:
        self.ir_path = ensure_ir(weights, cache_dir, input_size, precision, calibration)
        self.name: str = read_manifest(self.ir_path.parent)["name"]
        self.precision, self.input_size = precision, input_size
        self._request = _compile(self.ir_path, precision).create_infer_request()
        self._lock = threading.Lock()

    @classmethod
    def convert(cls, weights: str | os.PathLike[str] | None = "imagenet", **options: Any) -> Path:
        """Build (or verify) the cached IR without loading it; return its ``model.xml``.

        Takes the keyword options of :func:`ensure_ir` (for a CLI ``convert`` command).
        """
        return ensure_ir(weights, **options)

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """Return the (2048,) float32 unit-norm embedding of one (H, W, 3) uint8 RGB image."""
        return self._infer(resize_for_network(check_rgb(rgb), self.input_size)[None])[0]

    def embed_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Return (N, 2048) float32 unit-norm embeddings of RGB images of any sizes."""
        out = np.empty((len(images), DIM), np.float32)
        for start in range(0, len(images), BATCH_CHUNK):
            chunk = images[start:start + BATCH_CHUNK]
            batch = np.stack([resize_for_network(check_rgb(im), self.input_size) for im in chunk])
            out[start:start + len(chunk)] = self._infer(batch)
        return out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            features = self._request.infer({0: batch})[0]
            return l2_normalise(features)


def _compile(xml: Path, precision: str) -> Any:
    import openvino as ov  # noqa: PLC0415

    config = {**_PRECISION_CONFIG[precision], "PERFORMANCE_HINT": "LATENCY"}
    try:
        core = ov.Core()
        return core.compile_model(core.read_model(xml), "CPU", config)
    except RuntimeError as err:
        msg = f"OpenVINO cannot load {xml}: {err}"
        raise EmbedderError(msg) from err
