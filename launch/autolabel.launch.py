"""Start the cv_autolabel nodes on the robot (or against `ros2 bag play --clock`).

    ros2 launch cv_autolabel autolabel.launch.py
    ros2 launch cv_autolabel autolabel.launch.py use_sim_time:=true \
        color_topic:=/my_cam/color/image_raw params_file:=/path/to/autolabel.yaml

Every node reads the same parameter file (config/autolabel.yaml: ``/**`` and its own section,
``/cv_autolabel/<node>``) and subscribes to relative camera topics, remapped here to the
camera driver's topics.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from cv_autolabel.config import NAMESPACE

NODES = ("dedup_node", "detector_node", "active_learning_node")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("cv_autolabel")
    args = {
        "params_file": os.path.join(share, "config", "autolabel.yaml"),
        "color_topic": "/camera/camera/color/image_raw",
        "depth_topic": "/camera/camera/aligned_depth_to_color/image_raw",
        "camera_info_topic": "/camera/camera/color/camera_info",
        "use_sim_time": "false",
        "namespace": NAMESPACE,  # the parameter file's sections are /cv_autolabel/<node>
    }
    declared = [DeclareLaunchArgument(name, default_value=value) for name, value in args.items()]
    cfg = {name: LaunchConfiguration(name) for name in args}
    remappings = [("color/image_raw", cfg["color_topic"]),
                  ("depth/image_raw", cfg["depth_topic"]),
                  ("color/camera_info", cfg["camera_info_topic"])]
    nodes = [Node(package="cv_autolabel", executable=name, name=name,
                  namespace=cfg["namespace"], output="screen", emulate_tty=True,
                  parameters=[cfg["params_file"], {"use_sim_time": cfg["use_sim_time"]}],
                  remappings=remappings)
             for name in NODES]
    return LaunchDescription([*declared, *nodes])
