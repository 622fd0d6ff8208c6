"""The on-disk archive of frames the dedup stage kept: one directory per frame.

Layout: ``<root>/<id:08d>/`` with ``color.png``, ``depth.png`` (uint16 millimetres, 0 =
invalid; only when the frame has depth), ``embedding.npy`` and ``meta.json`` (id, stamp,
frame_id, source, embedder, intrinsics). Each directory is written in a staging directory,
fsynced and renamed into place, so after a crash a frame is either complete or absent.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cv_autolabel.core.fsio import atomic_directory, depth_to_png_mm, encode_image
from cv_autolabel.core.types import CameraIntrinsics, Frame

_ID_DIR = re.compile(r"^\d{8,}$")


@dataclass(frozen=True)
class ArchivedFrame:
    """A stored frame's metadata; images load on demand."""

    id: int
    path: Path
    meta: dict[str, Any]

    @property
    def embedding(self) -> np.ndarray:
        """The frame's embedding (dim,) float32."""
        return np.load(self.path / "embedding.npy")

    def color(self) -> np.ndarray:
        """Load the colour image, (H, W, 3) uint8 RGB."""
        bgr = cv2.imread(str(self.path / self.meta["color"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise OSError(f"cannot read {self.path / self.meta['color']}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def depth(self) -> np.ndarray | None:
        """Load the depth image in metres (NaN = invalid), or None."""
        if not self.meta.get("depth"):
            return None
        mm = cv2.imread(str(self.path / self.meta["depth"]), cv2.IMREAD_UNCHANGED)
        if mm is None:
            raise OSError(f"cannot read {self.path / self.meta['depth']}")
        metres = mm.astype(np.float32) / 1000.0
        metres[mm == 0] = np.nan
        return metres


def _durable_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _intrinsics_dict(k: CameraIntrinsics | None) -> dict[str, Any] | None:
    if k is None:
        return None
    return {"width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy, "cx": k.cx,
            "cy": k.cy, "distortion_model": k.distortion_model, "d": list(k.distortion)}


class FrameArchive:
    """Crash-safe directory-per-frame storage under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, frame_id: int, frame: Frame, embedding: np.ndarray, *, source: str,
              embedder: str, extra: dict[str, Any] | None = None) -> Path:
        """Store one frame durably; return its directory."""
        final = self.root / f"{frame_id:08d}"
        meta = {"id": frame_id, "stamp_ns": frame.stamp_ns, "frame_id": frame.frame_id,
                "source": source, "embedder": embedder, "color": "color.png",
                "depth": "depth.png" if frame.depth is not None else None,
                "intrinsics": _intrinsics_dict(frame.intrinsics), **(extra or {})}
        with atomic_directory(final) as tmp:
            _durable_file(tmp / "color.png", encode_image(tmp / "color.png", frame.rgb))
            if frame.depth is not None:
                _durable_file(tmp / "depth.png",
                              encode_image(tmp / "depth.png", depth_to_png_mm(frame.depth)))
            buf = io.BytesIO()
            np.save(buf, np.asarray(embedding, np.float32))
            _durable_file(tmp / "embedding.npy", buf.getvalue())
            _durable_file(tmp / "meta.json", json.dumps(meta, indent=1).encode())
        return final

    def ids(self) -> list[int]:
        """Return the ids of every complete frame, ascending."""
        return sorted(int(p.name) for p in self.root.iterdir()
                      if p.is_dir() and _ID_DIR.match(p.name))

    def read(self, frame_id: int) -> ArchivedFrame:
        """Return one stored frame."""
        path = self.root / f"{frame_id:08d}"
        meta = json.loads((path / "meta.json").read_text())
        return ArchivedFrame(frame_id, path, meta)

    def remove(self, frame_id: int) -> None:
        """Delete one stored frame (used for frames never acknowledged)."""
        shutil.rmtree(self.root / f"{frame_id:08d}", ignore_errors=True)

    def clean_staging(self) -> int:
        """Delete staging directories a crash left behind; return how many."""
        stale = [p for p in self.root.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        return len(stale)
