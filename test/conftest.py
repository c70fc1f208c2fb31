"""Shared fixtures: tiny seeded models built at test time, a quick calibration, and
(for the integration tests) a real timebill_node subprocess on a private DDS domain."""
from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (a failure reproduces, and CI cannot
# fail on a lucky draw); HYPOTHESIS_PROFILE=explore draws new ones for a local bug hunt.
settings.register_profile("derandomized", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

# Before anything imports rclpy or transformers: loopback-only DDS, a domain of our own,
# no downloads, and a private TIMEBILL_HOME.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 199)))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TIMEBILL_HOME"] = tempfile.mkdtemp(prefix="timebill-test-home-")
# It holds the real model materialized from its GGUF (~2 GB): left behind, every run of the
# suite cost the disk that much (104 of them filled 55 GB of /tmp here).
atexit.register(shutil.rmtree, os.environ["TIMEBILL_HOME"], ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The smallest model: 2 layers, hidden 64 (fast core tests)."""
    from timebill_ros.core.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny", seed=0)


@pytest.fixture(scope="session")
def slow_model_dir(tmp_path_factory) -> Path:
    """A larger random model (4 layers, hidden 256): jobs last long enough to cancel or kill."""
    from timebill_ros.core.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("slow") / "slow", seed=1, layers=4, hidden=256)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """The tiny model, loaded."""
    from timebill_ros.core.model import load_model

    return load_model(str(tiny_model_dir), threads=1)


def quick_calibration(model_dir: Path, out: Path, *, threads: int = 1, prefill_chunk: int = 512,
                      max_length: int | None = None, points: int = 9) -> Path:
    """A small calibration (few points) written to OUT, as `timebill calibrate` would."""
    from timebill_ros.core.calibration import CalibrationKey, calibrate
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.model import load_model
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel
    from timebill_ros.node.params import NodeParams

    loaded = load_model(str(model_dir), threads=threads, quantization=NodeParams.quantization)  # as the node
    engine = Engine(loaded, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(),
                    EngineConfig(prefill_chunk=prefill_chunk))
    key = CalibrationKey.for_model(loaded)
    result = calibrate(engine, key, points=points, repeats=2, decode_steps=5, max_length=max_length)
    engine.close()
    return result.save(out)


# ----------------------------------------------------------------- integration (ROS)
BASE_PARAMS = {"threads": 1, "control_rate_hz": 50.0, "max_queue": 2, "max_new_tokens": 512,
               "default_max_new_tokens": 64, "fixed_prediction_tokens": 32, "prefill_chunk": 512}


@pytest.fixture(scope="module")
def rclpy_context():
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="session")
def calibration(slow_model_dir, tmp_path_factory):
    return quick_calibration(slow_model_dir, tmp_path_factory.mktemp("cal") / "slow.json")


def start_node(slow_model_dir, calibration, workdir, name="node", ros_args=(), action="", wait=True, **overrides):
    """A timebill_node subprocess on the slow test model; ACTION remaps its action's name. With
    WAIT (and autostart) it returns once the node serves (or exited): the action server answers
    from the first second, but with "node is starting" until then."""
    from timebill_ros.node.client import NodeProcess

    params = {**BASE_PARAMS, "model_path": str(slow_model_dir), "calibration_path": str(calibration), **overrides}
    remap = ("-r", f"timebill/generate:={action}") if action else ()
    proc = NodeProcess(params, workdir, name, (*remap, *ros_args))
    if wait and params.get("autostart", True):
        proc.wait_serving()
    return proc


@pytest.fixture(scope="module")
def node(slow_model_dir, calibration, tmp_path_factory, rclpy_context):
    proc = start_node(slow_model_dir, calibration, tmp_path_factory.mktemp("node"))
    from timebill_ros.node.client import Client

    client = Client()
    assert client.wait_for_server(), proc.log()
    yield proc, client
    client.close()
    assert proc.stop() == 0, proc.log()


