"""Hot reload: swap the detector's model without dropping out, keep the old one on failure.

A ``ModelSlot`` holds the segmenter in use. ``reload()`` (the node's ``~/reload`` service, or
``poll()`` when the watched path changes) verifies the new model's checksum manifest, loads
it completely *beside* the running one, and only then swaps a single reference, so frames in
flight finish on the old model and the next frame uses the new one. A model that fails its
manifest or fails to load leaves the old one in place and says why.

The watched path is typically a symlink (``models/current -> models/2026-11-22_1200``) that
the export step re-points atomically; a change of its target or of its manifest triggers a
reload.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cv_autolabel.core.manifest import MANIFEST, verify_manifest
from cv_autolabel.errors import CvAutolabelError, ModelError

log = logging.getLogger(__name__)

Loader = Callable[[Path], Any]
#: Where the detector looks for its model, and where a publish points by default.
DEFAULT_MODEL_LINK = "~/cv_autolabel_data/models/current"


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of a reload attempt (what ``~/reload`` answers)."""

    success: bool
    message: str
    model_dir: Path | None


def _fingerprint(path: Path) -> tuple[str, float] | None:
    """Return (resolved target, manifest mtime) of a model path, None if it is absent."""
    try:
        target = path.resolve(strict=True)
        return str(target), (target / MANIFEST).stat().st_mtime
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None


class ModelSlot:
    """The current model behind a path, swappable at run time.

    Args:
        path: model directory (or a symlink to one) to load now and on reload.
        loader: builds a model (e.g. a segmenter) from a verified directory.
        require_manifest: refuse models without a valid ``manifest.json``.
        optional: the path may hold no (loadable) model yet: :attr:`current` is then None
            until :meth:`poll` sees one appear (the first model published to a robot).
            Without it the first load must succeed.

    Raises:
        ModelError (or the loader's CvAutolabelError): the first load failed, unless
            ``optional``.
    """

    def __init__(self, path: Path, loader: Loader, *, require_manifest: bool = True,
                 optional: bool = False) -> None:
        self.path, self.loader, self.require_manifest = Path(path), loader, require_manifest
        self._lock = threading.Lock()
        self.reloads = 0
        self.failed_reloads = 0
        self._seen = _fingerprint(self.path)
        try:
            self.model, self.model_dir = self._load(self.path)
        except CvAutolabelError as err:
            if not optional:
                raise
            log.warning("no model loaded from %s yet (%s); waiting for one", self.path, err)
            self.model, self.model_dir = None, None

    @property
    def current(self) -> Any:
        """The model in use (read once per frame; the reference swap is atomic); None while
        an ``optional`` slot has none."""
        return self.model

    def reload(self, path: Path | None = None) -> ReloadResult:
        """Load ``path`` (default: the configured path) and swap to it if it is sound."""
        with self._lock:
            target = Path(path) if path is not None else self.path
            try:
                model, model_dir = self._load(target)
            except CvAutolabelError as err:
                self.failed_reloads += 1
                log.error("model reload from %s failed, keeping %s: %s", target,
                          self.model_dir, err)
                return ReloadResult(False, f"kept {self.model_dir}: {err}", self.model_dir)
            self.model, self.model_dir = model, model_dir
            if path is not None:
                self.path = Path(path)
            self._seen = _fingerprint(self.path)
            self.reloads += 1
            log.info("model reloaded from %s", model_dir)
            return ReloadResult(True, f"now using {model_dir}", model_dir)

    def poll(self) -> ReloadResult | None:
        """Reload if the watched path now points to another model or a new manifest."""
        seen = _fingerprint(self.path)
        if seen is None or seen == self._seen:
            return None
        result = self.reload()
        if not result.success:
            self._seen = seen  # do not retry the same broken model on every poll
        return result

    def _load(self, path: Path) -> tuple[Any, Path]:
        if not path.exists():
            raise ModelError(f"model path {path} does not exist")
        model_dir = path.resolve()
        if self.require_manifest:
            verify_manifest(model_dir)
        elif not (model_dir / MANIFEST).exists():
            log.warning("model %s has no %s; loading it unverified", model_dir, MANIFEST)
        try:
            return self.loader(model_dir), model_dir
        except CvAutolabelError:
            raise
        except Exception as err:  # a loader's own failure must not take the detector down
            raise ModelError(f"cannot load model {model_dir}: {err}") from err


def check_publish_link(link: Path) -> None:
    """Raise ModelError unless ``link`` is absent or a symlink (publishing never replaces a
    real file or directory)."""
    if link.exists() and not link.is_symlink():
        raise ModelError(f"cannot publish: {link} exists and is not a symlink")


def publish_model(model_dir: Path, link: Path) -> dict[str, Any]:
    """Point ``link`` (the detector's ``model_path``) at ``model_dir`` once its checksum
    manifest verifies; return the manifest.

    A failed INT8 export has no manifest, so it cannot be published. The detector watching
    ``link`` then reloads (verifying again on its side).

    Raises:
        ModelError: ``model_dir`` missing, its manifest absent or not matching its files, or
            ``link`` a real file or directory.
    """
    model_dir, link = Path(model_dir).expanduser(), Path(link).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"no model directory at {model_dir}")
    check_publish_link(link)
    manifest = verify_manifest(model_dir)
    link.parent.mkdir(parents=True, exist_ok=True)
    replace_symlink(link, model_dir.resolve())
    return manifest


def replace_symlink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target`` atomically (what an export step does to publish)."""
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)
