"""The comparison computed from traces (eval.traces): grid rounding, Kill and Skip-Next, plans."""
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from timebill_ros.core.timing import TimingModel
from timebill_ros.eval import traces
from timebill_ros.eval.traces import METHODS, Method, Prompt, Trace

TIMING = TimingModel(a=0.0, b=1e-3, c=0.0, p=1e-5, q=1e-3)  # 1 ms a prompt token; a step 1 ms + 10 us a cached token


def trace(alpha, total_decode, tokens=10, prefill=1.0, text="garage", task="qa", n=1000):
    steps = tuple(total_decode * (i + 1) / tokens for i in range(tokens))
    return Trace("ex", task, alpha, n, prefill, 0.01 * alpha, steps, text)


def test_a_planned_alpha_is_rounded_up_to_the_grid():
    assert traces.grid_alpha(0.0) == 0.0 and traces.grid_alpha(0.3) == 0.5
    assert traces.grid_alpha(0.5) == 0.5 and traces.grid_alpha(0.99) == 0.95


def test_kill_scores_a_late_goal_zero_and_skip_next_skips_what_arrives_meanwhile():
    on_time, late = trace(0.0, 0.5), trace(0.0, 1.0)
    assert traces.outcome(on_time, "garage", 2.0, "kill").score == 1.0
    killed = traces.outcome(late, "garage", 1.5, "kill")
    assert (killed.status, killed.score, killed.end_s) == ("KILLED_AT_DEADLINE", 0.0, 1.5)
    # budget 1.8: the first goal ends at 2.0, past the second's arrival (1.8): skipped; the
    # third arrives at 3.6 and runs.
    seq = traces.replay_skip_next([(late, "garage", 1.8), (on_time, "garage", 1.8), (on_time, "garage", 1.8)])
    assert [o.status for o in seq] == ["COMPLETED_LATE", "SKIPPED", "SUCCEEDED"]


def test_timebill_evicts_to_fit_a_tight_budget_and_the_true_length_arm_uses_the_target_s_length():
    common = dict(prompt_tokens=1000, prefill_s=1.0, n_max=100, true_tokens=10)
    assert traces.planned_alpha(Method("fixed", fixed_alpha=0.75), TIMING, budget=1.0, n_hat=5, **common) == 0.75
    generous = traces.planned_alpha(METHODS[-2], TIMING, budget=100.0, n_hat=5, **common)
    tight = traces.planned_alpha(METHODS[-2], TIMING, budget=1.15, n_hat=5, **common)
    assert generous == 0.0 and 0.0 < tight <= 0.95 and tight in traces.ALPHA_GRID
    # The true-length arm plans for 10 tokens with k = 1; TimeBill for k x N_hat = 25: it evicts more.
    assert traces.planned_alpha(METHODS[-1], TIMING, budget=1.15, n_hat=5, **common) <= tight


def test_evaluate_gives_every_method_a_cell_with_standard_errors():
    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=10,
                      traces={a: trace(a, 0.2 + 0.05 * i - 0.1 * a, prefill=1.0 + 0.1 * i) for a in traces.ALPHA_GRID})
               for i in range(6)]
    levels = traces.budget_levels(prompts, (0.1, 0.9))
    table = traces.evaluate(traces.goal_outcomes(prompts, levels, TIMING, n_max=100))
    assert set(table) == {"kill", "skip_next"} and set(table["kill"]) == {m.name for m in METHODS}
    vanilla = table["kill"]["vanilla"]
    assert vanilla["q10"]["completion"] < vanilla["q90"]["completion"]  # the levels sweep vanilla's times
    assert vanilla["q90"]["score_se"] >= 0.0 and vanilla["q90"]["n"] == 6
    assert table["kill"]["fixed_0.95"]["q10"]["completion"] >= vanilla["q10"]["completion"]


def test_the_split_by_task_averages_each_task_s_goals_and_names_its_best_fixed_alpha():
    from timebill_ros.eval.publish import traces_by_task_table

    def prompt(i, task, text):
        return Prompt(f"ex{i}", task, "garage", n_hat=10,
                      traces={a: trace(a, 0.2, text=text, task=task) for a in traces.ALPHA_GRID})

    prompts = [prompt(0, "qa", "garage"), prompt(1, "qa", "garage"), prompt(2, "list", "wrong")]
    levels = {"qa": {"q50": 100.0}, "list": {"q50": 100.0}}  # generous: every goal completes
    split = traces.by_task(traces.goal_outcomes(prompts, levels, TIMING, n_max=100), prompts)
    assert split["qa"]["timebill"]["q50"]["score"] == 1.0 and split["list"]["vanilla"]["q50"]["score"] == 0.0
    assert "skip_next" not in str(split) and set(split) == {"list", "qa"}
    text = traces_by_task_table(lambda name: {"per_task": 2, "by_task": split})
    assert "| qa | 1.00 / 1.00 / 1.00 (vanilla) |" in text


def test_a_coarser_measured_grid_is_the_one_planned_alphas_round_up_to():
    coarse = (0.0, 0.25, 0.5, 0.75, 0.95)
    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=10,
                      traces={a: trace(a, 0.2 + 0.05 * i - 0.1 * a, prefill=1.0 + 0.1 * i) for a in coarse})
               for i in range(4)]
    levels = traces.budget_levels(prompts, (0.1, 0.5, 0.9))
    ended = traces.goal_outcomes(prompts, levels, TIMING, n_max=100)
    planned = {o.alpha for goal, o in ended.items() if "/timebill/" in goal}
    assert planned <= set(coarse) and planned - {0.0}  # on the grid measured, and evicting somewhere


def test_the_alpha_grid_option_rejects_a_grid_without_the_fixed_arms_alphas():
    from click.testing import CliRunner

    from timebill_ros.cli.traces import eval_traces_cmd

    result = CliRunner().invoke(eval_traces_cmd, ["--alphas", "0,0.5,0.9"])
    assert result.exit_code == 2 and "missing [0.25, 0.75, 0.95]" in result.output
    assert "expected comma-separated" in CliRunner().invoke(eval_traces_cmd, ["--alphas", "0,x"]).output
    alone = CliRunner().invoke(eval_traces_cmd, ["--agree-again", "."])  # a second replay needs the first
    assert alone.exit_code == 2 and "give --agree too" in alone.output


