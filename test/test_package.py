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


def test_launch_file_starts_timebill_node_and_every_argument_reaches_it():
    source = (REPO / "launch" / "timebill.launch.py").read_text()
    tree = ast.parse(source)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in funcs
    node_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node"]
    assert len(node_calls) == 1
    kwargs = {k.arg: k.value for k in node_calls[0].keywords}
    assert ast.literal_eval(kwargs["package"]) == "timebill_ros"
    assert ast.literal_eval(kwargs["executable"]) == "timebill_node"
    assert '"config", "timebill.yaml"' in source and "get_package_share_directory(\"timebill_ros\")" in source
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"launch", "launch_ros.actions"} <= imports

    def configurations(node) -> set[str]:
        return {ast.literal_eval(c.args[0]) for c in ast.walk(node)
                if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "LaunchConfiguration"}

    declared = {ast.literal_eval(c.args[0]) for c in ast.walk(tree)
                if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "DeclareLaunchArgument"}
    # Each argument lands in the Node field that gives it its meaning.
    reaches = {"params_file": "parameters", "use_sim_time": "parameters", "autostart": "parameters",
               "namespace": "namespace", "node_name": "name", "log_level": "arguments"}
    assert declared == set(reaches)
    for argument, field in reaches.items():
        assert argument in configurations(kwargs[field]), (argument, field)
    assert "--log-level" in ast.unparse(kwargs["arguments"])


def test_params_file_sets_every_node_parameter_and_nothing_else():
    doc = yaml.safe_load((REPO / "config" / "timebill.yaml").read_text())
    assert list(doc) == ["/**"]  # applies under any node name and namespace
    params = doc["/**"]["ros__parameters"]
    assert set(params) == {f.name for f in fields(NodeParams)}
    defaults = NodeParams()
    for name, value in params.items():
        assert type(value) is type(getattr(defaults, name)), name  # ROS parameter types must match
        assert value == getattr(defaults, name), name  # one set of defaults: the YAML equals the code
    assert params["alpha_max"] == 0.95 and params["snapkv_kernel"] == 5  # the paper's
    # k 0: the length predictor's own, the paper's 5 when it has none.
    assert params["k"] == 0.0 and defaults.limits(4096).k == 5.0 and defaults.limits(4096, 2.5).k == 2.5
    # replan_steps 0 is the paper's single plan, as make eval's node runs it.
    assert defaults.engine_config().replan_steps == 8 and NodeParams(replan_steps=0).engine_config().replan_steps == 0


def test_package_manifests():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("name") == "timebill_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "timebill_msgs", "launch_ros"} <= deps
    msgs = ET.parse(REPO / "src" / "timebill_msgs" / "package.xml").getroot()
    assert msgs.findtext("name") == "timebill_msgs" and msgs.find("export/build_type").text == "ament_cmake"


# Top-level import name -> the rosdep key package.xml must declare for it.
IMPORT_KEYS = {
    "rclpy": "rclpy", "timebill_msgs": "timebill_msgs", "action_msgs": "action_msgs",
    "builtin_interfaces": "builtin_interfaces", "diagnostic_msgs": "diagnostic_msgs",
    "unique_identifier_msgs": "unique_identifier_msgs", "rcl_interfaces": "rcl_interfaces",
    "ament_index_python": "ament_index_python", "launch": "launch", "launch_ros": "launch_ros",
    "numpy": "python3-numpy", "scipy": "python3-scipy", "yaml": "python3-yaml", "click": "python3-click",
    "tqdm": "python3-tqdm", "matplotlib": "python3-matplotlib", "sklearn": "python3-sklearn",
    "torch": "python3-pytorch-pip", "transformers": "python3-transformers-pip",
    "tokenizers": "python3-tokenizers-pip", "safetensors": "python3-safetensors-pip", "peft": "python3-peft-pip",
    "torchao": "python3-torchao-pip", "rosbags": "python3-rosbags-pip", "rouge_score": "python3-rouge-score-pip",
    "rapidfuzz": "python3-rapidfuzz-pip", "psutil": "python3-psutil", "llguidance": "python3-llguidance-pip",
}


