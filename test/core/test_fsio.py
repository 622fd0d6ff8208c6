"""Crash-safe writes: a file is replaced whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv_autolabel.core.fsio import atomic_file, write_bytes_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "index.npz"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.npz"]


def test_a_completed_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    write_bytes_atomic(target, b"old")
    with atomic_file(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
