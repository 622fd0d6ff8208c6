"""ROS message helpers that work on rclpy and rosbags messages alike (no rclpy import)."""
