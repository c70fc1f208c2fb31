"""The device parameter: resolution, refusal with a reason, and synchronization before every
clock read of a timed section (checked with a stand-in synchronize: no GPU here)."""
import pytest
import torch

from timebill_ros.core.calibration import CalibrationKey
from timebill_ros.core.device import DeviceError, resolve_device
from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.model import ModelLoadError, load_model
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.timing import TimingModel
from timebill_ros.node.params import InvalidParameter, NodeParams


def test_devices_resolve_or_are_refused_with_the_fix():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="torch sees no CUDA device"):
            resolve_device("cuda:0")


def test_a_missing_gpu_fails_the_model_load_and_a_bad_spec_the_parameters(tiny_model_dir):
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_model(str(tiny_model_dir), device="cuda")
    with pytest.raises(InvalidParameter, match="parameter device must be cpu, cuda, cuda:N or auto"):
        NodeParams(device="tpu").validate()


def test_the_device_is_part_of_the_calibration_key(tiny):
    key = CalibrationKey.for_model(tiny)
    assert key.device == "cpu" and "cuda" not in key.filename()
    gpu = CalibrationKey(key.model, key.dtype, key.threads, key.machine, "cuda:1")
    assert gpu.filename() != key.filename() and gpu.filename().endswith("__cuda1.json")


def test_every_timed_section_synchronizes_before_its_clock_read(tiny, monkeypatch):
    log = []
    monkeypatch.setattr(tiny, "synchronize", lambda: log.append("sync"))
    engine = Engine(tiny, TimingModel(1e-9, 1e-5, 1e-3, 1e-7, 1e-3), FixedLengthPredictor(8),
                    EngineConfig(snapkv_window=16, prefill_chunk=128))
    try:
        log.clear()
        engine.prefill([(7 * i) % 250 for i in range(300)], on_chunk=lambda s, e, t: log.append("chunk"))
        assert log == ["sync", "chunk"] * 3  # three chunks, each timed after the device finished it
        log.clear()
        result = engine.run(Request([(7 * i) % 250 for i in range(300)], budget=30.0, max_new_tokens=6,
                                    fixed_alpha=0.5, ignore_eos=True), CancelToken())
        steps = len(result.token_ids) - 1
        # 3 prefill chunks + the eviction + one per decode step
        assert log.count("sync") == 3 + 1 + steps and steps == 5
    finally:
        engine.close()
