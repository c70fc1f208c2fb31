"""Decode kernels and K/V dtype chosen by measurement (core.kernels): the choice on a fake
timing table, the pins, and a real measurement on the tiny model."""
import pytest

from timebill_ros.core import kernels
from timebill_ros.core.kernels import Kernels, candidates, choose

# A fake timing table: float16 K/V slow (as on an AMD EPYC without FP16 arithmetic), int8 slower
# than int4, and a bfloat16 cache a hair faster than float32 but below the quality bound.
TABLE = {
    "auto-decode, K/V float32": {512: 0.015, 2048: 0.021},
    "auto-decode, K/V bfloat16": {512: 0.014, 2048: 0.020},
    "auto-decode, K/V float16": {512: 0.019, 2048: 0.040},
    "int8-decode, K/V float32": {512: 0.020, 2048: 0.026},
    "int8-decode, K/V bfloat16": {512: 0.020, 2048: 0.026},
    "int8-decode, K/V float16": {512: 0.024, 2048: 0.045},
}
AGREEMENT = {label: 1.0 for label in TABLE} | {"auto-decode, K/V bfloat16": 0.90}


def test_the_fastest_candidate_within_the_quality_bound_is_chosen():
    options = candidates("auto-decode")
    assert len(options) == 6
    # bfloat16 is fastest but below the bound: float32 wins.
    assert choose(TABLE, AGREEMENT, options) == Kernels("auto-decode", "float32")
    assert choose(TABLE, {label: 1.0 for label in TABLE}, options) == Kernels("auto-decode", "bfloat16")


def test_with_no_candidate_within_the_bound_the_most_faithful_is_chosen():
    poor = {label: 0.5 for label in TABLE} | {"int8-decode, K/V float16": 0.8}
    assert choose(TABLE, poor, candidates("auto-decode")) == Kernels("int8-decode", "float16")


@pytest.mark.parametrize("quantization,pin,expected", [
    ("auto-decode", "float16", [Kernels("auto-decode", "float16"), Kernels("int8-decode", "float16")]),
    ("int8-decode", "auto", [Kernels("int8-decode", d) for d in ("float32", "bfloat16", "float16")]),
    ("int4-decode", "bfloat16", [Kernels("int4-decode", "bfloat16")]),
    ("", "auto", []),  # no lean decode step: nothing to choose
])
def test_a_pinned_parameter_wins(quantization, pin, expected):
    options = candidates(quantization, pin)
    assert options == expected
    if options and all(k.label() in TABLE for k in options):  # a pin to the slow float16 cache gets it
        assert choose(TABLE, AGREEMENT, options).kv_dtype == (pin if pin != "auto" else "float32")


def test_a_calibration_rejects_kernels_a_node_pins_otherwise():
    from timebill_ros.core.calibration import Calibration, CalibrationKey
    from timebill_ros.core.kernels import KernelChoice
    from timebill_ros.core.timing import TimingModel

    choice = KernelChoice(Kernels("auto-decode", "float32"), TABLE, AGREEMENT, {"quantization": "auto-decode"})
    cal = Calibration(CalibrationKey("m", "float32", 2, "x"), TimingModel(0, 0, 0, 0, 0), [], [], 0, 0,
                      kernels=choice.to_dict())
    assert KernelChoice.from_dict(cal.kernels) == choice
    assert cal.kernel_mismatch("auto-decode", "auto") is None
    assert cal.kernel_mismatch("auto-decode", "float32") is None
    assert "float16" in cal.kernel_mismatch("auto-decode", "float16")
    assert "int8-decode" in cal.kernel_mismatch("int8-decode", "auto")
    assert "auto-decode, K/V float32" in choice.summary()


def test_measuring_on_a_real_model_times_every_candidate_and_applies_the_choice(tiny_model_dir):
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.model import encode_prompt, load_model
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel

    loaded = load_model(str(tiny_model_dir), threads=1, quantization="int8-decode")
    engine = Engine(loaded, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(4), EngineConfig(snapkv_window=16))
    ticks = []

    def progress(total):
        ticks.append(total)
        return lambda: ticks.append(-1)

    choice = kernels.choose_kernels(engine, "int8-decode", "auto", lambda text: encode_prompt(loaded.tokenizer, text),
                                    [64, 128], progress)
    engine.close()
    labels = [k.label() for k in candidates("int8-decode")]
    assert sorted(choice.step_seconds) == sorted(labels) and set(choice.agreement) <= set(labels)
    assert all(t > 0 for steps in choice.step_seconds.values() for t in steps.values())
    assert all(0.0 <= a <= 1.0 for a in choice.agreement.values())
    assert ticks.count(-1) == ticks[0]  # the progress bar ends full, not past it
    # Checked in order of speed until one passed: the chosen one is the fastest that passed.
    checked = [k for k in candidates("int8-decode") if k.label() in choice.agreement]
    assert choice.chosen == choose(choice.step_seconds, choice.agreement, checked)
    kernels.apply(loaded, choice.chosen, "int8-decode")
    assert str(loaded.lean_step.kv_dtype).endswith(choice.chosen.kv_dtype)
