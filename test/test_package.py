"""Static checks of what a real ROS 2 install needs: package manifests, the launch file,
the parameters file and the console scripts. launch/launch_ros are not installable
here, so the launch file is checked by reading it, not by running it."""
import ast
import xml.etree.ElementTree as ET
from dataclasses import fields
from pathlib import Path

import yaml

from timebill_ros.node.params import NodeParams

REPO = Path(__file__).resolve().parents[1]


def test_launch_file_starts_timebill_node_with_the_params_file():
    source = (REPO / "launch" / "timebill.launch.py").read_text()
    tree = ast.parse(source)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    node_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    assert len(node_calls) == 1
    kwargs = {k.arg: k.value for k in node_calls[0].keywords}
    assert ast.literal_eval(kwargs["package"]) == "timebill_ros"
    assert ast.literal_eval(kwargs["executable"]) == "timebill_node"
    assert "parameters" in kwargs
    assert '"config", "timebill.yaml"' in source and "get_package_share_directory(\"timebill_ros\")" in source
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"launch", "launch_ros.actions"} <= imports


def test_params_file_sets_every_node_parameter_and_nothing_else():
    doc = yaml.safe_load((REPO / "config" / "timebill.yaml").read_text())
    params = doc["timebill_node"]["ros__parameters"]
    assert set(params) == {f.name for f in fields(NodeParams)}
    defaults = NodeParams()
    for name, value in params.items():
        assert type(value) is type(getattr(defaults, name)), name  # ROS parameter types must match
    assert params["k"] == 5.0 and params["alpha_max"] == 0.95 and params["snapkv_kernel"] == 5


def test_package_manifests():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("name") == "timebill_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "timebill_msgs", "launch_ros"} <= deps
    msgs = ET.parse(REPO / "src" / "timebill_msgs" / "package.xml").getroot()
    assert msgs.findtext("name") == "timebill_msgs" and msgs.find("export/build_type").text == "ament_cmake"


def test_console_scripts_are_declared():
    source = (REPO / "setup.py").read_text()
    assert "timebill_node = timebill_ros.node.main:main" in source
    assert "timebill = timebill_ros.cli.main:main" in source
    assert "script_dir=$base/lib/timebill_ros" in (REPO / "setup.cfg").read_text()  # for `ros2 run`


def test_core_has_no_ros_imports():
    for path in (REPO / "src" / "timebill_ros" / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("rclpy", "timebill_msgs", "timebill_ros.node", "timebill_ros.cli")), \
                    f"{path.name} imports {name}"
