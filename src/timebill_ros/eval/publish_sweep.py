"""README blocks of the budget sweep (`make eval`): the score / completion tables per
policy, the claim check and the mechanism behind it, all from docs/results/eval.json."""
from __future__ import annotations

from typing import Callable


def pct(x: float, digits: int = 1) -> str:
    """A share as a percentage, e.g. 0.125 -> "12.5 %"."""
    return f"{100 * x:.{digits}f} %"


def eval_table(load: Callable[[str], dict], policy: str = "kill") -> str:
    """The budget sweep under POLICY: score / completion / mean alpha per method and budget."""
    from timebill_ros.eval.report import level_order

    e = load("eval.json")
    table = e["table"].get(policy)
    if not table:
        return f"_No {policy} runs in `docs/results/eval.json`._\n"
    budgets = level_order(table["timebill"]) if "timebill" in table else \
        level_order({b: cell for row in table.values() for b, cell in row.items()})
    seconds = {b: cell.get("budget_s_mean") for row in table.values() for b, cell in row.items()}
    header = [f"{float(b):g} s" if seconds[b] is None else b if b.endswith("s") else
              f"{b} (mean {seconds[b]:.2g} s)" for b in budgets]
    lines = [f"| method ({POLICY_NAMES.get(policy, policy)}) | " + " | ".join(header) + " |",
             "|" + "---|" * (len(budgets) + 1)]
    # The k sweep has its own plot; here the methods, in the paper's order.
    methods = sorted((m for m in table if not m.startswith("timebill_k")),
                     key=lambda m: (m != "vanilla", m.startswith("int8"), m.startswith("timebill"), m))
    for method in methods:
        row = table[method]
        cells = " | ".join(f"{row[b]['score']:.3f} / {pct(row[b]['completion'], 0)} / {row[b]['alpha_mean']:.2f}"
                           if b in row and row[b]["alpha_mean"] is not None else
                           f"{row[b]['score']:.3f} / {pct(row[b]['completion'], 0)} / -" if b in row else ""
                           for b in budgets)
        lines.append(f"| {method} | {cells} |")
    return "\n".join(lines) + "\n"


POLICY_NAMES = {"kill": "Kill", "skip_next": "Skip-Next"}


def eval_claims(load: Callable[[str], dict]) -> str:
    """What make eval ran, the claim check per policy, and the mechanism behind it (predictor
    error -> alpha chosen -> kills), all from eval.json."""
    e = load("eval.json")
    lines = []
    if run := e.get("run"):
        lines += [f"Run: target `{run['model']}`, predictor `{run['predictor']}`, {run['per_task']} test prompts "
                  f"per task, budget levels {run['levels']}, policies {run['policies']}; {e['results']} results "
                  f"in {run['minutes']:.0f} min, of which {run.get('calibration_minutes', 0):.0f} calibrating "
                  f"(none when this machine's calibrations exist).", ""]
    for policy, c in e["claims"].items():
        lines += _claim_lines(POLICY_NAMES.get(policy, policy), c)
    for policy, levels in e.get("mechanism", {}).items():
        lines += _mechanism_lines(e["table"][policy], policy, levels)
    return "\n".join(lines) + "\n"


def _claim_lines(name: str, c: dict) -> list[str]:
    """The claim check of one policy, as README bullets."""
    lines = []
    behind = [f"{row['budget_level']}: {row['winner']} {row['scores'][row['winner']]:.3f} vs "
              f"{row['scores']['timebill']:.3f}" for row in c["per_budget"] if row["winner"] != "timebill"
              and row["scores"][row["winner"]] - row["scores"]["timebill"] > 1e-9]
    lines.append(f"- [{name}] TimeBill has the highest average score at every budget: "
                 f"**{'yes' if c['timebill_highest_score_at_every_budget'] else 'no'}**"
                 + (f" (behind at {'; '.join(behind)})" if behind else "")
                 + (f"; levels where methods tie for first: {', '.join(c['budgets_with_ties'])}"
                    if c["budgets_with_ties"] else "") + ".")
    if "completion_gap_vs_fixed_0.95_pts" in c:
        lines.append(f"- [{name}] TimeBill's completion within 5 points of fixed 0.95's: "
                     f"**{'yes' if c['completion_within_5_pts_of_fixed_0.95'] else 'no'}** (TimeBill minus "
                     f"fixed 0.95, points, tightest budget first: {c['completion_gap_vs_fixed_0.95_pts']}).")
    if "k_sweep_shape" in c:
        sweep = ", ".join(f"k={m.rsplit('k', 1)[1]} {v['score']:.3f} / {pct(v['completion'], 0)}"
                          for m, v in c["k_sweep"].items())
        lines.append(f"- [{name}] k sweep (score / completion): {sweep}; shape **{c['k_sweep_shape']}** "
                     f"(peak at k={c['k_sweep_peak_k']}; the paper's: rises then falls).")
    return lines


def _mechanism_lines(table: dict, policy: str, levels: dict) -> list[str]:
    """The mechanism table of one policy: predictor error -> alpha -> kills, per budget level."""
    lines = ["", f"Mechanism ({POLICY_NAMES.get(policy, policy)}): TimeBill (k x N_hat) against TimeBill told "
              "the true length and fixed 0.95, per budget level.", "",
              "| level | true tokens (mean) | predictor MAE, tokens | N_hat < N | k x N_hat < N | mean alpha: "
              "timebill / true length / fixed 0.95 | killed or late: same | completion: same |",
              "|---|---|---|---|---|---|---|---|"]
    # Tightest level first, by the mean seconds the summary table gives it (as the tables above).
    timebill = table.get("timebill", {})
    for level, cells in sorted(levels.items(), key=lambda kv: timebill.get(kv[0], {}).get("budget_s_mean", 0.0)):
        tb = cells.get("timebill", {})
        trio = [cells.get(m) for m in ("timebill", "timebill_true_length", "fixed_0.95")]
        fmt = lambda key, f: " / ".join("-" if c is None or c.get(key) is None else f(c[key])  # noqa: E731
                                        for c in trio)
        lines.append(f"| {level} | {tb.get('true_tokens_mean', float('nan')):.0f} | "
                     f"{tb.get('predictor_mae_tokens', float('nan')):.1f} | "
                     f"{pct(tb.get('under_predicted_share', float('nan')), 0)} | "
                     f"{pct(tb.get('worst_case_short_share', float('nan')), 0)} | "
                     f"{fmt('alpha_mean', lambda x: f'{x:.2f}')} | {fmt('killed_or_late', str)} | "
                     f"{fmt('completion', lambda x: pct(x, 0))} |")
    return lines