def test_the_comparison_keeps_prompts_whose_encoded_length_is_in_range_and_the_node_takes():
    from timebill_ros.cli.traces import sized_as_asked
    from timebill_ros.core.model import encode_prompt, load_tokenizer

    tokenizer = load_tokenizer("builtin:default")
    short, long = "Where is the garage?", "Where is the garage? " * 40
    n_short, n_long = (len(encode_prompt(tokenizer, p)) for p in (short, long))
    assert sized_as_asked(tokenizer, None, 100) is None  # the shipped split: taken as it is
    fits = sized_as_asked(tokenizer, (n_short, n_long + 10), n_long)
    assert fits(short) and fits(long)
    assert not sized_as_asked(tokenizer, (n_short, n_long), n_long - 1)(long)  # the node would refuse it
    assert not sized_as_asked(tokenizer, (n_short + 1, n_long), n_long)(short)  # shorter than asked


def test_the_machine_pace_flags_traces_measured_through_a_slow_spell():
    def prompt(prefill):  # TIMING's fit: 1 ms a prompt token, so 1,000 tokens = 1.0 s
        return Prompt("ex", "qa", "garage", n_hat=10, traces={0.0: trace(0.0, 0.2, prefill=prefill)})

    steady = traces.machine_pace([prompt(1.0), prompt(1.2), prompt(0.9)], TIMING)
    assert steady["steady"] and steady["prefill_over_fit_median"] == pytest.approx(1.0)
    slow_spell = traces.machine_pace([prompt(0.7), prompt(1.0), prompt(2.0)], TIMING)
    assert not slow_spell["steady"] and slow_spell["prefill_over_fit_max"] == pytest.approx(2.0)
    # Decodes against what the plan's model gives them: 10 tokens are 9 steps of 11 ms at 1,000
    # cached entries (+ 10 us a decoded one), 99.4 ms; the first token comes out of prefill.
    planned = TIMING.decode(1000, 0.0, 10)
    fast, slow = (Prompt("ex", "qa", "garage", n_hat=10, traces={0.0: trace(0.0, seconds)}) for seconds in (0.05, 0.2))
    pace = traces.machine_pace([fast, fast, slow], TIMING)
    assert pace["decode_over_plan_median"] == pytest.approx(0.045 / planned)  # 9 of the 10 tokens' 50 ms
    assert pace["decode_over_plan_max"] == pytest.approx(0.18 / planned) and pace["decode_over_plan_share"] == 1 / 3
    assert "decode_over_calibration" not in pace  # only against a fit given
    # Against the calibration's fit without margins (the plan's here is 1.25x it): the host's own pace.
    fit = TIMING.scaled(0.8, 0.8)
    pace = traces.machine_pace([fast, fast, slow], TIMING, fit)
    assert pace["decode_over_calibration"] == pytest.approx(0.045 / fit.decode(1000, 0.0, 10))
    assert pace["prefill_over_calibration"] == pytest.approx(1.0 / 0.8)


@pytest.mark.parametrize("policy", ["kill", "skip_next"])
def test_a_generous_budget_completes_everything(policy):
    prompts = [Prompt("ex", "qa", "garage", n_hat=10, traces={a: trace(a, 0.2) for a in traces.ALPHA_GRID})]
    table = traces.evaluate(traces.goal_outcomes(prompts, {"qa": {"big": 100.0}}, TIMING, n_max=100,
                                                 policies=(policy,)))
    assert all(cell["big"]["completion"] == 1.0 and cell["big"]["score"] == 1.0 for cell in table[policy].values())


def test_traces_measured_on_an_engine_round_trip_through_json(tiny):
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.eval import tasks

    tiny_engine = Engine(tiny, TIMING, FixedLengthPredictor(7), EngineConfig(snapkv_window=16))

    examples = [e for e in tasks.load("test") if e.task == "qa"][:1]
    prompts = traces.measure(tiny_engine, examples, alphas=(0.0, 0.5, 0.9), max_new_tokens=6, prefill_samples=2)
    [p] = prompts
    assert set(p.traces) == {0.0, 0.5, 0.9}
    run = p.traces[0.5]
    assert 1 <= len(run.token_s) <= 6 and list(run.token_s) == sorted(run.token_s) and run.prefill_s > 0
    assert p.n_hat == 7 and traces.from_json(traces.to_json(prompts)) == prompts
    # Two real prefills (the first run's and one later); every run carries their median.
    assert len(p.prefill_samples) == 2 and all(s > 0 for s in p.prefill_samples)
    assert [t.prefill_s for t in p.traces.values()] == [pytest.approx(sum(p.prefill_samples) / 2)] * 3
    assert {t.text for t in p.traces.values()} and p.traces[0.0].text == traces.measure(
        tiny_engine, examples, alphas=(0.0,), max_new_tokens=6)[0].traces[0.0].text  # a re-prefill changes nothing
    tiny_engine.close()


def test_a_memoized_prefill_serves_the_same_prompt_exactly_as_a_fresh_one(tiny):
    from timebill_ros.core.engine import Engine, EngineConfig, PrefillMemo
    from timebill_ros.core.jobs import CancelToken, Request
    from timebill_ros.core.predictor import FixedLengthPredictor

    engine = Engine(tiny, TIMING, FixedLengthPredictor(7), EngineConfig(snapkv_window=16, prefill_chunk=64))
    ids = list(range(5, 205))

    def run(alpha):
        r = engine.run(Request(ids, budget=1e9, max_new_tokens=8, fixed_alpha=alpha, ignore_eos=True), CancelToken())
        return r.token_ids, r.kept_prompt_tokens

    fresh = {alpha: run(alpha) for alpha in (0.0, 0.5, 0.0)}
    engine.prefill_memo = PrefillMemo()
    memoized = {alpha: run(alpha) for alpha in (0.0, 0.5, 0.0)}  # the second and third reuse the first
    assert memoized == fresh and engine.prefill_memo.hits == 2
    ids = ids[:150]  # another prompt is prefilled anew, not served from the memo
    run(0.5)
    assert engine.prefill_memo.hits == 2 and engine.prefill_memo.ids == tuple(ids)
    engine.close()


def test_agreement_counts_the_goals_both_ran_and_where_they_differ():
    prompts = [Prompt("ex", "qa", "garage", n_hat=10, traces={a: trace(a, 0.2) for a in traces.ALPHA_GRID})]
    edge = prompts[0].traces[0.0].total_s * 1.02  # vanilla's work ends 2 % of the budget before it
    outcomes = traces.goal_outcomes(prompts, {"qa": {"tight": 1.0, "big": 100.0, "edge": edge}}, TIMING,
                                    n_max=100, policies=("kill",))
    assert outcomes["kill/edge/vanilla/ex"].margin == pytest.approx(0.02 / 1.02)
    records = [{"request_id": "kill/big/vanilla/ex", "status_name": "SUCCEEDED"},
               {"request_id": "kill/tight/vanilla/ex", "status_name": "SUCCEEDED"},  # the traces say killed
               {"request_id": "kill/edge/vanilla/ex", "status_name": "KILLED_AT_DEADLINE"},  # a coin flip
               {"request_id": "other", "status_name": "SUCCEEDED"}]
    assert traces.agreement(outcomes, records) == {
        "goals": 3, "agree_pct": pytest.approx(100 / 3), "trace_complete_node_not": 1, "node_complete_trace_not": 1,
        "clear_of_deadline": {"near": 0.05, "goals": 2, "agree_pct": 50.0}}