def imported_names(folders: list[Path]) -> set[str]:
    """Top-level modules imported anywhere in the Python files under FOLDERS (not the stdlib, not ours)."""
    import sys

    names = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"timebill_ros", "__future__"}


def test_package_xml_declares_every_run_dependency_the_installed_code_imports():
    declared = {e.text for e in ET.parse(REPO / "package.xml").getroot().iter("exec_depend")}
    imported = imported_names([REPO / "src" / "timebill_ros", REPO / "launch"])
    unmapped = imported - set(IMPORT_KEYS)
    assert not unmapped, f"new imports {unmapped}: add their rosdep key to package.xml and IMPORT_KEYS"
    missing = {IMPORT_KEYS[name] for name in imported} - declared
    assert not missing, f"package.xml lacks <exec_depend> for {missing}"


def test_package_data_ships_every_model_file_in_git():
    """A non-editable install carries only what package_data names: every shipped model file
    (adapters, predictors, distillations) must match one of its patterns."""
    import glob
    import subprocess

    tree = ast.parse((REPO / "setup.py").read_text())
    data = next(k for k in ast.walk(tree) if isinstance(k, ast.keyword) and k.arg == "package_data")
    patterns = ast.literal_eval(data.value.values[0])  # {PACKAGE: [...]}: the one package's patterns
    package = REPO / "src" / "timebill_ros"
    covered = {Path(f).relative_to(package).as_posix() for pat in patterns
               for f in glob.glob(str(package / pat)) if Path(f).is_file()}
    tracked = subprocess.run(["git", "ls-files", "src/timebill_ros/models"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    missing = {Path(f).relative_to("src/timebill_ros").as_posix() for f in tracked} - covered
    assert tracked and not missing, f"setup.py's package_data misses {sorted(missing)[:5]}"


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


def test_readme_and_docs_figures_equal_their_json():
    """Every results block of the README and the docs pages, rendered again from docs/results,
    must equal the page; every table appears exactly once across them."""
    from timebill_ros.eval.publish import BLOCK, TABLES, pages, render

    names = []
    for page in pages(REPO / "README.md"):
        text = page.read_text()
        names += [m.group("name") for m in BLOCK.finditer(text)]
        assert render(text, REPO / "docs" / "results") == text, f"{page.name} is stale: run `make results`"
    assert sorted(names) == sorted(TABLES), names


def test_the_readme_is_a_guide_that_links_every_docs_page():
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 25 * 1024, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", readme))
    assert linked == {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}, linked


def test_publish_copies_results_fixes_plot_paths_and_regenerates_tables(tmp_path):
    import json
    import shutil

    from timebill_ros.eval.publish import publish

    docs = tmp_path / "docs"
    shutil.copytree(REPO / "docs" / "results", docs)
    results = tmp_path / "results"
    (results / "bench").mkdir(parents=True)
    changed = json.loads((docs / "planning_time.json").read_text())
    changed["plan_s"]["median"] = 0.123456
    (results / "bench" / "planning_time.json").write_text(json.dumps(changed))
    (results / "eval").mkdir()
    ev = json.loads((docs / "eval.json").read_text())
    ev["plots"] = ["results/eval/budget_sweep_kill.png"]
    (results / "eval" / "eval.json").write_text(json.dumps(ev))
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:bench -->\nold\n<!-- /results:bench -->\ny\n")
    assert publish(results, docs, readme) == ["planning_time.json", "eval.json"]
    assert "| one alpha* plan (median) | 123.5 ms |" in readme.read_text() and "old" not in readme.read_text()
    assert json.loads((docs / "eval.json").read_text())["plots"] == ["docs/results/budget_sweep_kill.png"]


def test_both_manifests_name_one_maintainer_version_and_licence_and_setup_py_reads_them():
    """package.xml is the one source: timebill_msgs agrees with it, setup.py reads it."""
    import subprocess
    import sys

    def identity(path: Path) -> tuple:
        root = ET.parse(path).getroot()
        maintainer = root.find("maintainer")
        return root.findtext("version"), maintainer.text, maintainer.get("email"), root.findtext("license")

    ours = identity(REPO / "package.xml")
    assert identity(REPO / "src" / "timebill_msgs" / "package.xml") == ours
    run = subprocess.run([sys.executable, "setup.py", "--version", "--maintainer", "--maintainer-email", "--license"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert tuple(run.stdout.split("\n")[-5:-1]) == ours


def test_calibrate_and_eval_quality_help_name_the_node_defaults():
    """`timebill calibrate` takes the node's settings; its help must not promise other defaults."""
    import re

    from click.testing import CliRunner

    from timebill_ros.cli.main import cli

    text = " ".join(CliRunner().invoke(cli, ["calibrate", "--help"], terminal_width=400).output.split())
    for option, name in [("model", "model_path"), ("dtype", "dtype"), ("threads", "threads"), ("device", "device"),
                         ("prefill-chunk", "prefill_chunk"), ("quantization", "quantization")]:
        said = re.search(rf"--{option} [A-Z]+ (?:(?! --[a-z]).)*?\[default: ([^\]]*)\]", text)
        assert said and said.group(1) == str(getattr(NodeParams, name)), (option, said and said.group(1))
    quality = " ".join(CliRunner().invoke(cli, ["eval-quality", "--help"], terminal_width=400).output.split())
    said = re.search(r"--quantization TEXT (?:(?! --[a-z]).)*?\[default: ([^\]]*)\]", quality)
    assert said and said.group(1) == NodeParams.quantization, said


def test_the_weights_table_scores_every_run_on_the_prompts_all_runs_share():
    """A run that answered more prompts (a larger --limit) is scored on the shared ones only:
    an extra, wrong answer changes neither its row nor the prompt count."""
    import copy
    import json

    from timebill_ros.eval.publish import weights_table

    float32 = json.loads((REPO / "docs" / "results" / "quality_smollm2_tasks_float32.json").read_text())
    larger = copy.deepcopy(float32)
    larger["dtype"] = "float32+auto-decode"
    larger["answers"] += [{"id": "test-qa-0-39", "alpha": alpha, "answer": "nowhere", "tokens": 2}
                          for alpha in (0.0, 0.95)]
    larger["scores"]["qa"]["0.0"] = 0.5  # its own mean over all its prompts, the extra one included
    runs = {"quality_smollm2_tasks.json": larger, "quality_smollm2_tasks_float32.json": float32}

    def load(name: str) -> dict:
        if name not in runs:
            raise FileNotFoundError(name)
        return runs[name]

    rows = [line.split(" | ") for line in weights_table(load).splitlines() if line.startswith("| float32")]
    assert len(rows) == 2 and rows[0][1:4] == rows[1][1:4]  # the same scores on the shared prompts
    assert rows[0][4] == f"{len(float32['answers'])} of {len(float32['answers'])}"
    prompts = len({a["id"] for a in float32["answers"]})
    assert f"Scored on the {prompts} test prompts every run answered." in weights_table(load)


def test_the_demo_transcript_shows_the_first_feedback_lines_the_last_and_the_result():
    from timebill_ros.eval.publish import demo_transcript

    feedback = [f"[  0.{i:03d}s] decode   N_hat=64 tokens={i}" for i in range(10)]
    demo = {"machine": "m", "time": "2026-12-02T19:00:00", "model": "builtin:smollm2", "budget_s": 4.0,
            "exit_code": 0, "transcript": [*feedback, "status: SUCCEEDED", "text: The vase is in the closet."]}
    block = demo_transcript(lambda name: demo)
    body = block.split("```text\n")[1].split("```")[0].splitlines()
    assert body == [*feedback[:4], "...", feedback[-1], "status: SUCCEEDED", "text: The vase is in the closet."]
    assert "`m`" in block and "exit code 0" in block
