"""Evaluation of result bags: scores, completion, deadline misses, alpha; plots; the
paper's claims checked on our data."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from timebill_ros.eval.metrics import score  # noqa: E402
from timebill_ros.eval.workload import GoalId  # noqa: E402

SUCCEEDED = 1
MISSES = {"KILLED_AT_DEADLINE", "COMPLETED_LATE"}


def budget_level(record: dict) -> str:
    """The budget level of a result: from its request_id ("policy/level/method/example"), else
    its budget in seconds (budgets travel as Durations: round away the nanosecond noise)."""
    goal = GoalId.parse(record.get("request_id"))
    return goal.level if goal else str(round(float(record["budget"]), 3))


def level_order(cells: dict) -> list[str]:
    """Budget levels from the tightest to the most generous (by their mean seconds)."""
    return sorted(cells, key=lambda level: cells[level].get("budget_s_mean", _seconds(level)))


def _seconds(level: str) -> float:
    try:
        return float(level.rstrip("s"))
    except ValueError:
        return float(level.lstrip("q"))


def summarise(records: list[dict]) -> dict:
    """Per policy -> method -> budget level: n, mean score (incomplete = 0), completion, misses,
    alpha, and the level's mean budget in seconds (per task when budgets are per task)."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r["overrun_policy"], r["method"], budget_level(r))].append(r)
    table: dict = defaultdict(lambda: defaultdict(dict))
    for (policy, method, budget), rows in sorted(groups.items()):
        scores = [score(r["task"], r["text"], r["reference"]) if r["status"] == SUCCEEDED else 0.0 for r in rows]
        alphas = [r["alpha"] for r in rows if _ran(r)]
        statuses: dict = defaultdict(int)
        for r in rows:
            statuses[r["status_name"]] += 1
        table[policy][method][str(budget)] = {
            "n": len(rows), "score": statistics.fmean(scores), "completion": statuses["SUCCEEDED"] / len(rows),
            "deadline_misses": sum(statuses[s] for s in MISSES), "statuses": dict(statuses),
            "alpha_mean": statistics.fmean(alphas) if alphas else None,
            "alpha_quartiles": statistics.quantiles(alphas, n=4) if len(alphas) > 1 else alphas,
            "budget_s_mean": statistics.fmean(float(r["budget"]) for r in rows),
            "budget_s_by_task": {t: round(statistics.fmean(float(r["budget"]) for r in rows if r["task"] == t), 3)
                                 for t in sorted({r["task"] for r in rows})},
        }
    return json.loads(json.dumps(table))


def check_claims(table: dict, main_methods: list[str]) -> dict:
    """Does TimeBill score highest at every budget? Is its completion close to fixed 0.95's?
    What shape does the k sweep have? Measured, not assumed."""
    claims = {}
    for policy, methods in table.items():
        if "timebill" not in methods:
            continue
        budgets = level_order(methods["timebill"])
        best_everywhere, gaps, rows, ties = True, [], [], []
        for b in budgets:
            scores = {m: methods[m][b]["score"] for m in main_methods if m in methods and b in methods[m]}
            winner = max(scores, key=scores.get)
            best_everywhere &= scores["timebill"] >= scores[winner] - 1e-9
            if sum(abs(v - scores[winner]) <= 1e-9 for v in scores.values()) > 1:
                ties.append(b)  # "highest" is not informative where methods tie (e.g. all 0)
            if "fixed_0.95" in methods:
                gaps.append(methods["timebill"][b]["completion"] - methods["fixed_0.95"][b]["completion"])
            rows.append({"budget_level": b, "budget_s_by_task": methods["timebill"][b].get("budget_s_by_task"),
                         "winner": winner, "scores": scores})
        claim = {"timebill_highest_score_at_every_budget": best_everywhere, "budgets_with_ties": ties,
                 "per_budget": rows}
        if gaps:
            claim["completion_gap_vs_fixed_0.95_pts"] = [round(100 * g, 1) for g in gaps]
            claim["completion_within_5_pts_of_fixed_0.95"] = all(abs(g) <= 0.05 for g in gaps)
        sweep = {m: v for m, v in methods.items() if m.startswith("timebill_k")}
        if sweep:
            ks = sorted(sweep, key=lambda m: int(m.rsplit("k", 1)[1]))
            claim["k_sweep"] = {m: next(iter(sweep[m].values())) for m in ks}
            scores = [next(iter(sweep[m].values()))["score"] for m in ks]
            peak = scores.index(max(scores))
            claim["k_sweep_peak_k"] = int(ks[peak].rsplit("k", 1)[1])
            claim["k_sweep_shape"] = ("flat" if max(scores) - min(scores) <= 1e-9 else
                                      "rises then falls" if 0 < peak < len(ks) - 1 else
                                      "falls" if peak == 0 else "rises")
        claims[policy] = claim
    return claims


