"""Checksum manifests of exported models: what the detector verifies before hot reload.

``manifest.json`` in a model directory lists every file of the model with its size and
SHA-256 (plus free-form metadata such as the dataset version and validation mAP). A model
whose files do not match — a half-copied directory, a truncated ``.bin`` — is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from cv_autolabel.core.fsio import write_bytes_atomic
from cv_autolabel.errors import ModelError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(model_dir: Path, **metadata: Any) -> Path:
    """Hash every file of ``model_dir`` (except the manifest) into ``manifest.json``."""
    files = {p.relative_to(model_dir).as_posix(): {"size": p.stat().st_size,
                                                    "sha256": sha256_file(p)}
             for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    doc = {"files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **metadata}
    path = model_dir / MANIFEST
    write_bytes_atomic(path, json.dumps(doc, indent=1).encode())
    return path


def verify_manifest(model_dir: Path) -> dict[str, Any]:
    """Return the manifest of ``model_dir`` if every listed file matches; else raise ModelError."""
    path = model_dir / MANIFEST
    try:
        doc = json.loads(path.read_text())
        files = doc["files"]
    except FileNotFoundError:
        raise ModelError(f"{model_dir} has no {MANIFEST}: export models with "
                         "`cv-autolabel export` (or write one with write_manifest)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"{path} is unreadable: {err}") from err
    if not files:
        raise ModelError(f"{path} lists no files")
    for name, want in files.items():
        _check_file(model_dir / name, want)
    return doc


def _check_file(path: Path, want: dict[str, Any]) -> None:
    if not path.is_file():
        raise ModelError(f"{path} is listed in the manifest but missing")
    if path.stat().st_size != want.get("size"):
        raise ModelError(f"{path} has {path.stat().st_size} bytes, the manifest says "
                         f"{want.get('size')}: incomplete copy?")
    if sha256_file(path) != want.get("sha256"):
        raise ModelError(f"{path} does not match its manifest checksum")


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """A model directory's manifest as recorded, or None when it is missing or unreadable.
    Only read, not verified: loading verifies (:func:`verify_manifest`)."""
    try:
        doc = json.loads((Path(model_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def train_instances(model_dir: Path) -> dict[str, int] | None:
    """The ``train_instances`` a model's manifest records (instances per class in the split
    it was trained on; ``cv-autolabel export`` writes them), or None when the manifest is
    missing, unreadable or has none.
    """
    counts = (read_manifest(model_dir) or {}).get("train_instances")
    if not isinstance(counts, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()):
        return None
    return {str(k): v for k, v in counts.items()}
