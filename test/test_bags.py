"""Workload and result bags (real rosbag2 via rosbags), workloads, the report, and a
smoke run of make -> replay against the real node -> eval."""
import json
import subprocess

import pytest
from conftest import start_node

from timebill_ros.core.timing import TimingModel
from timebill_ros.eval import bags, report, tasks, workload
from timebill_ros.eval.tasks import Example

REQUEST = dict(request_id="r1", task="qa", method="timebill", prompt="Where is the cup?", budget=1.25,
               max_new_tokens=8, k=-1.0, alpha_max=-1.0, fixed_alpha=-1.0, overrun_policy="kill",
               on_infeasible="", reference="kitchen")


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_request_bag_round_trip(tmp_path, storage):
    path = bags.write_bag(tmp_path / "w", bags.REQUEST_TOPIC, bags.REQUEST_TYPE,
                          [(10, REQUEST), (20, {**REQUEST, "request_id": "r2"})], storage)
    got = list(bags.read_bag([path], bags.REQUEST_TOPIC))
    assert [t for t, _ in got] == [10, 20] and [m.request_id for _, m in got] == ["r1", "r2"]
    assert got[0][1].budget.sec == 1 and got[0][1].budget.nanosec == 250_000_000
    assert got[0][1].prompt == REQUEST["prompt"] and got[0][1].reference == "kitchen"
    assert got[0][1].expected_response_tokens == 0  # absent from the record: the .msg default


def ex(i, task="qa"):
    return Example(f"e{i}", task, "test", f"prompt {i}", "kitchen", 200)


def test_workload_blocks_are_periodic_and_carry_the_method_settings():
    reqs = workload.build([ex(0), ex(1)], workload.fixed_budgets([0.5, 2.0], ["qa"]),
                          {"vanilla": {"fixed_alpha": 0.0}, "timebill": {"k": 5.0}}, ["kill"], 64)
    assert len(reqs) == 2 * 2 * 2
    assert [r.at for r in reqs[:3]] == [0.0, 0.5, 1.0 + workload.GAP_S]
    assert reqs[0].fields["fixed_alpha"] == 0.0 and reqs[2].fields["k"] == 5.0
    assert len({r.fields["request_id"] for r in reqs}) == len(reqs)
    assert reqs[0].fields["request_id"] == "kill/0.5s/vanilla/e0"


def test_budget_levels_are_per_task_and_the_true_length_method_gets_each_examples_length():
    budgets = {"qa": {"q10": 0.5, "q90": 1.0}, "list": {"q10": 2.0, "q90": 6.0}}
    reqs = workload.build([ex(0), ex(1, "list")], budgets, {"timebill_true_length": workload.METHODS[
        "timebill_true_length"]}, ["kill"], 64, true_lengths={"e0": 3, "e1": 200})
    by_id = {r.fields["request_id"]: r.fields for r in reqs}
    assert by_id["kill/q10/timebill_true_length/e0"]["budget"] == 0.5
    assert by_id["kill/q10/timebill_true_length/e1"]["budget"] == 2.0
    assert by_id["kill/q90/timebill_true_length/e1"]["expected_response_tokens"] == 64  # capped at max_new
    assert by_id["kill/q90/timebill_true_length/e0"]["expected_response_tokens"] == 3
    assert by_id["kill/q90/timebill_true_length/e0"]["k"] == 1.0
    with pytest.raises(ValueError, match="train-rlp"):
        workload.build([ex(0)], budgets, {"t": workload.METHODS["timebill_true_length"]}, ["kill"], 64)


def test_budgets_span_vanilla_failing_to_completing():
    timing = TimingModel(0, 1e-3, 0.0, 0.0, 0.01)
    budgets = workload.choose_budgets(timing, [100, 200, 300, 400, 500], [10] * 5)
    assert list(budgets) == ["q10", "q30", "q50", "q70", "q90"]
    assert list(budgets.values()) == sorted(budgets.values()) and budgets["q10"] < budgets["q90"]


def record(method, budget, status_name, text="kitchen", alpha=0.0):
    status = {"SUCCEEDED": 1, "KILLED_AT_DEADLINE": 2}[status_name]
    return {"overrun_policy": "kill", "method": method, "budget": budget, "status": status, "status_name": status_name,
            "task": "qa", "text": text, "reference": "kitchen", "alpha": alpha}


