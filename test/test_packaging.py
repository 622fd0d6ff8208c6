"""A robot installed from the README has every library the online path imports.

The robot gets its dependencies two ways (README, "On the robot"): rosdep keys from
package.xml, and one pip line for what rosdep does not know. A module the nodes import that
neither names fails only on the robot, at launch.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONLINE = ("core", "components", "nodes", "ros")  # what runs on the robot
#: rosdep keys and pip names whose import name differs.
IMPORT_NAME = {"python3-numpy": "numpy", "python3-opencv": "cv2", "python3-yaml": "yaml",
               "python3-tqdm": "tqdm", "python3-scipy": "scipy",
               "opencv-python-headless": "cv2", "milvus-lite": "milvus_lite"}


def module_level_imports() -> dict[str, set[str]]:
    """Third-party top-level modules imported at module level by the online path -> files."""
    found: dict[str, set[str]] = {}
    for layer in ONLINE:
        for path in (ROOT / "cv_autolabel" / layer).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("cv_autolabel",
                                                                          "__future__"):
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def declared() -> set[str]:
    keys = [e.text.strip() for e in ET.parse(ROOT / "package.xml").getroot()
            if e.tag in ("depend", "exec_depend") and e.text]
    line = next(l for l in (ROOT / "README.md").read_text().splitlines()
                if l.startswith("pip install") and "openvino" in l)
    pip = [re.split(r"[<>=]", w.strip('"'))[0] for w in line.split()[2:]]
    return {IMPORT_NAME.get(name, name.replace("-", "_")) for name in keys + pip}


def test_every_module_the_robot_imports_is_declared_for_rosdep_or_pip() -> None:
    missing = {m: sorted(files) for m, files in module_level_imports().items()
               if m not in declared()}
    assert not missing, f"add to package.xml (rosdep key) or the README's pip line: {missing}"


def test_the_runtimes_loaded_on_demand_are_in_the_pip_line() -> None:
    # imported inside functions (the detector's runtime, the vector store), needed all the same
    assert {"openvino", "pymilvus", "milvus_lite", "rosbags", "mcap", "pycocotools"} <= declared()