def mechanism(records: list[dict]) -> dict:
    """Why TimeBill scores what it does, per policy and budget level: its length predictor's
    error against the true length (what the timebill_true_length run of the same example was
    told), how often k x N_hat still fell short of it, the alpha it chose, and its kills,
    beside the true-length run and fixed 0.95. Only jobs that ran count for alpha and the
    prediction (a skipped job was never planned). Empty without a timebill_true_length run."""
    truth = {_example(r): r["predicted_response_tokens"] for r in records
             if r["method"] == "timebill_true_length" and _ran(r)}
    groups: dict = defaultdict(list)
    for r in records:
        if r["method"] in ("timebill", "timebill_true_length", "fixed_0.95"):
            groups[(r["overrun_policy"], budget_level(r), r["method"])].append(r)
    out: dict = defaultdict(dict)
    for (policy, level, method), rows in sorted(groups.items()):
        ran = [r for r in rows if _ran(r)]
        cell = {"n": len(rows), "ran": len(ran),
                "alpha_mean": statistics.fmean(r["alpha"] for r in ran) if ran else None,
                "killed_or_late": sum(r["status_name"] in MISSES for r in rows),
                "completion": sum(r["status"] == SUCCEEDED for r in rows) / len(rows)}
        known = [(r, truth[_example(r)]) for r in ran if _example(r) in truth]
        if method == "timebill" and known:
            cell.update(
                predictor_mae_tokens=statistics.fmean(abs(r["predicted_response_tokens"] - n) for r, n in known),
                under_predicted_share=sum(r["predicted_response_tokens"] < n for r, n in known) / len(known),
                worst_case_short_share=sum(r["worst_case_response_tokens"] < n for r, n in known) / len(known),
                true_tokens_mean=statistics.fmean(n for _, n in known))
        out[policy].setdefault(level, {})[method] = cell
    return json.loads(json.dumps(out)) if truth else {}


def _ran(record: dict) -> bool:
    """The job was planned and ran (it completed, or was killed or finished late)."""
    return record["status"] == SUCCEEDED or record["status_name"] in MISSES


def _example(record: dict) -> str:
    """The example of a "policy/level/method/example" request id."""
    goal = GoalId.parse(record["request_id"])
    return goal.example if goal else ""


def plot(table: dict, out: Path, main_methods: list[str]) -> list[Path]:
    """score vs budget and completion vs budget per policy; the k sweep."""
    paths = []
    for policy, methods in table.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for m in main_methods:
            if m not in methods:
                continue
            budgets = level_order(methods[m])
            axes[0].plot(budgets, [methods[m][b]["score"] for b in budgets], marker="o", label=m)
            axes[1].plot(budgets, [methods[m][b]["completion"] for b in budgets], marker="o", label=m)
        for ax, name in zip(axes, ("average score (incomplete = 0)", "completion rate")):
            ax.set_xlabel("budget level (qN: N-th percentile of each task's vanilla predicted time; or seconds)")
            ax.set_ylabel(name)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"policy: {policy}")
        fig.tight_layout()
        path = out / f"budget_sweep_{policy}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
        sweep = {m: v for m, v in methods.items() if m.startswith("timebill_k")}
        if sweep:
            ks = sorted(sweep, key=lambda m: int(m.rsplit("k", 1)[1]))
            fig, ax = plt.subplots(figsize=(5.5, 4))
            rows = [next(iter(sweep[m].values())) for m in ks]
            kv = [int(m.rsplit("k", 1)[1]) for m in ks]
            ax.plot(kv, [r["score"] for r in rows], marker="o", label="average score")
            ax.plot(kv, [r["completion"] for r in rows], marker="s", label="completion rate")
            ax.set_xlabel("pessimistic factor k")
            ax.set_title(f"k sweep at budget level {next(iter(sweep[ks[0]]))} ({policy})")
            ax.legend()
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"k_sweep_{policy}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths
