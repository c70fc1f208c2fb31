"""Engine benchmarks (issue: the time-budgeted engine), one JSON each:

- ete_mape:       time-model error on fresh, held-out lengths (prefill, one decode step)
- wcet_coverage:  share of completed runs with measured end-to-end <= WCET, and the slack
- decode_overhead: our decode loop at alpha = 0 against model.generate on the same prompts,
                   and the decode speed-up at alpha = 0.5 and 0.9 on long prompts
- eviction_share: eviction time as a share of prefill time
- planning_time:  time of one alpha* plan
"""
from __future__ import annotations

import random
import statistics
import time

import torch
from common import calibrated_engine, parser, random_ids, summary, write

from timebill_ros.core.calibration import spread_lengths
from timebill_ros.core.eviction import evict
from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.planner import plan
from timebill_ros.core.timing import mape


def ete_mape(engine, cal, quick: bool) -> dict:
    """Prefill and decode-step error at lengths the fit never saw (offset from the grid)."""
    limit = engine.loaded.context_limit
    lengths = [n + 7 for n in spread_lengths(40, limit - 64, 6 if quick else 12)]
    vocab = engine.loaded.model.config.vocab_size
    pre_meas, pre_pred, dec_meas, dec_pred = [], [], [], []
    for n in lengths:
        ids = random_ids(n, vocab, seed=n)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            cache, logits = engine.prefill(ids)
            times.append(time.perf_counter() - t0)
        pre_meas.append(statistics.median(times))
        pre_pred.append(cal.timing.prefill(n))
        steps = []
        token = int(logits.argmax(-1))
        for i in range(9):
            t0 = time.perf_counter()
            token = int(engine.decode_step(cache, token, n + i).argmax(-1))
            steps.append(time.perf_counter() - t0)
        dec_meas.append(statistics.median(steps))
        dec_pred.append(cal.timing.decode_step(n + 4))
    return {"lengths": lengths, "prefill_mape_pct": mape(pre_pred, pre_meas),
            "decode_step_mape_pct": mape(dec_pred, dec_meas),
            "calibration_prefill_mape_pct": cal.prefill_mape, "calibration_decode_mape_pct": cal.decode_mape,
            "prefill_measured_s": pre_meas, "prefill_predicted_s": pre_pred,
            "decode_step_measured_s": dec_meas, "decode_step_predicted_s": dec_pred}


def wcet_coverage(engine, quick: bool, k: float = 5.0) -> dict:
    """Generous budgets (nothing is killed): how often does the measured time stay under the WCET?"""
    rng = random.Random(0)
    vocab = engine.loaded.model.config.vocab_size
    runs = []
    for i in range(10 if quick else 40):
        n = int(2 ** rng.uniform(7, 11))
        req = Request(random_ids(n, vocab, seed=1000 + i), budget=1e6,
                      max_new_tokens=rng.choice([32, 64, 128, 256]), k=k)
        r = engine.run(req, CancelToken())
        runs.append({"n_x": n, "tokens": len(r.token_ids), "e2e": r.timings.total, "wcet": r.plan.wcet,
                     "n_w": r.plan.worst_case_tokens})
    covered = [r["e2e"] <= r["wcet"] for r in runs]
    slack = [(r["wcet"] - r["e2e"]) / r["wcet"] for r in runs]
    # WCET at the *actual* length: the time model alone, without k's headroom.
    return {"k": k, "runs": len(runs), "coverage": sum(covered) / len(runs),
            "mean_slack_share": statistics.fmean(slack),
            "min_slack_share": min(slack), "samples": runs,
            "note": "predictor: fixed N_hat; with a random model responses run to max_new_tokens"}


def decode_overhead(engine, quick: bool) -> dict:
    """Tokens/s of our decode loop vs model.generate (alpha = 0), and speed-ups from eviction."""
    model, vocab = engine.loaded.model, engine.loaded.model.config.vocab_size
    n_new = 32 if quick else 96
    n_long = min(2000, engine.loaded.context_limit - n_new - 8)
    ours, ref = [], []
    for seed in range(3 if quick else 6):
        ids = random_ids(512, vocab, seed)
        r = engine.run(Request(ids, budget=1e6, max_new_tokens=n_new, fixed_alpha=0.0), CancelToken())
        ours.append(r.timings.total)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                           max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        ref.append(time.perf_counter() - t0)
    speed = {}
    ids = random_ids(n_long, vocab, 99)
    for alpha in (0.0, 0.5, 0.9):
        decode_times = []
        for _ in range(2 if quick else 3):
            r = engine.run(Request(ids, budget=1e6, max_new_tokens=n_new, fixed_alpha=alpha), CancelToken())
            decode_times.append(r.timings.decode / max(1, len(r.token_ids) - 1))
        speed[str(alpha)] = statistics.median(decode_times)
    return {"prompt_tokens": 512, "new_tokens": n_new, "ours_e2e_s": summary(ours), "generate_e2e_s": summary(ref),
            "overhead_pct": (statistics.median(ours) / statistics.median(ref) - 1) * 100,
            "long_prompt_tokens": n_long, "decode_step_s_by_alpha": speed,
            "speedup_alpha_0.5": speed["0.0"] / speed["0.5"], "speedup_alpha_0.9": speed["0.0"] / speed["0.9"]}


def eviction_share(engine, quick: bool) -> dict:
    """Eviction (top-k + gather on every layer) against the prefill it follows."""
    vocab = engine.loaded.model.config.vocab_size
    rows = []
    for n in (256, 1024, min(2000, engine.loaded.context_limit - 8)):
        ids = random_ids(n, vocab, n)
        shares = []
        for _ in range(2 if quick else 5):
            t0 = time.perf_counter()
            cache, _ = engine.prefill(ids)
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            evict(cache, engine.scorer.scores, 0.5, engine.press.window)
            shares.append((time.perf_counter() - t0) / t_pre)
        rows.append({"n_x": n, "evict_share_of_prefill": statistics.median(shares)})
    return {"rows": rows, "max_share": max(r["evict_share_of_prefill"] for r in rows)}


def planning_time(engine) -> dict:
    """One plan() call, many times."""
    times = []
    for i in range(20000):
        t0 = time.perf_counter()
        plan(engine.timing, n_x=1000 + i % 1000, n_hat=64, budget=5.0, t_fixed=0.5, k=5.0, alpha_max=0.95,
             n_max=512, min_kept=32)
        times.append(time.perf_counter() - t0)
    return {"plan_s": summary(times)}


def main() -> None:
    args = parser(__doc__).parse_args()
    engine, cal = calibrated_engine(args)
    common = {"model": engine.loaded.name, "quick": args.quick}
    write("ete_mape", {**common, **ete_mape(engine, cal, args.quick)})
    write("wcet_coverage", {**common, **wcet_coverage(engine, args.quick)})
    write("decode_overhead", {**common, **decode_overhead(engine, args.quick)})
    write("eviction_share", {**common, **eviction_share(engine, args.quick)})
    write("planning_time", {**common, **planning_time(engine)})


if __name__ == "__main__":
    main()
