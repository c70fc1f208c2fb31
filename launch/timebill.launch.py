"""Launch timebill_node with its parameters file (needs launch / launch_ros: a real ROS 2 install).

    ros2 launch timebill_ros timebill.launch.py params_file:=/path/to/timebill.yaml
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    """timebill_node with config/timebill.yaml unless params_file says otherwise."""
    default_params = os.path.join(get_package_share_directory("timebill_ros"), "config", "timebill.yaml")
    params_file = LaunchConfiguration("params_file")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML parameters file for timebill_node"),
        Node(
            package="timebill_ros",
            executable="timebill_node",
            name="timebill_node",
            output="screen",
            emulate_tty=True,
            parameters=[params_file],
        ),
    ])