def test_the_node_s_agreement_with_itself_pairs_two_replays_of_the_same_goals():
    first = [{"request_id": "kill/q10/vanilla/ex", "status_name": "SUCCEEDED"},
             {"request_id": "kill/q50/timebill/ex", "status_name": "KILLED_AT_DEADLINE"},
             {"request_id": "kill/q90/timebill/ex", "status_name": "SUCCEEDED"}]
    again = [{**first[0]}, {**first[1], "status_name": "SUCCEEDED"},  # flipped by the host
             {"request_id": "kill/q90/vanilla/ex", "status_name": "SUCCEEDED"}]  # not in the first run: left out
    assert traces.self_agreement(first, again) == {"goals": 2, "agree_pct": 50.0}
    assert traces.self_agreement(first, []) == {"goals": 0, "agree_pct": None}


def test_the_agreement_refuses_results_a_node_planned_with_another_target_predictor_or_k(tmp_path):
    import click

    from timebill_ros.cli.traces import check_answered_by
    from timebill_ros.eval import bags
    from timebill_ros.node.params import NodeParams

    params = NodeParams(model_path="builtin:smollm2", predictor_path="builtin:p", k=0.9)
    same = {"model_path": "builtin:smollm2", "predictor_path": "builtin:p", "k": 0.9, "predictor_digest": "abc"}

    def answered(name: str, node: dict | None) -> Path:
        custom = {bags.NODE_KEY: json.dumps(node)} if node is not None else None
        return bags.write_bag(tmp_path / name, bags.RESULT_TOPIC, bags.RESULT_TYPE, [], "sqlite3", custom)

    # The same planning; a node whose predictor is on another machine; a bag from before nodes were recorded.
    check_answered_by((answered("same", same), answered("away", {**same, "predictor_digest": None}),
                       answered("older", None)), params, "abc")
    for change, said in (({"k": 1.5}, "k 1.5 (traces: 0.9)"), ({"predictor_digest": "def"}, "digest def"),
                         ({"model_path": "x"}, "model_path 'x'")):
        with pytest.raises(click.ClickException, match=re.escape(said)):
            check_answered_by((answered(said, {**same, **change}),), params, "abc")
    # The re-plan's check takes only a node that re-plans, and checks the rest as above.
    from timebill_ros.cli.traces import replanning_records

    with pytest.raises(click.ClickException, match="replan_steps 0: --agree-replan needs one that re-plans"):
        replanning_records((answered("once", {**same, "replan_steps": 0}),), params, "abc")
    with pytest.raises(click.ClickException, match=re.escape("k 1.5 (traces: 0.9)")):
        replanning_records((answered("other k", {**same, "replan_steps": 8, "k": 1.5}),), params, "abc")
    with pytest.raises(click.ClickException, match="no results"):  # it passes the check; this bag holds no results
        replanning_records((answered("re-plans", {**same, "replan_steps": 8}),), params, "abc")


def test_agreement_at_the_node_s_prefill_recomputes_each_goal_from_the_prefill_the_node_took():
    prompts = [Prompt("ex", "qa", "garage", n_hat=10, traces={a: trace(a, 0.2) for a in traces.ALPHA_GRID})]
    levels = {"qa": {"tight": 1.1, "big": 100.0}}  # the traced vanilla goal takes 1.0 + 0.2 s
    outcomes = traces.goal_outcomes(prompts, levels, TIMING, n_max=100, policies=("kill",))
    faster = {"request_id": "kill/tight/vanilla/ex", "status_name": "SUCCEEDED", "prefill_time": 0.85}
    slower = {"request_id": "kill/big/timebill/ex", "status_name": "KILLED_AT_DEADLINE", "prefill_time": 1.0}
    ignored = [{**faster, "request_id": "skip_next/tight/vanilla/ex"}, {**faster, "request_id": "kill/tight/x/ex"},
               {**faster, "request_id": "other"}, {**faster, "prefill_time": 0.0}]  # rejected before prefill
    records = [faster, slower, *ignored]
    assert traces.agreement(outcomes, records[:2])["agree_pct"] == 0.0  # traced prefill 1.0: killed / completed
    # With the node's 0.85 s prefill the traced vanilla goal ends at 1.05 s, within 1.1: both complete.
    assert traces.agreement_at_node_prefill(prompts, levels, TIMING, records, n_max=100) == {
        "goals": 2, "agree_pct": 50.0}


def test_node_pace_compares_the_node_s_prefill_and_decode_with_the_same_prompt_s_trace():
    prompts = [Prompt("ex", "qa", "garage", n_hat=10, traces={a: trace(a, 0.2) for a in traces.ALPHA_GRID})]
    done = {"request_id": "kill/big/vanilla/ex", "status_name": "SUCCEEDED", "alpha": 0.0, "prefill_time": 1.2,
            "decode_time": 0.11, "response_tokens": 5}  # the trace's first 5 tokens took 0.1 s
    killed_in_prefill = {**done, "status_name": "KILLED_AT_DEADLINE", "prefill_time": 0.5, "decode_time": 0.0,
                         "response_tokens": 0}  # no prefill time to compare: left out
    pace = traces.node_pace(prompts, [done, killed_in_prefill, {**done, "request_id": "kill/big/vanilla/other"}])
    assert pace["node_over_trace_prefill"] == pytest.approx(1.2)
    assert pace["node_over_trace_decode"] == pytest.approx(1.1)
    assert pace["pace_goals"] == {"prefill": 1, "decode": 1}


def _cells(scores: dict[str, list[float]], completion: dict[str, list[float]] | None = None) -> dict:
    """A kill table with one cell per (method, level) of the given scores."""
    completion = completion or {}
    return {"kill": {m: {f"q{i}": {"score": s, "completion": completion.get(m, [1.0] * len(v))[i]}
                         for i, s in enumerate(v)} for m, v in scores.items()}}


