"""Read the one configuration file (ROS 2 parameter YAML) shared by the nodes and the CLI.

The file has the form ``/namespace/node_name: {ros__parameters: {...}}``; ``/**`` applies to
every node. rclpy applies ``/**`` and the sections whose name matches the node's fully
qualified name; a bare ``dedup_node`` key means ``/dedup_node``, which a node in a namespace
does not match. Newer rclpy releases also accept wildcards (``/**/dedup_node``), older ones
only the exact name, so the shipped file names the nodes exactly as the launch file starts
them: ``/cv_autolabel/dedup_node``.
Nested keys flatten to ROS dotted names (``camera.color_topic``), as ``ros2 param`` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cv_autolabel.errors import ConfigError
from cv_autolabel.ros.topics import CameraTopics

WILDCARD = "/**"
#: The namespace the launch file starts the nodes in (and the config file's sections name).
NAMESPACE = "cv_autolabel"


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_parameters(path: str | Path | None, node_name: str = WILDCARD) -> dict[str, Any]:
    """Return the flattened parameters ``node_name`` would get from the file at ``path``.

    ``/**`` entries come first and the node's section overrides them, like rcl does. The
    command line is not a node in a namespace, so the node's section is found by its last
    name component (``/cv_autolabel/dedup_node`` and ``dedup_node`` both configure
    ``dedup_node``); two such sections are an error. ``path=None`` returns an empty dict
    (built-in defaults apply).
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must map node names to ros__parameters")
    base = _base_name(node_name)
    sections = [key for key in doc if key != WILDCARD and _base_name(key) == base]
    if node_name != WILDCARD and len(sections) > 1:
        raise ConfigError(f"config {path}: sections {', '.join(map(repr, sections))} all "
                          f"configure {base}; keep one")
    params: dict[str, Any] = {}
    for name in [WILDCARD, *sections] if node_name != WILDCARD else [WILDCARD]:
        section = doc.get(name)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ConfigError(f"config {path}: section {name!r} has no ros__parameters mapping")
        params.update(_flatten(section["ros__parameters"]))
    return params


def _base_name(name: Any) -> str:
    """``/cv_autolabel/dedup_node`` -> ``dedup_node``."""
    return str(name).rstrip("/").rsplit("/", 1)[-1]


def camera_topics(params: dict[str, Any]) -> CameraTopics:
    """Return the camera topics configured in ``params`` (RealSense defaults otherwise)."""
    default = CameraTopics()
    return CameraTopics(
        color=str(params.get("camera.color_topic", default.color)),
        depth=params.get("camera.depth_topic", default.depth) or None,
        info=params.get("camera.camera_info_topic", default.info) or None,
    )
