"""Engine benchmarks (issue: the time-budgeted engine), one JSON each:

- ete_mape:       time-model error on fresh, held-out lengths (prefill, one decode step)
- wcet_coverage:  runs forced to N_W: share whose end-to-end time stays under the first
                  plan's WCET and under the re-plan's, and the mean slack; static calibration
                  and the node's online timing side by side
- decode_overhead: time per token of our engine at alpha = 0 against model.generate, both
                   forced to the same token count on the same prompts through the same
                   forward; the default (lean step) engine beside them; decode step vs alpha
- eviction_share: eviction time as a share of prefill time, per prompt length
- prefill_overhead: the engine's chunked, hooked prefill against one plain forward, per
                  chunk size, and at the default chunk with transformers' masked attention
- planning_time:  time of one alpha* plan
"""
from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import replace
from functools import partial

import torch
from common import calibrated_engine, float_forward_engine, longest, parser, random_ids, summary, write

from timebill_ros.core.calibration import profile_phases, spread_lengths
from timebill_ros.core.engine import Engine
from timebill_ros.core.eviction import evict
from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.kv_cache import new_cache
from timebill_ros.core.online import online_timing_from
from timebill_ros.core.planner import plan
from timebill_ros.core.timing import mape
from timebill_ros.node.params import NodeParams


def ete_mape(engine, cal, quick: bool, limit: int, rounds: int = 3) -> dict:
    """Prefill and decode-step error at lengths the fit never saw (offset from the grid).

    Sampled exactly as the calibration samples (`profile_phases`: each round visits every
    length once in a shuffled order, one prefill then 9 decode steps, medians compared), so
    a slow spell of this shared machine lands on one sample of many lengths, not on all of one."""
    # Short prompts too (under 100 tokens, where an absolute fit's ~0 intercept was 2x off).
    lengths = sorted({23, 47, 71, 95} | {n + 7 for n in spread_lengths(40, limit - 64, 6 if quick else 12)})
    profile = profile_phases(engine, lengths, rounds, decode_steps=9)
    prefill, decode = profile.prefill, profile.decode
    pre_meas, dec_meas = [t for _, t in prefill], [t for _, t in decode]
    pre_pred = [cal.timing.prefill(n) for n in lengths]
    dec_pred = [cal.timing.decode_step(n + 4) for n in lengths]
    short = [i for i, n in enumerate(lengths) if n < 100]
    return {"lengths": lengths, "rounds": rounds, "prefill_mape_pct": mape(pre_pred, pre_meas),
            "decode_step_mape_pct": mape(dec_pred, dec_meas),
            "prefill_mape_under_100_tokens_pct": mape([pre_pred[i] for i in short], [pre_meas[i] for i in short]),
            "calibration_prefill_mape_pct": cal.prefill_mape, "calibration_decode_mape_pct": cal.decode_mape,
            "prefill_measured_s": pre_meas, "prefill_predicted_s": pre_pred,
            "decode_step_measured_s": dec_meas, "decode_step_predicted_s": dec_pred}


def wcet_coverage(engine, cal, quick: bool, limit: int, k: float = 5.0) -> dict:
    """Runs forced to their worst-case length N_W (EOS ignored) under budgets that kill nothing:
    how often does the measured end-to-end time stay under the WCET of the FIRST plan (made
    beside prefill with the predicted prefill time) and of the re-plan (made after prefill
    with the real time spent)? Early stops would pass trivially, so there are none.

    Two arms on the same prompts, interleaved: 'static' plans with the stored calibration
    alone (the paper), 'online' as the node does by default (online_timing: the calibration
    scaled by the slow-down its own earlier goals measured)."""
    rng = random.Random(0)
    vocab = engine.loaded.model.config.vocab_size
    online = online_timing_from(cal, window=NodeParams.online_window, enabled=True,
                                estimator=NodeParams.timing_estimator, miss_rate=NodeParams.timing_miss_rate)
    arms: dict[str, list[dict]] = {"static": [], "online": []}
    for i in range(10 if quick else 32):
        n = int(2 ** rng.uniform(7, math.log2(limit - 300)))
        n_w = rng.choice([32, 64, 128, 256])
        order = ("static", "online") if i % 2 == 0 else ("online", "static")
        for arm in order:
            engine.online = online if arm == "online" else None
            req = Request(random_ids(n, vocab, seed=1000 + i), budget=1e6, max_new_tokens=n_w, k=k, ignore_eos=True)
            r = engine.run(req, CancelToken())
            assert len(r.token_ids) == r.plan.worst_case_tokens == n_w, "a coverage run must reach N_W"
            arms[arm].append({"n_x": n, "tokens": len(r.token_ids), "e2e_s": r.timings.total,
                              "first_plan_wcet_s": r.first_plan.wcet, "replan_wcet_s": r.plan.wcet})
    engine.online = None
    out = {"k": k, "runs_per_arm": len(arms["static"]), "forced_to_n_w": True,
           "online_window": NodeParams.online_window}
    for arm, runs in arms.items():
        out[arm] = {plan_name: _coverage(runs, plan_name) for plan_name in ("first_plan", "replan")}
        out[arm]["samples"] = runs
    return out