def test_claims_say_held_or_not_with_the_numbers_behind_them():
    fixed = {m: [0.3] * 5 for m in traces.FIXED}
    held = traces.claims(_cells({**fixed, "timebill": [0.4, 0.4, 0.4, 0.4, 0.2],
                                 "timebill_true_length": [0.42, 0.4, 0.41, 0.44, 0.2]}))
    assert held["ahead_of_every_fixed_alpha"]["held"] and held["ahead_of_every_fixed_alpha"]["levels_held"] == [
        "q0", "q1", "q2", "q3"]
    assert held["within_0.05_of_true_length"]["held"] and held["completion_within_5_pts_of_fixed_0.95"]["held"]
    # Behind a fixed alpha at two levels, 0.1 short of the true-length arm once, 10 points of completion off.
    failed = traces.claims(_cells({**fixed, "timebill": [0.4, 0.2, 0.2, 0.4, 0.4],
                                   "timebill_true_length": [0.5, 0.2, 0.2, 0.4, 0.4]},
                                  {"timebill": [1.0, 0.9, 1.0, 1.0, 1.0]}))
    assert not failed["ahead_of_every_fixed_alpha"]["held"]
    assert failed["ahead_of_every_fixed_alpha"]["per_level"]["q1"]["best_fixed_score"] == 0.3
    assert not failed["within_0.05_of_true_length"]["held"]
    assert failed["completion_within_5_pts_of_fixed_0.95"]["timebill_minus_fixed_0.95_pts"]["q1"] == pytest.approx(-10)


def test_the_published_table_shows_every_cell_with_its_error_the_claims_and_the_agreement():
    from timebill_ros.eval.publish import traces_table

    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=10,
                      traces={a: trace(a, 0.2 + 0.05 * i - 0.1 * a, prefill=1.0 + 0.1 * i) for a in traces.ALPHA_GRID})
               for i in range(4)]
    levels = traces.budget_levels(prompts, (0.1, 0.5, 0.9))
    table = traces.evaluate(traces.goal_outcomes(prompts, levels, TIMING, n_max=100))
    data = {"model": "m", "predictor": "p", "timebill_k": 5.0, "per_task": 4, "prompt_tokens": [1000, 3000],
            "alpha_grid": list(traces.ALPHA_GRID), "levels": levels, "table": table,
            "claims": {policy: traces.claims(table, policy) for policy in table},
            "decode_share_of_vanilla": traces.decode_share(prompts, levels),
            "node_agreement": {"goals": 20, "agree_pct": 95.0, "trace_complete_node_not": 1,
                               "node_complete_trace_not": 0,
                               "clear_of_deadline": {"near": 0.05, "goals": 15, "agree_pct": 100.0},
                               "at_node_prefill": {"goals": 20, "agree_pct": 97.5},
                               "node_with_itself": {"goals": 20, "agree_pct": 90.0, "again_with_traces_pct": 85.0}}}
    text = traces_table(lambda name: data)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(METHODS) and rows[0].count("(mean") == 3
    cell = table["kill"]["vanilla"]["q50"]
    assert f"{cell['score']:.3f} ({cell['score_se']:.3f})" in rows[1]
    assert "ahead of every fixed alpha: **" in text and "95.0 % of 20 goals" in text
    assert ("on the 15 goals whose traced work ends more than 5 % of the budget from the deadline they agree on "
            "100.0 %") in text
    assert "recomputed from the prefill the node took, on 97.5 % of 20" in text
    assert "the node agrees with itself on 90.0 % of 20" in text and "with the traces on 85.0 %" in text
    from timebill_ros.eval.publish import comparison_headline

    held = len(data["claims"]["kill"]["ahead_of_every_fixed_alpha"]["levels_held"])
    assert comparison_headline({**data, "machine": "cpu"})[1].startswith(f"{held} of 3 / ")
    assert comparison_headline(data)[1].endswith(" / 95.0 %") and comparison_headline(data)[3] == "-"
    # With the in-goal re-plan replayed, its three claims follow the node check in the same cell.
    replan = {"claims": {**data["claims"]["kill"], "ahead_of_every_fixed_alpha": {
        "levels_held": ["q10", "q50", "q90"], "per_level": data["claims"]["kill"]["ahead_of_every_fixed_alpha"][
            "per_level"]}}}
    with_replan = comparison_headline({**data, "in_goal_replan_kill": replan})
    assert with_replan[0].endswith("; the same with in-goal re-plan") and " / 95.0 %; 3 of 3 / " in with_replan[1]


def test_the_mechanism_says_what_eviction_cost_each_task_and_how_well_n_hat_knew_the_length():
    from timebill_ros.eval.publish import traces_mechanism_table

    def prompt(i, n_hat):
        # Vanilla answers right in 10 tokens; at alpha 0.9 the answer loops to the cap in 2x the time.
        evicted = Trace("ex", "qa", 0.9, 1000, 1.0, 0.01, tuple(0.04 * (j + 1) for j in range(20)), "loop",
                        hit_cap=True)
        return Prompt(f"ex{i}", "qa", "garage", n_hat=n_hat, traces={0.0: trace(0.0, 0.4), 0.9: evicted})

    mech = traces.mechanism([prompt(0, 4), prompt(1, 12)], predictor_k=2.0)["qa"]
    assert mech["score_by_alpha"] == {"0": 1.0, "0.9": 0.0}
    assert mech["tokens_by_alpha"] == {"0": 10, "0.9": 20} and mech["capped_share_by_alpha"]["0.9"] == 1.0
    assert mech["time_over_vanilla_by_alpha"]["0.9"] == pytest.approx((1.0 + 0.01 + 0.8) / 1.4)
    # The time split in its causes: the step is as fast as vanilla's, the answer twice as long.
    assert mech["step_over_vanilla_by_alpha"]["0.9"] == pytest.approx(1.0)
    assert mech["length_over_vanilla_by_alpha"]["0.9"] == 2.0
    assert mech["n_hat_mae"] == 4.0 and mech["true_tokens_mean"] == 10
    assert mech["k_n_hat_covers_share"] == 0.5  # 2 x 4 misses 10 tokens, 2 x 12 covers them
    text = traces_mechanism_table(lambda name: {"per_task": 2, "timebill_k": 2.0, "mechanism": {"qa": mech}},
                                  shown=("0", "0.9"))
    assert "| qa | 1.00 / 1.00x (1.00x, 1.00x) / 0 % | 0.00 / 1.29x (1.00x, 2.00x) / 100 % | 4.0 (10) | 50 % |" in text


def test_traces_measured_once_are_evaluated_again_without_loading_the_model(slow_model_dir, calibration, tmp_path,
                                                                            monkeypatch):
    import yaml

    from timebill_ros.cli import traces as cli

    params = tmp_path / "node.yaml"
    params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "model_path": str(slow_model_dir), "calibration_path": str(calibration), "predictor_path": "",
        "threads": 1, "max_new_tokens": 6, "snapkv_window": 16}}}))
    grid = (0.0, 0.25, 0.5, 0.75, 0.95)
    kwargs = dict(per_task=1, out=tmp_path / "out", alphas=grid, task_names=("qa",), prompt_tokens=None)
    first = cli.run_traces(str(params), **kwargs)
    assert (tmp_path / "out" / "traces.json").exists() and first["alpha_grid"] == list(grid)

    def no_model(*args):
        raise AssertionError("the model was loaded to evaluate traces already measured")

    monkeypatch.setattr(cli, "served_engine", no_model)
    again = cli.run_traces(str(params), **kwargs)
    assert again["table"] == first["table"] and again["measure_minutes"] == first["measure_minutes"]