def test_report_groups_by_budget_level_ordered_by_seconds():
    rows = [{**record("timebill", b, "SUCCEEDED"), "request_id": f"kill/{lvl}/timebill/e{i}", "task": t}
            for i, (lvl, b, t) in enumerate([("q90", 3.0, "qa"), ("q90", 9.0, "list"), ("q10", 0.5, "qa"),
                                              ("q10", 1.5, "list")])]
    cells = report.summarise(rows)["kill"]["timebill"]
    assert report.level_order(cells) == ["q10", "q90"]
    assert cells["q90"]["budget_s_mean"] == 6.0 and cells["q90"]["budget_s_by_task"] == {"list": 9.0, "qa": 3.0}


def test_report_scores_incomplete_as_zero_and_checks_claims():
    rows = [record("timebill", 1.0, "SUCCEEDED", alpha=0.5), record("timebill", 1.0, "SUCCEEDED", alpha=0.3),
            record("vanilla", 1.0, "SUCCEEDED"), record("vanilla", 1.0, "KILLED_AT_DEADLINE", text=""),
            record("fixed_0.95", 1.0, "SUCCEEDED", text="garage", alpha=0.95),
            record("fixed_0.95", 1.0, "SUCCEEDED", text="garage", alpha=0.95)]
    table = report.summarise(rows)
    tb, va = table["kill"]["timebill"]["1.0"], table["kill"]["vanilla"]["1.0"]
    assert tb["score"] == 1.0 and tb["completion"] == 1.0 and tb["alpha_mean"] == pytest.approx(0.4)
    assert va["score"] == 0.5 and va["completion"] == 0.5 and va["deadline_misses"] == 1
    claims = report.check_claims(table, list(workload.METHODS))["kill"]
    assert claims["timebill_highest_score_at_every_budget"] is True
    assert claims["completion_gap_vs_fixed_0.95_pts"] == [0.0]


def test_mechanism_compares_the_prediction_with_the_true_length_of_the_same_example():
    def run(method, example, predicted, worst, status="SUCCEEDED", alpha=0.0):
        return {**record(method, 1.0, status, alpha=alpha), "request_id": f"kill/q50/{method}/{example}",
                "predicted_response_tokens": predicted, "worst_case_response_tokens": worst}

    skipped = {**run("timebill", "e3", 0, 0), "status": 3, "status_name": "SKIPPED"}  # never planned
    rows = [run("timebill_true_length", "e1", 40, 40, alpha=0.2), run("timebill_true_length", "e2", 10, 10),
            run("timebill", "e1", 16, 80, "KILLED_AT_DEADLINE", alpha=0.6), run("timebill", "e2", 16, 32, alpha=0.1),
            run("fixed_0.95", "e1", 64, 64, alpha=0.95), skipped,
            {**run("timebill_true_length", "e3", 0, 0), "status": 3, "status_name": "SKIPPED"}]
    cells = report.mechanism(rows)["kill"]["q50"]
    tb = cells["timebill"]
    assert tb["predictor_mae_tokens"] == 15.0 and tb["under_predicted_share"] == 0.5
    assert tb["worst_case_short_share"] == 0.0 and tb["true_tokens_mean"] == 25.0
    assert (tb["n"], tb["ran"], tb["killed_or_late"]) == (3, 2, 1) and tb["alpha_mean"] == pytest.approx(0.35)
    assert tb["completion"] == pytest.approx(1 / 3)
    fixed = cells["fixed_0.95"]
    assert fixed["alpha_mean"] == pytest.approx(0.95) and "predictor_mae_tokens" not in fixed
    assert report.mechanism([r for r in rows if r["method"] != "timebill_true_length"]) == {}


