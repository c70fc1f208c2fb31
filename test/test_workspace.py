"""The package in a robot's colcon workspace, built exactly as the README says.

`timebill_msgs` lives inside the `timebill_ros` repository and colcon stops descending at
the first package.xml, so the README's command names both base paths. This test clones
the repository into a fresh workspace, runs that command and checks what got installed."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The README's commands, from the workspace root (rosdep is not installable here; the
# venv holds the dependencies it would install).
BUILD = "colcon build --base-paths src src/timebill_ros/src --cmake-args -DBUILD_TESTING=OFF"


def test_a_fresh_workspace_builds_and_installs_both_packages(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert BUILD in readme and "git clone" in readme and "rosdep install --from-paths src" in readme
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(ws / "src" / "timebill_ros")], check=True)
    venv = Path(sys.prefix)
    env = {**os.environ, "AMENT_PREFIX_PATH": str(venv), "CMAKE_PREFIX_PATH": str(venv)}
    build = subprocess.run(f"{BUILD} --event-handlers console_cohesion- status-", shell=True, cwd=ws, env=env,
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = ws / "install"
    share = install / "timebill_ros" / "share" / "timebill_ros"
    assert (share / "launch" / "timebill.launch.py").is_file() and (share / "config" / "timebill.yaml").is_file()
    assert (share / "package.xml").is_file() and (install / "timebill_msgs" / "share" / "timebill_msgs").is_dir()
    assert (install / "timebill_ros" / "lib" / "timebill_ros" / "timebill_node").is_file()  # for ros2 run
    # The installed node's modules, not this checkout's, import the installed messages.
    probe = ("import timebill_ros.node.main, timebill_msgs.action, timebill_ros; "
             "from timebill_msgs.action import TimedGenerate; print(timebill_ros.__file__); "
             "print(TimedGenerate.Goal().seed)")
    run = subprocess.run(["bash", "-c", f". install/setup.bash && python -c '{probe}'"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    where, seed = run.stdout.split()
    assert where.startswith(str(install)) and seed == "-1"


def test_the_cmake_fix_names_this_venv_and_leaves_a_hard_linked_cache_file_alone(tmp_path):
    import importlib.util
    import sysconfig

    import numpy

    spec = importlib.util.spec_from_file_location("fix", REPO / "scripts" / "fix_rosidl_cmake.py")
    fix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fix)
    line = '  INTERFACE_INCLUDE_DIRECTORIES "{py};{np}"\n'
    container = line.format(py="/opt/python/cp311-cp311/include/python3.11",
                            np="/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include")
    other_venv = line.format(py="/usr/include/python3.11",
                             np="/old/.venv/lib/python3.11/site-packages/numpy/_core/include")
    ours = line.format(py=sysconfig.get_paths()["include"], np=numpy.get_include())
    for name, text in (("a", container), ("b", other_venv)):
        cache = tmp_path / f"cache_{name}.cmake"  # uv's cache: the venv's file is a hard link to it
        cache.write_text(text)
        exported = tmp_path / "venv" / "share" / name / "cmake" / f"{name}__rosidl_generator_pyExport.cmake"
        exported.parent.mkdir(parents=True)
        os.link(cache, exported)
    assert fix.main(str(tmp_path / "venv")) == 2
    for name, text in (("a", container), ("b", other_venv)):
        exported = tmp_path / "venv" / "share" / name / "cmake" / f"{name}__rosidl_generator_pyExport.cmake"
        assert exported.read_text() == ours and (tmp_path / f"cache_{name}.cmake").read_text() == text
    assert fix.main(str(tmp_path / "venv")) == 0  # idempotent
