"""Launch timebill_node with its parameters file (needs launch / launch_ros: a real ROS 2 install).

    ros2 launch timebill_ros timebill.launch.py
    ros2 launch timebill_ros timebill.launch.py params_file:=/robot/config/timebill.yaml \
        namespace:=arm node_name:=llm log_level:=debug use_sim_time:=true autostart:=false
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    """timebill_node with config/timebill.yaml unless params_file says otherwise."""
    default_params = os.path.join(get_package_share_directory("timebill_ros"), "config", "timebill.yaml")
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="YAML parameters file for timebill_node (its key /** fits any name)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node, action and topics"),
        DeclareLaunchArgument("node_name", default_value="timebill_node", description="name of the node"),
        DeclareLaunchArgument("log_level", default_value="info", description="debug | info | warn | error"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock for ROS time (deadlines always run on the steady clock)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate at start; false leaves the lifecycle node "
                                          "unconfigured for a lifecycle manager"),
    ]
    node = Node(
        package="timebill_ros",
        executable="timebill_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        emulate_tty=True,
        # The file first; the launch arguments then override its use_sim_time and autostart.
        parameters=[LaunchConfiguration("params_file"),
                    {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
                     "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
    )
    return LaunchDescription([*arguments, node])
