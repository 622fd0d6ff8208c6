"""``extract``: files on disk equal what the bag holds; the output is safe to trust."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from cv_autolabel.errors import CvAutolabelError
from cv_autolabel.ros import topics as T
from cv_autolabel.ros.bag import BagReader
from cv_autolabel.ros.frames import iter_frames
from cv_autolabel.ros.image import image_to_numpy
from cv_autolabel.ros.topics import CameraTopics
from cv_autolabel.tools.extract import extract


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def test_extracted_images_are_pixel_exact(sim_bag: Path, tmp_path: Path) -> None:
    summary = extract(sim_bag, tmp_path / "out")
    assert summary["frames"] == 16 and not summary["damaged"]
    with BagReader(sim_bag) as bag:
        frames = list(iter_frames(bag))
    with BagReader(sim_bag) as bag:
        raw_depth = [image_to_numpy(m.msg) for m in bag.messages([T.DEPTH_IMAGE])]
    records = _index(tmp_path / "out")
    assert [r["stamp_ns"] for r in records] == [f.stamp_ns for f in frames]
    for rec, frame, depth_mm in zip(records, frames, raw_depth):
        color = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / rec["color"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(color, frame.rgb)
        depth = cv2.imread(str(tmp_path / "out" / rec["depth"]), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and np.array_equal(depth, depth_mm)
        assert rec["intrinsics"]["fx"] == frame.intrinsics.fx
        assert rec["frame_id"] == T.OPTICAL_FRAME


def test_every_nth_and_jpg(sim_bag: Path, tmp_path: Path) -> None:
    summary = extract(sim_bag, tmp_path / "out", every=5, image_format="jpg")
    records = _index(tmp_path / "out")
    assert summary["frames"] == len(records) == 4  # frames 0, 5, 10, 15
    assert all(r["color"].endswith(".jpg") for r in records)
    assert sorted(p.name for p in (tmp_path / "out" / "color").iterdir()) == [
        f"{i:06d}.jpg" for i in range(4)]


def test_colour_only_extraction_writes_no_depth(sim_bag: Path, tmp_path: Path) -> None:
    extract(sim_bag, tmp_path / "out", topics=CameraTopics(T.COLOR_IMAGE, None, None))
    records = _index(tmp_path / "out")
    assert all(r["depth"] is None and r["intrinsics"] is None for r in records)
    assert not any((tmp_path / "out" / "depth").iterdir())


def test_refuses_non_empty_output_unless_overwrite(sim_bag: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(sim_bag, out, every=2)
    with pytest.raises(CvAutolabelError, match="not empty"):
        extract(sim_bag, out)
    extract(sim_bag, out, every=4, overwrite=True)
    assert len(_index(out)) == 4
    assert len(list((out / "color").iterdir())) == 4  # no stale frames left behind


def test_wrong_topic_fails_before_creating_output(sim_bag: Path, tmp_path: Path) -> None:
    with pytest.raises(CvAutolabelError, match="has no topic"):
        extract(sim_bag, tmp_path / "out", topics=CameraTopics("/wrong", None, None))
    assert not (tmp_path / "out").exists()