def test_traces_made_with_another_predictor_get_its_n_hat_over_the_same_decodes(slow_model_dir, calibration,
                                                                                tmp_path, monkeypatch):
    import yaml

    from timebill_ros.cli import traces as cli

    def params_with(fixed_tokens: int) -> str:
        path = tmp_path / f"node{fixed_tokens}.yaml"
        path.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
            "model_path": str(slow_model_dir), "calibration_path": str(calibration), "predictor_path": "",
            "fixed_prediction_tokens": fixed_tokens, "threads": 1, "max_new_tokens": 6, "snapkv_window": 16}}}))
        return str(path)

    kwargs = dict(per_task=1, out=tmp_path / "out", alphas=(0.0, 0.25, 0.5, 0.75, 0.95), task_names=("qa", "code"),
                  prompt_tokens=None)
    first = cli.run_traces(params_with(7), **kwargs)
    measured = json.loads((tmp_path / "out" / "traces.json").read_text())
    again = cli.run_traces(params_with(20), **kwargs)
    reread = json.loads((tmp_path / "out" / "traces.json").read_text())
    assert [p["n_hat"] for p in measured] == [7, 7] and [p["n_hat"] for p in reread] == [20, 20]
    assert [p["traces"] for p in reread] == [p["traces"] for p in measured]  # no decode ran again
    assert again["predictor_digest"] == "fixed:20" != first["predictor_digest"]
    assert again["measure_minutes"] == first["measure_minutes"]

    def no_model(*args):
        raise AssertionError("the model was loaded although the traces' N_hat is this predictor's")

    monkeypatch.setattr(cli, "served_engine", no_model)
    assert cli.run_traces(params_with(20), **kwargs)["table"] == again["table"]


def test_goal_ids_round_trip_and_a_users_own_id_is_not_one():
    from timebill_ros.eval.workload import GoalId

    goal = GoalId("kill", "q50", "fixed_0.5", "test-code/3")
    assert GoalId.parse(str(goal)) == goal and goal.block == "kill/q50/fixed_0.5"
    assert GoalId.parse("arm-planner-17") is None and GoalId.parse(None) is None


def test_the_k_sweep_plans_timebill_with_each_k_on_the_same_traces():
    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=10,
                      traces={a: trace(a, 0.2 + 0.05 * i - 0.1 * a, prefill=1.0 + 0.1 * i) for a in traces.ALPHA_GRID})
               for i in range(6)]
    levels = traces.budget_levels(prompts, (0.1, 0.5, 0.9))
    outcomes = traces.goal_outcomes(prompts, levels, TIMING, n_max=100, predictor_k=2.0)
    table = traces.evaluate(outcomes)
    sweep = traces.k_sweep(prompts, levels, TIMING, table, n_max=100, ks=(1.0, 2.0, 8.0))
    assert set(sweep) == {"1", "2", "8"}
    assert sweep["2"]["cells"] == table["kill"]["timebill"]  # the node's k: the table's own TimeBill
    for level in levels["qa"]:  # a larger k plans for a longer answer: never less eviction
        alphas = [sweep[k]["cells"][level]["alpha_mean"] for k in ("1", "2", "8")]
        assert alphas == sorted(alphas)
    # The claims are judged with each k's TimeBill against the same fixed alphas.
    claims = sweep["8"]["claims"]["ahead_of_every_fixed_alpha"]["per_level"]
    assert all(claims[lv]["timebill"] == sweep["8"]["cells"][lv]["score"] for lv in claims)
    from timebill_ros.eval.publish import traces_k_sweep_table

    report = {"k_sweep": sweep, "per_task": 6, "timebill_k": 2.0}
    table = traces_k_sweep_table(lambda name: report)
    assert "| 2 (the node's) |" in table and table.count("\n| ") == 3  # a row per k
    # The k the validation prompts' own run scores best with is marked on the test prompts' sweep.
    validation = {**report, "split": "validation", "best_k": traces.best_k(sweep)}
    table = traces_k_sweep_table(lambda name: validation if "validation" in name else report)
    assert f"| {validation['best_k']['k']:g} (" in table and "best on validation" in table
    assert "its predictor's" in table
    assert "the node's k parameter" in traces_k_sweep_table(lambda name: {**report, "timebill_k_from": "parameter"})


def test_the_hindsight_ceiling_takes_each_prompt_s_best_alpha_that_fits_and_no_method_beats_it():
    from timebill_ros.eval.publish import traces_table

    def prompt(i):
        # Vanilla answers right but slowly; eviction is faster and, above 0.5, wrong.
        runs = {a: trace(a, 0.4 - 0.3 * a + 0.02 * i, text="garage" if a <= 0.5 else "wrong")
                for a in traces.ALPHA_GRID}
        return Prompt(f"ex{i}", "qa", "garage", n_hat=10, traces=runs)

    prompts = [prompt(i) for i in range(4)]
    levels = {"qa": {"q10": 1.26, "q50": 1.30, "q90": 10.0}}
    ceiling = traces.hindsight(prompts, levels)
    # q10: 1.26 s fits alpha 0.5 (1 + 0.005 + 0.25 + 0.02 i) for the first prompt only, alpha 0.95's wrong
    # answer for the rest: the ceiling counts the first and says every prompt had some alpha that fit.
    assert ceiling["q10"]["score"] == 0.25 and ceiling["q10"]["completion"] == 1.0
    assert ceiling["q90"]["score"] == 1.0 and ceiling["q90"]["alpha_mean"] == 0.0  # ties go to less eviction
    table = traces.evaluate(traces.goal_outcomes(prompts, levels, TIMING, n_max=100, policies=("kill",)))
    for method, cells in table["kill"].items():
        assert all(cells[lv]["score"] <= ceiling[lv]["score"] + 1e-12 for lv in cells), method
    data = {"model": "m", "predictor": "p", "timebill_k": 5.0, "per_task": 4, "prompt_tokens": [1000, 3000],
            "alpha_grid": list(traces.ALPHA_GRID), "levels": levels, "table": table,
            "claims": {"kill": traces.claims(table)}, "decode_share_of_vanilla": traces.decode_share(prompts, levels),
            "hindsight_kill": ceiling}
    text = traces_table(lambda name: data)
    assert "| *hindsight: each prompt's best alpha (ceiling)* | 0.250 (0.250) / 100 % / " in text
    best = max(table["kill"][m]["q10"]["score"] for m in traces.FIXED)
    assert f"(hindsight minus the best fixed alpha): q10 {0.25 - best:+.3f}" in text


