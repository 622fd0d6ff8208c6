"""The launch file starts every node with the shared parameter file (needs ROS 2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("launch_ros")
pytestmark = pytest.mark.ros


def test_launch_description_has_every_node() -> None:
    from launch_ros.actions import Node

    path = Path(__file__).resolve().parents[2] / "launch" / "autolabel.launch.py"
    spec = importlib.util.spec_from_file_location("autolabel_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    actions = module.generate_launch_description().entities
    nodes = [a for a in actions if isinstance(a, Node)]
    assert len(nodes) == len(module.NODES)
