"""Crash-safe file writing: temp file, fsync, rename, fsync the directory.

A reader (or a restart after ``kill -9``) sees either the old state or the complete new file
or directory, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

#: PNG compression 1: about 4x faster than OpenCV's default 3 for a few % larger files.
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (the rename of a child) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` only if the block completes.

    For writers that stream (``np.savez``) rather than hold the whole content in memory.
    With ``durable`` the file and the rename are fsynced. A failed block leaves ``path`` as
    it was and no temp file behind.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file renamed into place (fsynced if durable)."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def depth_to_png_mm(depth_m: np.ndarray) -> np.ndarray:
    """Return uint16 millimetres (0 = invalid) for float metres with NaN invalid.

    Example:
        >>> depth_to_png_mm(np.array([[1.2345, np.nan]], np.float32)).tolist()
        [[1234, 0]]
    """
    mm = np.where(np.isfinite(depth_m), np.round(depth_m * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def encode_image(path: Path, image: np.ndarray) -> bytes:
    """Encode an RGB (H, W, 3) or single-channel image by ``path``'s extension."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    params = PNG_FAST if path.suffix.lower() == ".png" else []
    ok, buf = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    return buf.tobytes()


def write_image_atomic(path: Path, image: np.ndarray, *, durable: bool = False) -> None:
    """Encode ``image`` by extension and rename it into place."""
    write_bytes_atomic(path, encode_image(path, image), durable=durable)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a staging directory that becomes ``final`` only if the block completes.

    Files written into it should be fsynced by the caller when durability matters; the
    rename and the parent directory are fsynced here.
    """
    staging = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        fsync_dir(staging)
        os.replace(staging, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
