"""The ROS 2 layer: a thin action server over timebill_ros.core."""
