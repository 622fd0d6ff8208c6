"""The one parameter file shared by nodes and CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cv_autolabel.config import camera_topics, load_parameters
from cv_autolabel.errors import ConfigError
from cv_autolabel.ros import topics as T

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_gives_realsense_topics() -> None:
    params = load_parameters(REPO / "config" / "autolabel.yaml")
    topics = camera_topics(params)
    assert (topics.color, topics.depth, topics.info) == (T.COLOR_IMAGE, T.DEPTH_IMAGE,
                                                         T.COLOR_INFO)
    assert params["camera.sync_slop_s"] == pytest.approx(0.05)


def test_node_section_overrides_wildcard(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("/**:\n  ros__parameters:\n    camera:\n      color_topic: /a\n"
                    "      depth_topic: /d\n"
                    "dedup_node:\n  ros__parameters:\n    camera:\n      color_topic: /b\n")
    assert load_parameters(path)["camera.color_topic"] == "/a"
    assert load_parameters(path, "dedup_node")["camera.color_topic"] == "/b"
    assert load_parameters(path, "dedup_node")["camera.depth_topic"] == "/d"


def test_empty_topic_disables_it() -> None:
    assert camera_topics({"camera.depth_topic": ""}).depth is None


@pytest.mark.parametrize(("text", "message"), [
    ("a: [", "not valid YAML"),
    ("- 1\n- 2\n", "must map node names"),
    ("/**:\n  params: {}\n", "no ros__parameters"),
])
def test_bad_files_raise_config_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_parameters(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_parameters(tmp_path / "nope.yaml")
