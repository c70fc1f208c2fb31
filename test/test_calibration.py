"""Calibration: profile a real model, fit, save, load; clear errors for bad files."""
import json
import os

import pytest
from click.testing import CliRunner
from conftest import quick_calibration

from timebill_ros.cli.main import cli
from timebill_ros.core.calibration import Calibration, CalibrationError


@pytest.fixture(scope="module")
def calibration_file(tiny_model_dir, tmp_path_factory):
    return quick_calibration(tiny_model_dir, tmp_path_factory.mktemp("cal") / "cal.json")


def test_calibration_round_trip_and_contents(calibration_file):
    cal = Calibration.load(calibration_file)
    assert cal.key.dtype == "float32+auto-decode" and cal.key.threads == 1 and cal.key.model.startswith("tiny-")
    assert len(cal.prefill_samples) == 9 and len(cal.decode_samples) == 9
    assert cal.timing.p > 0 or cal.timing.q > 0
    # Longer prompts take longer to prefill, in the fit as in the samples.
    assert cal.timing.prefill(2000) > cal.timing.prefill(20)
    assert cal.prefill_mape >= 0 and cal.decode_mape >= 0
    assert cal.age_seconds() >= 0


def test_a_calibration_for_other_weights_or_shorter_prompts_says_why_it_does_not_fit(calibration_file):
    """A calibration_path set by hand can name another model's file, or one profiled over
    shorter sequences than the node takes: the node warns with the reason."""
    from dataclasses import replace

    cal = Calibration.load(calibration_file)
    profiled = cal.settings["max_length"]
    assert cal.mismatches(cal.key, profiled) == []
    other = replace(cal.key, dtype="bfloat16", machine="elsewhere")
    reasons = cal.mismatches(other, profiled + 500)
    assert len(reasons) == 3, reasons
    assert "weights 'float32+auto-decode', this node runs 'bfloat16'" in reasons[0]
    assert "machine" in reasons[1] and f"up to {profiled} tokens" in reasons[2]


def test_a_calibration_whose_held_out_error_is_large_is_reported_as_a_poor_fit(calibration_file):
    """A profile disturbed by other work fits badly; its held-out error says so, and the node
    and `timebill calibrate` warn with the fix instead of planning silently with it."""
    from dataclasses import replace

    cal = Calibration.load(calibration_file)
    assert replace(cal, prefill_mape=9.0, decode_mape=2.0).poor_fit_warning() is None
    warning = replace(cal, prefill_mape=29.4, decode_mape=8.5).poor_fit_warning()
    assert "held-out error is prefill 29 %" in warning and "decode" not in warning.split("(")[0]
    assert "calibrate again when the machine is idle" in warning


def test_missing_calibration_names_file_and_command(tmp_path):
    with pytest.raises(CalibrationError, match=r"no calibration at .*nope\.json.*timebill calibrate"):
        Calibration.load(tmp_path / "nope.json")


def test_corrupt_calibration_names_file_and_command(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match=r"bad\.json.*corrupt.*timebill calibrate"):
        Calibration.load(bad)
    bad.write_text(json.dumps({"key": {}}))
    with pytest.raises(CalibrationError, match="corrupt"):
        Calibration.load(bad)


