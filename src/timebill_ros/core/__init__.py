"""The time-budgeted inference core: no ROS imports, testable with plain pytest."""
