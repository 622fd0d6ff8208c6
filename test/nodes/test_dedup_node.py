"""The rclpy dedup node (runs only where ROS 2 is installed; skipped elsewhere)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros


def test_node_publishes_novel_frames_once(tmp_path: Path) -> None:
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from cv_autolabel.nodes.dedup_node import DedupNode
    from cv_autolabel.ros.factory import RclpyMessageFactory
    from cv_autolabel.ros.image import numpy_to_image

    rclpy.init()
    try:
        node = DedupNode(parameter_overrides=[
            Parameter("data_dir", value=str(tmp_path)),
            Parameter("use_depth", value=False),
            Parameter("dedup.embedder", value="thumbnail"),
        ])
        probe = rclpy.create_node("probe")
        received: list = []
        probe.create_subscription(Image, "novel/color/image_raw", received.append, 10)
        pub = probe.create_publisher(Image, "color/image_raw", 10)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(2)]
        f = RclpyMessageFactory()
        for rgb in [frames[0], frames[0], frames[1]]:
            pub.publish(numpy_to_image(rgb, "rgb8", factory=f, stamp_ns=time.time_ns()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 2:
            rclpy.spin_once(node, timeout_sec=0.1)
            rclpy.spin_once(probe, timeout_sec=0.1)
        assert len(received) == 2
        node.shutdown()
        node.destroy_node()
        probe.destroy_node()
    finally:
        rclpy.try_shutdown()