def test_cli_calibrate_and_check(tiny_model_dir, tmp_path):
    out = tmp_path / "c.json"
    runner = CliRunner()
    check = runner.invoke(cli, ["calibrate", "--check", "--model", str(tiny_model_dir), "--out", str(out)])
    assert check.exit_code == 1 and "no calibration" in check.output
    run = runner.invoke(cli, ["calibrate", "--model", str(tiny_model_dir), "--threads", "1", "--points", "6",
                              "--repeats", "1", "--max-length", "512", "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert "held-out MAPE" in run.output and out.is_file()
    check = runner.invoke(cli, ["calibrate", "--check", "--model", str(tiny_model_dir), "--out", str(out)])
    assert check.exit_code == 0
    other = runner.invoke(cli, ["calibrate", "--check", "--model", str(tiny_model_dir), "--out", str(out),
                                "--prefill-chunk", "256"])
    assert other.exit_code == 1 and "not 256" in other.output
    beside = runner.invoke(cli, ["calibrate", "--check", "--model", str(tiny_model_dir), "--out", str(out),
                                 "--predictor", "builtin:default"])
    assert beside.exit_code == 1 and "beside predictor_path ''" in beside.output


def test_planning_timing_bounds_every_profiled_sample(calibration_file):
    """The fit is a least-squares middle, so some samples lie above it; the planning model
    (fit raised by the margins) must lie at or above every one of them."""
    cal = Calibration.load(calibration_file)
    plan_t = cal.planning_timing()
    pre_over = [t for n, t in cal.prefill_samples if t > cal.timing.prefill(n)]
    dec_over = [t for n, t in cal.decode_samples if t > cal.timing.decode_step(n)]
    assert pre_over and dec_over  # otherwise this test would not test the margins
    assert all(t <= plan_t.prefill(n) * (1 + 1e-9) for n, t in cal.prefill_samples)
    assert all(t <= plan_t.decode_step(n) * (1 + 1e-9) for n, t in cal.decode_samples)


def test_planning_timing_plans_prefill_with_the_predictors_contention(calibration_file, tmp_path):
    cal = Calibration.load(calibration_file)
    cal.prefill_contention = 1.5
    cal = Calibration.load(cal.save(tmp_path / "c.json"))  # the factor survives the file
    assert cal.planning_timing().prefill(1000) == pytest.approx(
        (cal.timing.prefill(1000) * (1 + cal.prefill_margin) + cal.prefill_margin_s) * 1.5)
    assert cal.planning_timing().decode_step(1000) == pytest.approx(
        cal.timing.decode_step(1000) * (1 + cal.decode_margin) + cal.decode_margin_s)


def test_prefill_contention_is_measured_beside_the_predictor(tiny):
    """A predictor that holds what prefill needs (the cores, in real life; a lock here) must
    show up as a contention factor well above 1."""
    import threading

    from timebill_ros.core.calibration import measure_prefill_contention
    from timebill_ros.core.engine import Engine
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel

    engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(8))
    gate, holding, prefills = threading.Lock(), threading.Event(), [0]

    def wait_for_the_predictor(module, args):
        prefills[0] += 1
        if prefills[0] > 1:  # the first prefill is the one measured alone
            holding.wait(5)
            with gate:
                pass

    class Hog:
        def predict(self, ids):
            with gate:
                holding.set()
                threading.Event().wait(0.05)
            holding.clear()
            return 8

    hook = engine.loaded.model.model.layers[0].register_forward_pre_hook(wait_for_the_predictor)
    try:
        assert measure_prefill_contention(engine, Hog(), [64], repeats=1) > 1.5
    finally:
        hook.remove()
        engine.close()


def test_slowest_prefill_chunk_is_the_last_of_a_full_context_and_the_warning_names_a_chunk_that_fits():
    from timebill_ros.core.timing import TimingModel, largest_chunk_within, prefill_kill_warning, slowest_chunk

    step = 0.01  # one decode step: the bound is one control period plus one step
    timing = TimingModel(a=1e-8, b=2e-5, c=1e-3, p=0.0, q=step)
    assert slowest_chunk(timing, 512, 2048) > timing.prefill(512)  # the first chunk is cheaper
    assert slowest_chunk(timing, 2048, 2048) == pytest.approx(timing.prefill(2048))
    period = 0.05
    fit = largest_chunk_within(timing, 2 * step, 2048)  # one layer = attention + MLP, two checks
    assert slowest_chunk(timing, fit, 2048) <= 2 * step < slowest_chunk(timing, fit + 64, 2048)
    assert prefill_kill_warning(timing, fit, 2048, period, layers=1, pieces_per_layer=2) is None
    warning = prefill_kill_warning(timing, 512, 2048, period, layers=1, pieces_per_layer=2)
    assert warning is not None and f"prefill_chunk <= {fit}" in warning
    # A kill waits for a piece of a layer, not the whole chunk: 30 layers of 2 pieces make 60,
    # of 3 pieces (the engine's, with the attention in halves) 90.
    fits_60 = TimingModel(a=1e-8, b=2e-5, c=1e-3, p=0.0, q=slowest_chunk(timing, 512, 2048) / 60)
    assert prefill_kill_warning(fits_60, 512, 2048, period, layers=30, pieces_per_layer=2) is None
    assert prefill_kill_warning(fits_60, 512, 2048, period, layers=29, pieces_per_layer=2) is not None
    fits_90 = TimingModel(a=1e-8, b=2e-5, c=1e-3, p=0.0, q=slowest_chunk(timing, 512, 2048) / 90)
    assert prefill_kill_warning(fits_90, 512, 2048, period, layers=30, pieces_per_layer=3) is None
    assert prefill_kill_warning(fits_90, 512, 2048, period, layers=30, pieces_per_layer=2) is not None


def test_calibration_warns_when_other_work_holds_the_cores_it_needs():
    from timebill_ros.core.calibration import busy_machine_warning

    assert busy_machine_warning(0.1, 2, 2) is None
    assert busy_machine_warning(3.0, 8, 2) is None
    warning = busy_machine_warning(1.0, 2, 2)  # one of two cores taken: the case that timed 20x slow
    assert warning is not None and "1.0 of 2 cores in use" in warning


def test_busy_cores_counts_what_runs_now():
    """A thread spinning while it measures takes most of a core: the check sees it."""
    import threading

    from timebill_ros.core.calibration import busy_cores_now

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = busy_cores_now(0.5)
    finally:
        stop.set()
        spinner.join()
    assert 0.3 <= busy <= (os.cpu_count() or 1)


def test_a_calibration_timed_in_other_prefill_chunks_is_made_again(tiny, tmp_path, monkeypatch):
    """Prefill time depends on the chunk size: a stored calibration of other chunks is not reused."""
    from timebill_ros.core.calibration import load_or_calibrate
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel

    monkeypatch.setenv("TIMEBILL_HOME", str(tmp_path))
    said = []
    for chunk, recalibrates in [(64, True), (64, False), (128, True)]:
        engine = Engine(tiny, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(), EngineConfig(prefill_chunk=chunk))
        said.clear()
        cal = load_or_calibrate(engine, points=6, repeats=1, max_length=256, announce=said.append)
        engine.close()
        assert cal.settings["prefill_chunk"] == chunk
        assert any("calibrating" in line for line in said) == recalibrates, (chunk, said)
    assert "it timed prefill in chunks of 64 tokens, not 128" in " ".join(said)


def test_the_kill_bound_comes_from_the_measured_slowest_piece(tiny_model_dir):
    from timebill_ros.core.calibration import profile_phases
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.model import load_model
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.core.timing import TimingModel, prefill_kill_warning

    loaded = load_model(str(tiny_model_dir), threads=1)
    engine = Engine(loaded, TimingModel(0, 0, 0, 0, 0), FixedLengthPredictor(4), EngineConfig(prefill_chunk=128))
    profile = profile_phases(engine, [40, 300], repeats=2, decode_steps=2, evict_lengths=[300])
    engine.close()
    share = profile.piece_share
    # The eviction phase is timed on the sweep's own prefills: both alphas, every round.
    assert sorted((n, a) for n, a, _ in profile.evict_samples) == [(300, 0.0), (300, 0.0), (300, 0.5), (300, 0.5)]
    assert all(seconds > 0 for _, _, seconds in profile.evict_samples)
    # 2 layers cut into 3 pieces each by the checks (and the output layer after them): one
    # piece is more than nothing and at most the whole chunk.
    assert 0.0 < share <= 1.0
    timing = TimingModel(a=1e-8, b=2e-5, c=1e-3, p=0.0, q=1e-4)
    equal = prefill_kill_warning(timing, 512, 2048, 0.05, layers=30, pieces_per_layer=3)
    # A measured piece twice the equal share (an MLP is most of a layer) waits twice as long.
    measured = prefill_kill_warning(timing, 512, 2048, 0.05, layers=30, pieces_per_layer=3, piece_share=2 / 90)
    ms = [int(w.split("up to ")[1].split(" ms")[0]) for w in (equal, measured)]
    assert ms[1] == pytest.approx(2 * ms[0], abs=1)


def test_the_machine_id_tells_cpus_of_one_name_apart_by_their_widest_extension():
    import os

    from timebill_ros.core.calibration import machine_id

    zen3 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nmodel name\t: AMD EPYC\nflags\t\t: fpu\n"
    zen4 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    n = os.cpu_count()
    assert machine_id(zen3) == f"amd-epyc-{n}cpu-avx2" and machine_id(zen4) == f"amd-epyc-{n}cpu-avx512bf16"
    assert machine_id("model name : Intel Xeon\nflags : avx512f amx_tile\n").endswith("cpu-amx")