def test_plan_losses_sort_each_goal_against_the_least_eviction_that_would_have_finished():
    from timebill_ros.eval.publish import traces_plan_loss_table

    # Every alpha answers right; vanilla takes 1.4 s, alpha 0.95 1.12 s (1 s prefill).
    prompts = [Prompt("ex0", "qa", "garage", n_hat=10, traces={a: trace(a, 0.4 - 0.3 * a) for a in traces.ALPHA_GRID})]
    generous, impossible = {"qa": {"q50": 100.0}}, {"qa": {"q50": 0.5}}
    def losses_of(prompts, levels, n_max=100, **kw):
        return traces.plan_losses(prompts, levels, traces.goal_outcomes(prompts, levels, TIMING, n_max=n_max,
                                                                          policies=("kill",), **kw))

    losses = losses_of(prompts, generous)
    assert set(losses) == {"timebill", "timebill_true_length"}
    assert losses["timebill"]["as little as needed"] == {"goals": 1, "score_lost": 0.0}
    assert losses_of(prompts, impossible)["timebill"]["no alpha fits"]["goals"] == 1
    # A budget vanilla meets with 0.05 s to spare: an N_hat of 200 (k 1) plans eviction it did not need,
    # which here costs no score; an N_hat of 1 plans none.
    tight = {"qa": {"q50": 1.45}}
    over = losses_of([replace(prompts[0], n_hat=200)], tight, n_max=300, predictor_k=1.0)
    assert over["timebill"]["more than needed"] == {"goals": 1, "score_lost": 0.0}
    under = losses_of([replace(prompts[0], n_hat=1)], {"qa": {"q50": 1.2}}, n_max=300, predictor_k=1.0)
    assert under["timebill"]["killed, another alpha fits"] == {"goals": 1, "score_lost": 1.0}
    text = traces_plan_loss_table(lambda name: {"plan_losses_kill": under})
    assert "| timebill | 0 / +0.000 | 0 / +0.000 | 0 / +0.000 | 1 / +1.000 | +1.000 |" in text


def test_traces_plan_with_the_nodes_k_parameter_over_its_predictors_as_the_node_does():
    from dataclasses import replace as with_

    from timebill_ros.cli.traces import planning_k
    from timebill_ros.core.predictor import PredictorSpec, predictor_folder
    from timebill_ros.node.params import NodeParams

    probe = with_(NodeParams(), predictor_path="builtin:smollm2-tasks-v9-probe")
    stored = PredictorSpec.load(predictor_folder(probe.predictor_path)).pessimism_k
    assert planning_k(probe) == stored > 1.0
    assert planning_k(with_(probe, k=stored + 1.0)) == stored + 1.0
    assert planning_k(with_(NodeParams(), predictor_path="")) == 0.0  # the planner's PAPER_K then


def test_best_k_takes_the_highest_mean_score_over_the_levels_and_the_larger_k_on_a_tie():
    def row(*scores):
        return {"cells": {f"q{i}": {"score": s} for i, s in enumerate(scores)}}

    sweep = {"1": row(0.2, 0.5), "1.5": row(0.3, 0.3), "2": row(0.1, 0.6), "3": row(0.0, 0.1)}
    best = traces.best_k(sweep)
    assert best["k"] == 2.0 and best["mean_score"]["1"] == pytest.approx(0.35)  # 1 and 2 tie at 0.35
    assert traces.best_k({"1": row(0.4, 0.4), "2": row(0.1, 0.6)})["k"] == 1.0


def test_make_eval_plans_with_the_k_validation_chose_for_this_very_target_and_predictor(tmp_path, monkeypatch):
    from dataclasses import replace as with_

    from timebill_ros.cli.traces import k_from, validation_k
    from timebill_ros.core.predictor import predictor_digest
    from timebill_ros.eval.publish import k_origin
    from timebill_ros.node.params import NodeParams

    node = with_(NodeParams(), model_path="builtin:smollm2-tasks-v9", predictor_path="builtin:smollm2-tasks-v9-probe")
    digest = predictor_digest(node.predictor_path)
    made = {"split": "validation", "model": node.model_path, "predictor_digest": digest, "best_k": {"k": 0.7}}

    def report(name, **changes):
        path = tmp_path / name
        path.write_text(json.dumps({**made, **changes}))
        return path

    mine, published = report("mine.json"), report("published.json", best_k={"k": 0.9})
    assert validation_k(node.model_path, digest, (mine, published)) == (0.7, mine)
    # A choice made for a retrained predictor, another target or on the test prompts is not this one's.
    for stale in (report("old.json", predictor_digest="0" * 12), report("other.json", model="builtin:toy"),
                  report("test.json", split="test")):
        assert validation_k(node.model_path, digest, (stale, published)) == (0.9, published)
    assert validation_k(node.model_path, digest, (tmp_path / "absent.json",)) is None
    # Where a report says its k came from, and how the published pages name it.
    monkeypatch.setattr("timebill_ros.cli.traces.VALIDATION_REPORTS", (mine,))
    assert k_from(node, digest) == "predictor"
    assert k_from(with_(node, k=0.7), digest) == "validation" and k_from(with_(node, k=1.0), digest) == "parameter"
    assert "best on the validation" in k_origin({"timebill_k_from": "validation"})


def test_paired_gaps_take_timebill_minus_the_level_s_best_fixed_alpha_goal_by_goal():
    from timebill_ros.eval.workload import GoalId

    def outcomes(method, scores):
        return {str(GoalId("kill", "q50", method, f"ex{i}")): traces.Outcome("SUCCEEDED", s, 0.0, 1.0)
                for i, s in enumerate(scores)}

    # Prompts differ in difficulty (0.9 / 0.1 / 0.5); TimeBill trails vanilla by 0.1 on each.
    goals = {**outcomes("vanilla", [0.9, 0.1, 0.5]), **outcomes("fixed_0.5", [0.5, 0.1, 0.2]),
             **outcomes("timebill", [0.8, 0.0, 0.4])}
    table = traces.evaluate(goals)
    gap = traces.paired_gaps(goals, table)["q50"]
    assert gap["best_fixed"] == "vanilla" and gap["difference"] == pytest.approx(-0.1)
    assert gap["paired_se"] == pytest.approx(0.0, abs=1e-12)  # the same 0.1 on every prompt: no doubt left
    assert table["kill"]["timebill"]["q50"]["score_se"] > 0.2  # where each arm's own error sees the prompts' spread
    assert gap["decided"] and gap["goals_to_decide"] == 3  # no spread: the 3 goals decide it


