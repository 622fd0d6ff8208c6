"""The nodes' parameters against config/autolabel.yaml, without ROS 2.

rclpy cannot be installed here, so each node is built in a subprocess over stand-ins for the
ROS modules that record what it declares and subscribes to. What this proves: every key the
shipped file sets is declared by the node it configures (rclpy silently ignores the rest),
with the declared type (rclpy refuses a value of another type), read-only (the nodes read
their parameters once); and the active-learning node pairs the dedup node's republished
frames with the configured slop. What it does not prove: anything rclpy itself does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cv_autolabel.config import load_parameters

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config" / "autolabel.yaml"
NODES = ("dedup_node", "detector_node", "active_learning_node")
#: /** keys only the offline tools read (the nodes' topics are remapped by the launch file).
CLI_ONLY = {"camera.color_topic", "camera.depth_topic", "camera.camera_info_topic"}

_BUILD = r'''
import json, sys, tempfile
from unittest.mock import MagicMock

overrides, report = json.loads(sys.argv[1]), {}

class Node:
    def __init__(self, name, **kwargs):
        self._me = report.setdefault(name, {"declared": {}, "mismatched": [], "subs": [],
                                            "syncs": [], "error": None})
        self._overrides = overrides[name]
    def declare_parameter(self, name, default, descriptor=None):
        value = self._overrides.get(name, default)
        same = type(value) is type(default) and (not isinstance(default, list) or all(
            type(v) is type(default[0]) for v in value))
        if not same:
            self._me["mismatched"].append(name)
        self._me["declared"][name] = bool(descriptor is not None and descriptor.read_only)
        self._params = {**getattr(self, "_params", {}), name: value}
    def get_parameter(self, name):
        return MagicMock(value=self._params[name])
    def create_subscription(self, msg_type, topic, callback, qos, **kwargs):
        self._me["subs"].append(topic)
    def get_fully_qualified_name(self):
        return "/cv_autolabel/node"
    def __getattr__(self, name):  # publishers, services, timers, logger
        return MagicMock()

class Subscriber:
    def __init__(self, node, msg_type, topic, qos_profile=None):
        node._me["subs"].append(topic)
        self.node = node

class Synchronizer:
    def __init__(self, subs, queue_size, slop):
        subs[0].node._me["syncs"].append([len(subs), queue_size, slop])
    def registerCallback(self, callback):
        pass

class Descriptor:
    def __init__(self, **fields):
        self.read_only = False
        self.__dict__.update(fields)

for name in ("rclpy", "rclpy.node", "rclpy.qos", "rclpy.callback_groups", "rclpy.executors",
             "rcl_interfaces", "rcl_interfaces.msg", "sensor_msgs", "sensor_msgs.msg",
             "std_msgs", "std_msgs.msg", "std_srvs", "std_srvs.srv", "vision_msgs",
             "vision_msgs.msg", "visualization_msgs", "visualization_msgs.msg",
             "geometry_msgs", "geometry_msgs.msg", "message_filters"):
    sys.modules[name] = MagicMock()
sys.modules["rclpy.node"].Node = Node
sys.modules["rcl_interfaces.msg"].ParameterDescriptor = Descriptor
sys.modules["message_filters"].Subscriber = Subscriber
sys.modules["message_filters"].ApproximateTimeSynchronizer = Synchronizer

from cv_autolabel.nodes.active_learning_node import ActiveLearningNode
from cv_autolabel.nodes.dedup_node import DedupNode
from cv_autolabel.nodes.detector_node import DetectorNode

for make, name in ((DedupNode, "dedup_node"), (DetectorNode, "detector_node"),
                   (ActiveLearningNode, "active_learning_node")):
    try:
        make()
    except Exception as err:  # the detector wants a model: its wiring is declared by then
        report[name]["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(report))
'''


def _build(tmp_path: Path, **overrides: object) -> dict:
    """Build the three nodes, each with the shipped file's values for it plus ``overrides``."""
    local = {"data_dir": str(tmp_path), "dedup.embedder": "thumbnail", "teacher": "groundtruth",
             "model_path": str(tmp_path / "no_model"),
             "student_model": str(tmp_path / "no_model"), **overrides}
    values = {node: load_parameters(CONFIG, f"/cv_autolabel/{node}") | local for node in NODES}
    result = subprocess.run([sys.executable, "-c", _BUILD, json.dumps(values)], cwd=tmp_path,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _build(tmp_path_factory.mktemp("wiring"))


@pytest.mark.parametrize("node", NODES)
def test_every_key_the_file_sets_for_a_node_is_declared_with_its_type(shipped: dict,
                                                                     node: str) -> None:
    report = shipped[node]
    assert report["error"] is None or node == "detector_node", report["error"]
    own = set(load_parameters(CONFIG, f"/cv_autolabel/{node}")) - set(
        load_parameters(CONFIG))
    assert own <= set(report["declared"]), own - set(report["declared"])
    assert report["mismatched"] == []
    assert all(report["declared"].values()), [k for k, ro in report["declared"].items()
                                              if not ro]


def test_every_shared_key_is_read_by_a_node_or_the_offline_tools(shipped: dict) -> None:
    declared = {name for report in shipped.values() for name in report["declared"]}
    assert set(load_parameters(CONFIG)) - declared == CLI_ONLY


def test_active_learning_pairs_the_dedup_nodes_frames_with_the_configured_slop(
        shipped: dict, tmp_path: Path) -> None:
    slop = load_parameters(CONFIG)["camera.sync_slop_s"]
    assert shipped["active_learning_node"]["syncs"] == [[3, 10, slop]]
    assert {"novel/color/image_raw", "novel/depth/image_raw",
            "novel/color/camera_info"} <= set(shipped["active_learning_node"]["subs"])
    # Colour only: both nodes take use_depth from /**, so neither waits for depth.
    colour = _build(tmp_path, use_depth=False)
    assert colour["dedup_node"]["syncs"] == colour["active_learning_node"]["syncs"] == []
    assert colour["dedup_node"]["subs"] == ["color/image_raw"]
    assert "novel/color/image_raw" in colour["active_learning_node"]["subs"]
    assert "novel/depth/image_raw" not in colour["active_learning_node"]["subs"]


def test_a_float_parameter_given_an_int_is_caught(tmp_path: Path) -> None:
    report = _build(tmp_path, watch_period_s=0)  # rclpy refuses this; say 0.0
    assert "watch_period_s" in report["active_learning_node"]["mismatched"]
