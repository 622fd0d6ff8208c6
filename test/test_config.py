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


def test_shipped_config_names_each_node_as_the_launch_file_starts_it() -> None:
    # rclpy applies only "/**" and the section named by the node's fully qualified name
    import ast

    import yaml

    from cv_autolabel.config import NAMESPACE

    launch = ast.parse((REPO / "launch" / "autolabel.launch.py").read_text())
    nodes = next(ast.literal_eval(n.value) for n in launch.body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "NODES")
    sections = set(yaml.safe_load((REPO / "config" / "autolabel.yaml").read_text())) - {"/**"}
    assert sections == {f"/{NAMESPACE}/{name}" for name in nodes}
    assert load_parameters(REPO / "config" / "autolabel.yaml",
                           "active_learning_node")["flush_limit"] == 0


def test_a_node_section_is_found_whatever_its_namespace(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("/**:\n  ros__parameters:\n    a: 1\n"
                    "/robot1/perception/dedup_node:\n  ros__parameters:\n    a: 2\n"
                    "/robot1/detector_node:\n  ros__parameters:\n    a: 3\n")
    assert load_parameters(path, "dedup_node")["a"] == 2
    assert load_parameters(path, "/robot1/perception/dedup_node")["a"] == 2
    assert load_parameters(path, "active_learning_node")["a"] == 1
    assert load_parameters(path)["a"] == 1


def test_two_sections_for_one_node_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dedup_node:\n  ros__parameters:\n    a: 1\n"
                    "/cv_autolabel/dedup_node:\n  ros__parameters:\n    a: 2\n")
    with pytest.raises(ConfigError, match="all configure dedup_node; keep one"):
        load_parameters(path, "dedup_node")