def test_completion_gaps_take_timebill_minus_fixed_0_95_goal_by_goal_in_points():
    from timebill_ros.eval.workload import GoalId

    def outcomes(method, statuses):
        return {str(GoalId("kill", "q50", method, f"ex{i}")): traces.Outcome(s, 0.5, 0.0, 1.0)
                for i, s in enumerate(statuses)}

    # TimeBill is killed on one goal of four that fixed 0.95 completes: 25 points, one goal's worth.
    goals = {**outcomes("fixed_0.95", ["SUCCEEDED"] * 4),
             **outcomes("timebill", ["SUCCEEDED", "KILLED_AT_DEADLINE", "SUCCEEDED", "SUCCEEDED"])}
    gap = traces.completion_gaps(goals, traces.evaluate(goals))["q50"]
    assert gap["difference"] == pytest.approx(-25.0) and gap["paired_se"] == pytest.approx(25.0)  # stdev 50 / 2
    assert not gap["decided"] and gap["goals_to_decide"] == 16  # one error from 0: four times the goals


def test_a_paired_gap_is_decided_at_two_standard_errors_and_says_how_many_goals_the_rest_would_need():
    assert traces.goals_to_decide(0.03, 0.03, 48) == 4 * 48  # one SE from 0: four times the goals for two
    assert traces.goals_to_decide(0.1, 0.01, 48) == 48  # already decided: never fewer than measured
    assert traces.goals_to_decide(0.0, 0.01, 48) is None
    from timebill_ros.eval.publish import _decided

    paired = {"q10": {"difference": -0.1, "paired_se": 0.02, "decided": True, "goals_to_decide": 48},
              "q50": {"difference": 0.01, "paired_se": 0.02, "decided": False, "goals_to_decide": 768}}
    assert _decided(paired) == ("; decided (two paired standard errors from 0) at q10; goals a level the rest "
                                "would need at this spread: q50 ~768")
    assert _decided({"q10": {"difference": 0.0, "paired_se": 0.0}}) == ""  # files from before it


def test_replanning_at_the_traces_own_pace_plans_less_eviction_when_the_host_ran_faster_than_calibrated():
    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=10,
                      traces={a: trace(a, 0.2 + 0.05 * i - 0.1 * a, prefill=1.0 + 0.1 * i) for a in traces.ALPHA_GRID})
               for i in range(6)]
    levels = traces.budget_levels(prompts, (0.1, 0.5, 0.9))
    table = traces.evaluate(traces.goal_outcomes(prompts, levels, TIMING, n_max=100, predictor_k=2.0))
    assert traces.at_traced_pace(prompts, levels, TIMING, table, {}, k=2.0, n_max=100) is None  # no fit: no pace
    same = traces.at_traced_pace(prompts, levels, TIMING, table, {"decode_over_calibration": 1.0}, k=2.0, n_max=100)
    assert same["cells"] == table["kill"]["timebill"]  # at the calibrated pace: the table's own TimeBill
    faster = traces.at_traced_pace(prompts, levels, TIMING, table, {"decode_over_calibration": 0.5}, k=2.0, n_max=100)
    assert faster["decode_factor"] == 0.5
    assert all(faster["cells"][lv]["alpha_mean"] <= same["cells"][lv]["alpha_mean"] for lv in levels["qa"])
    assert sum(faster["cells"][lv]["alpha_mean"] for lv in levels["qa"]) < sum(
        same["cells"][lv]["alpha_mean"] for lv in levels["qa"])
    from timebill_ros.eval.publish import _at_pace

    assert _at_pace({"at_traced_pace_kill": faster}).startswith(
        " Replanned as if calibrated at the pace the traces ran (the plan's decode x0.50")
    assert _at_pace({}) == ""


def test_the_work_a_killed_goal_did_is_what_its_online_timing_observes():
    run = trace(0.0, 1.0, tokens=10, prefill=1.0)  # tokens at 1.1, 1.2, ... 2.0 s from the start
    prefill, decode = traces.phase_work(run, TIMING, budget=1.55)
    assert prefill.complete and prefill.measured == 1.0 and prefill.predicted == pytest.approx(1.0)
    # Steps 2-5 ended by the deadline (the first token comes out of prefill): 4 steps, 0.4 s.
    assert decode.measured == pytest.approx(0.4) and decode.predicted == pytest.approx(TIMING.decode(1000, 0.0, 5))
    in_prefill, none = traces.phase_work(run, TIMING, budget=0.5)
    assert not in_prefill.complete and in_prefill.spent == 0.5 and none.measured == 0.0


def test_online_timing_plans_less_eviction_once_goals_show_a_host_faster_than_calibrated():
    from timebill_ros.core.online import Margins, OnlineTiming

    # Decodes at about half the fit's time: the static plan evicts for what never comes.
    prompts = [Prompt(f"ex{i}", "qa", "garage", n_hat=40,
                      traces={a: trace(a, 0.2 - 0.1 * a, tokens=40, prefill=1.0 + 0.01 * i) for a in traces.ALPHA_GRID})
               for i in range(8)]
    levels = traces.budget_levels(prompts, (0.1, 0.5, 0.9))
    table = traces.evaluate(traces.goal_outcomes(prompts, levels, TIMING, n_max=100, predictor_k=1.0))
    online = traces.with_online_timing(prompts, levels, lambda: OnlineTiming(TIMING, Margins(), window=2), table,
                                       k=1.0, n_max=100)
    static = table["kill"]["timebill"]
    assert all(online["cells"][lv]["alpha_mean"] <= static[lv]["alpha_mean"] for lv in static)
    assert sum(c["alpha_mean"] for c in online["cells"].values()) < sum(c["alpha_mean"] for c in static.values())
    assert online["claims"]["ahead_of_every_fixed_alpha"]["per_level"]["q50"]["timebill"] == online["cells"]["q50"][
        "score"]
    # Off, it plans with the prior: the static plan's own cells.
    prior = traces.with_online_timing(prompts, levels, lambda: OnlineTiming(TIMING, Margins(), window=2, enabled=False),
                                      table, k=1.0, n_max=100)
    assert prior["cells"] == static


def _long_answer(first_step=0.011, later_step=None, at=0, keep=0):
    """A 40-token answer on a 1,000-token prompt after a 1 s prefill, each step FIRST_STEP (10 us
    a cached entry, as TIMING says), LATER_STEP from token AT on: the run that evicted again there."""
    steps = [first_step if i < at or later_step is None else later_step for i in range(40)]
    token_s = tuple(sum(steps[1:i + 1]) for i in range(40))
    return Trace("ex", "qa", 0.0, 1000, 1.0, 0.0, token_s, "garage", again_at=at, keep=keep)