def _coverage(runs: list[dict], plan_name: str) -> dict:
    """Share of RUNS inside the plan's WCET, and the slack (WCET - time) / WCET."""
    slack = [(r[f"{plan_name}_wcet_s"] - r["e2e_s"]) / r[f"{plan_name}_wcet_s"] for r in runs]
    return {"coverage": sum(s >= 0 for s in slack) / len(runs),
            "mean_slack_share": statistics.fmean(slack), "min_slack_share": min(slack)}


def decode_overhead(engine, quick: bool, limit: int) -> dict:
    """Time per generated token of our engine's loop (alpha = 0) against model.generate, both
    forced to exactly the same number of tokens on the same prompts and computing the same
    thing: transformers' forward on the model's own weights over the same in-place cache
    (quantization ''); the default engine (its lean step) on the same prompts beside
    them; and the default engine's decode step at alpha = 0 / 0.5 / 0.9 for prompts of 512
    tokens up to the calibrated length."""
    vocab, n_new = engine.loaded.model.config.vocab_size, 32 if quick else 96
    plain = float_forward_engine(engine)
    model = plain.loaded.model
    ours, ref, lean, tokens = [], [], [], []
    for seed in range(3 if quick else 6):
        ids = random_ids(512, vocab, seed)
        # A request per run: its total counts from its acceptance (construction).
        request = partial(Request, ids, budget=1e6, max_new_tokens=n_new, fixed_alpha=0.0, ignore_eos=True)
        r = plain.run(request(), CancelToken())
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0,
                                 past_key_values=new_cache(model.config))
        plain.loaded.synchronize()
        t_ref = time.perf_counter() - t0
        r_lean = engine.run(request(), CancelToken())
        n_ref = out.shape[1] - len(ids)
        tokens.append({"engine": len(r.token_ids), "generate": n_ref, "default_engine": len(r_lean.token_ids)})
        ours.append(r.timings.total / len(r.token_ids))
        ref.append(t_ref / n_ref)
        lean.append(r_lean.timings.total / len(r_lean.token_ids))
    plain.close()
    assert all(t["engine"] == t["generate"] == t["default_engine"] == n_new for t in tokens), tokens
    by_length = {}
    for n in sorted({min(n, limit - n_new - 8) for n in (512, 1024, 2048, 4096)}):
        ids = random_ids(n, vocab, 99)
        speed = {}
        for alpha in (0.0, 0.5, 0.9):
            r = engine.run(Request(ids, budget=1e6, max_new_tokens=n_new, fixed_alpha=alpha, ignore_eos=True),
                           CancelToken())
            speed[str(alpha)] = r.timings.decode / (len(r.token_ids) - 1)
        by_length[str(n)] = speed
    return {"prompt_tokens": 512, "new_tokens": n_new, "token_counts": tokens,
            "engine_s_per_token": summary(ours), "generate_s_per_token": summary(ref),
            "engine_over_generate_pct": (statistics.median(ours) / statistics.median(ref) - 1) * 100,
            "compared_dtype": plain.loaded.dtype, "default_dtype": engine.loaded.dtype,
            "default_engine_s_per_token": summary(lean),
            "decode_step_s_by_prompt_and_alpha": by_length}


CANCEL_CHECKS = "before every attention block and MLP, and between the halves of a later chunk's attention"


def prefill_overhead(engine, quick: bool, limit: int, chunks: tuple[int, ...] = (512, 1024, 2048)) -> dict:
    """The engine's prefill (chunked, SnapKV scoring, cancel checks before every attention
    block and MLP) against one plain unchunked forward without hooks, per chunk size, all
    interleaved so a slow spell of the machine lands on every arm."""
    loaded, vocab = engine.loaded, engine.loaded.model.config.vocab_size
    n = min(2048, limit - 8)
    ids = random_ids(n, vocab, 5)
    default = min(engine.config.prefill_chunk, n)
    chunks = tuple(sorted({min(c, n) for c in chunks} | {default}))
    ours: dict[int, list[float]] = {c: [] for c in chunks}
    masked, bare = [], []  # masked: the default chunk with transformers' own (masked) SDPA
    engine.close()  # its hooks would fire in the bare forward too
    for _ in range(2 if quick else 8):
        for chunk in chunks:
            ours[chunk].append(_timed_prefill(engine, chunk, ids))
        implementation = loaded.model.config._attn_implementation
        loaded.model.set_attn_implementation("sdpa")
        masked.append(_timed_prefill(engine, default, ids))
        loaded.model.set_attn_implementation(implementation)
        with torch.inference_mode():
            t0 = time.perf_counter()
            loaded.model(input_ids=torch.tensor([ids], device=loaded.device), use_cache=True, logits_to_keep=1)
            loaded.synchronize()
            bare.append(time.perf_counter() - t0)
    # The fastest of each arm: a shared machine only ever adds time, so the minimum is the
    # arm's own cost; medians moved by +-10 % between runs here.
    def overhead(times: list[float]) -> float:
        return (min(times) / min(bare) - 1) * 100

    return {"prompt_tokens": n, "prefill_chunk": default, "cancel_checks": CANCEL_CHECKS, "statistic": "min",
            "engine_s": summary(ours[default]), "one_forward_s": summary(bare), "overhead_pct": overhead(ours[default]),
            "by_chunk": {str(c): {"engine_s": summary(ours[c]), "overhead_pct": overhead(ours[c])} for c in chunks},
            "masked_attention": {"engine_s": summary(masked), "overhead_pct": overhead(masked)}}


def _timed_prefill(engine: Engine, chunk: int, ids: list[int]) -> float:
    """Seconds of one prefill of IDS by a fresh engine on the same model with CHUNK."""
    timed = Engine(engine.loaded, engine.timing, engine.predictor, replace(engine.config, prefill_chunk=chunk))
    t0 = time.perf_counter()
    timed.prefill(ids, CancelToken())
    seconds = time.perf_counter() - t0
    timed.close()
    return seconds


def eviction_share(engine, quick: bool, limit: int) -> dict:
    """Eviction at alpha 0.5 (top-k + gather on every layer) against the prefill it follows,
    per prompt length."""
    vocab = engine.loaded.model.config.vocab_size
    rows = []
    for n in sorted({256, 1024, min(2048, limit - 8)}):
        ids = random_ids(n, vocab, n)
        shares, evict_s = [], []
        for _ in range(2 if quick else 5):
            t0 = time.perf_counter()
            cache, _ = engine.prefill(ids)
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            evict(cache, engine.scorer.scores, 0.5, engine.press.window)
            evict_s.append(time.perf_counter() - t0)
            shares.append(evict_s[-1] / t_pre)
        rows.append({"n_x": n, "evict_s": statistics.median(evict_s),
                     "evict_share_of_prefill": statistics.median(shares)})
    return {"alpha": 0.5, "rows": rows}


def planning_time(engine) -> dict:
    """One plan() call, many times."""
    times = []
    for i in range(20000):
        t0 = time.perf_counter()
        plan(engine.timing, n_x=1000 + i % 1000, n_hat=64, budget=5.0, t_fixed=0.5, k=5.0, alpha_max=0.95,
             n_max=512, min_kept=32)
        times.append(time.perf_counter() - t0)
    return {"plan_s": summary(times)}


# name -> run(engine, calibration, args, longest prompt + answer); run in this order
# (prefill_overhead last: it closes the engine).
RUNS = {"ete_mape": lambda engine, cal, args, limit: ete_mape(engine, cal, args.quick, limit),
        "wcet_coverage": lambda engine, cal, args, limit: wcet_coverage(engine, cal, args.quick, limit),
        "decode_overhead": lambda engine, cal, args, limit: decode_overhead(engine, args.quick, limit),
        "eviction_share": lambda engine, cal, args, limit: eviction_share(engine, args.quick, limit),
        "planning_time": lambda engine, cal, args, limit: planning_time(engine),
        "prefill_overhead": lambda engine, cal, args, limit: prefill_overhead(engine, args.quick, limit)}
BENCHMARKS = tuple(RUNS)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of: " + ", ".join(BENCHMARKS))
    args = p.parse_args()
    only = args.only.split(",")
    if unknown := set(only) - set(BENCHMARKS):
        p.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(BENCHMARKS)}")
    engine, cal = calibrated_engine(args)
    limit = longest(engine, args)
    common = {"model": engine.loaded.name, "quick": args.quick, "dtype": engine.loaded.dtype}
    for name, run in RUNS.items():
        if name in only:
            write(name, {**common, **run(engine, cal, args, limit)})


if __name__ == "__main__":
    main()