def test_make_replay_eval_against_the_real_node(slow_model_dir, calibration, tmp_path):
    proc = start_node(slow_model_dir, calibration, tmp_path, name="bagnode", max_queue=8)
    try:
        made = subprocess.run(["timebill", "bag", "make", str(tmp_path / "work"), "--per-task", "1",
                               "--budgets", "0.4,3", "--methods", "vanilla,timebill", "--no-k-sweep",
                               "--params-file", str(proc.params_file)], capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stderr
        played = subprocess.run(["timebill", "bag", "replay", str(tmp_path / "work"), "--out", str(tmp_path / "res"),
                                 "--rate", "0.5", "--storage", "sqlite3", "--skip-idle"],
                                capture_output=True, text=True, timeout=300)
        assert played.returncode == 0, played.stdout + played.stderr + proc.log()
        summary = json.loads(played.stdout.strip().splitlines()[-1])
        # At rate 0.5 requests arrive two budgets apart and a Kill job ends by its budget, so the
        # node is idle before every arrival however slow the host: that idle time is skipped.
        assert summary.pop("idle_skipped_s") > 0 and summary.pop("overrun_wait_s") >= 0
        goals = 2 * 2 * len(tasks.TASKS)  # budgets x methods x one prompt per task
        assert summary == {"requests": goals, "results": goals, "lost": 0}
        # The results say which node answered and what it planned with (eval-traces --agree checks it).
        node = json.loads(bags.custom_data(tmp_path / "res")[bags.NODE_KEY])
        assert node["node"].endswith("/timebill_node") and node["model_path"] == str(slow_model_dir)
        assert (node["predictor_path"], node["predictor_digest"], node["k"]) == ("", "fixed:32", 0.0)
        evaluated = subprocess.run(["timebill", "eval", str(tmp_path / "res"), "--out", str(tmp_path / "eval")],
                                   capture_output=True, text=True, timeout=300)
        assert evaluated.returncode == 0, evaluated.stderr
        data = json.loads((tmp_path / "eval" / "eval.json").read_text())
        assert data["results"] == goals
        assert set(data["table"]["kill"]) == {"vanilla", "timebill"}
        assert (tmp_path / "eval" / "budget_sweep_kill.png").stat().st_size > 1000
    finally:
        proc.stop()


def test_a_request_replayed_again_counts_once_as_the_last_bag_has_it(tmp_path):
    from timebill_ros.cli.bag import evaluate_bags

    def result_bag(name: str, status_name: str):
        status = {"SUCCEEDED": 1, "KILLED_AT_DEADLINE": 2}[status_name]
        fields = {"request_id": "kill/q50/vanilla/e1", "task": "qa", "method": "vanilla", "reference": "kitchen",
                  "budget": 1.0, "status": status, "status_name": status_name, "overrun_policy": "kill",
                  "text": "kitchen"}
        return bags.write_bag(tmp_path / name, bags.RESULT_TOPIC, bags.RESULT_TYPE, [(1, fields)], "sqlite3")

    first, again = result_bag("first", "KILLED_AT_DEADLINE"), result_bag("again", "SUCCEEDED")
    data = evaluate_bags([first, again], tmp_path / "eval", ["vanilla"])
    cell = data["table"]["kill"]["vanilla"]["q50"]
    assert data["results"] == 1 and cell["completion"] == 1.0 and cell["score"] == 1.0


def test_auto_budgets_span_each_task_s_predicted_vanilla_times_for_the_prompts_as_sized(slow_model_dir,
                                                                                      calibration, tmp_path):
    import yaml

    from timebill_ros.cli.bag import make_workload
    from timebill_ros.core.calibration import Calibration
    from timebill_ros.core.model import encode_prompt, load_tokenizer

    params = tmp_path / "node.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model_path": str(slow_model_dir), "calibration_path": str(calibration), "predictor_path": "",
        "max_prompt_tokens": 14000}}}))
    requests, chosen, _ = make_workload(tmp_path / "work", "sqlite3", per_task=2, budgets="auto", methods="vanilla",
                                        k_sweep=False, policies=["kill"], params_file=str(params),
                                        task_names=("qa", "code"), prompt_tokens=(3000, 14000))
    assert set(chosen) == {"qa", "code"} and len(requests) == 2 * 2 * len(workload.QUANTILES)
    timing, tokenizer = Calibration.load(calibration).timing, load_tokenizer(str(slow_model_dir))
    for task, levels in chosen.items():
        seconds = list(levels.values())
        assert seconds == sorted(seconds) and seconds[0] < seconds[-1]
        mine = [r.fields for r in requests if r.fields["task"] == task]
        prompt_n = [len(encode_prompt(tokenizer, f["prompt"])) for f in mine]
        assert all(3000 <= n <= 14000 for n in prompt_n)  # the toy tokenizer: a token a character
        assert min(map(timing.prefill, prompt_n)) < seconds[0] and seconds[-1] <= max(
            timing.end_to_end(n, 0.0, 384) for n in prompt_n)