def test_the_replay_re_plans_a_long_answer_where_the_node_would_and_continues_on_the_run_measured_there():
    first = _long_answer()
    # N_W 10 at the planned pace: past it the worst case is as many tokens again as decoded,
    # and at 14 tokens those 14 steps (0.154 s) no longer fit the 0.146 s left of 1.3 s.
    point = traces.replan_point(first, 1.3, TIMING, n_w=10, n_max=384, steps=8, kept=1000, floor=50)
    assert point is not None and point[0] == 14 and 50 <= point[1] < 1000
    # A budget with time for the whole answer: past N_W too, nothing to re-plan.
    assert traces.replan_point(first, 2.0, TIMING, n_w=10, n_max=384, steps=8, kept=1000, floor=50) is None
    for off in (0, 99):  # re-plans off (the paper), or a window longer than the answer
        assert traces.replan_point(first, 1.3, TIMING, n_w=10, n_max=384, steps=off, kept=1000, floor=50) is None
    again = _long_answer(later_step=0.003, at=14, keep=point[1])
    replanned = traces.after_second_eviction(first, replace(again, token_s=tuple(t + 0.05 for t in again.token_s)))
    assert replanned.token_s[:14] == first.token_s[:14]  # its own clock until the re-plan, the run's after
    assert replanned.token_s[-1] == pytest.approx(first.token_s[13] + 26 * 0.003)
    assert replanned.alpha == pytest.approx(1.0 - point[1] / 1000)
    assert traces.outcome(first, "garage", 1.3, "kill").status == "KILLED_AT_DEADLINE"
    assert traces.outcome(replanned, "garage", 1.3, "kill").completed


def test_in_goal_replan_cells_use_the_measured_second_evictions_and_name_one_missing():
    base = Prompt("ex", "qa", "garage", n_hat=10,
                  traces={a: replace(_long_answer(), alpha=a) for a in traces.ALPHA_GRID})
    levels = {"qa": {"q50": 1.3}}
    table = traces.evaluate(traces.goal_outcomes([base], levels, TIMING, n_max=384, policies=("kill",)))
    args = dict(k=1.0, n_max=384, min_kept=16, steps=8)
    wanted = traces.second_evictions_wanted([base], levels, TIMING, **args)
    [(alpha, at, keep)] = wanted["ex"]
    assert alpha == 0.0 and at == 14
    with pytest.raises(KeyError, match="no run measured"):
        traces.with_in_goal_replan([base], levels, TIMING, table, **args)
    p = replace(base, second_evictions=(_long_answer(later_step=0.003, at=at, keep=keep),))
    assert traces.from_json(traces.to_json([p])) == [p]
    r = traces.with_in_goal_replan([p], levels, TIMING, table, **args)
    assert (r["goals"], r["replanned"], r["replanned_completed"]) == (1, 1, 1)
    assert r["cells"]["q50"]["completion"] == 1.0 and table["kill"]["timebill"]["q50"]["completion"] == 0.0
    # Against a node replay with its re-plan on, the re-planned goal is TimeBill's (the bags' method name).
    outcomes = traces.goal_outcomes([p], levels, TIMING, n_max=384, policies=("kill",), predictor_k=1.0)
    records = [{"request_id": "kill/q50/timebill/ex", "status_name": "SUCCEEDED"},
               {"request_id": "kill/q50/vanilla/ex", "status_name": "KILLED_AT_DEADLINE"}]
    checked = traces.with_in_goal_replan([p], levels, TIMING, table, outcomes=outcomes, node_records=records, **args)
    assert checked["node_agreement"]["goals"] == 2 and checked["node_agreement"]["agree_pct"] == 100.0
    # The node's record says it did not re-plan the goal the replay re-planned.
    assert checked["node_agreement"]["replans_agree_pct"] == 0.0 and checked["node_agreement"]["replanned_by_node"] == 0
    assert traces.agreement(outcomes, records)["agree_pct"] == 50.0  # the single plan was killed
    from timebill_ros.eval.publish import _at_pace

    assert _at_pace({"in_goal_replan_kill": r}).startswith(
        " With the node's in-goal re-plan (replan_steps 8, off in the compared node as in the paper; 1 of 1 goals "
        "evicted again, from runs measured to do so at 1.00x the traces' pace, 1 of them then complete;")


def test_a_run_that_evicts_again_decodes_the_same_tokens_until_then(tiny):
    from timebill_ros.core.engine import Engine, EngineConfig, EvictsAgainAt
    from timebill_ros.core.jobs import CancelToken, Request
    from timebill_ros.core.predictor import FixedLengthPredictor

    engine = Engine(tiny, TIMING, FixedLengthPredictor(7), EngineConfig(snapkv_window=16))
    request = Request([(7 * i) % 250 for i in range(300)], budget=1e9, max_new_tokens=12, fixed_alpha=0.5,
                      ignore_eos=True)
    once = engine.run(request, CancelToken())
    again = engine.run_job(EvictsAgainAt(engine, request, 5, 40))
    engine.close()
    assert once.kept_prompt_tokens == 150 and (again.kept_prompt_tokens, again.replans) == (40, 1)
    assert again.token_ids[:5] == once.token_ids[:5] and len(again.timings.token_s) == 12


def test_second_evictions_are_measured_once_and_kept_with_the_traces(tiny):
    from timebill_ros.core.engine import Engine, EngineConfig
    from timebill_ros.core.predictor import FixedLengthPredictor
    from timebill_ros.eval import tasks

    engine = Engine(tiny, TIMING, FixedLengthPredictor(7), EngineConfig(snapkv_window=16))
    examples = [e for e in tasks.load("test") if e.task == "qa"][:1]
    [p] = traces.measure(engine, examples, alphas=(0.0, 0.5), max_new_tokens=8)
    at = len(p.traces[0.5].token_s) - 1  # a re-plan comes after a step, so before the last token
    kept = p.traces[0.5].prompt_tokens // 4
    wanted = {p.example_id: {(0.5, at, kept)}}
    [measured] = traces.measure_second_evictions(engine, examples, [p], wanted, max_new_tokens=8)
    [run] = measured.second_evictions
    assert (run.alpha, run.again_at, run.keep) == (0.5, at, kept) and len(run.token_s) == len(p.traces[0.5].token_s)
    assert measured.second_eviction(0.5, at, kept) == replace(run, prefill_s=measured.prefill_s)
    # Held runs are not measured again.
    assert traces.measure_second_evictions(engine, examples, [measured], wanted, max_new_tokens=8) == [measured]
    engine.close()
