"""Load: several clients send many goals in a short time, mixed budgets and prompt lengths.

Every goal must get exactly one terminal status; none may be lost; no SUCCEEDED goal may
miss its deadline; queue bounds show up as REJECTED with a reason. Prints JSON.
"""
from __future__ import annotations

import random
import time

from common import parser, percentile, write
from node_common import node_session

from timebill_ros.node.params import NodeParams


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--goals", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    n_goals = 40 if args.quick else args.goals
    runs = []
    with node_session(args, clients=args.clients, max_queue=8, max_new_tokens=256) as (_, clients, cal):
        rng = random.Random(0)
        start = time.monotonic()
        for i in range(n_goals):
            due = start + args.seconds * i / n_goals
            time.sleep(max(0.0, due - time.monotonic()))
            prompt = "check the shelf " * rng.choice([2, 20, 120, 400])
            budget = rng.choice([0.05, 0.2, 0.5, 1.0, 3.0])
            client = clients[i % len(clients)]
            goal = client.goal(prompt, budget=budget, max_new_tokens=rng.choice([8, 64, 256]))
            runs.append((budget, client.send(goal)))
        for _, run in runs:
            try:
                clients[0].wait(run, timeout=300)
            except TimeoutError:
                pass
        statuses: dict = {}
        for _, run in runs:
            name = run.result.status_name if run.result is not None else "LOST"
            statuses[name] = statuses.get(name, 0) + 1
        done = [run.result for _, run in runs if run.result is not None]
        kills = [r.deadline_margin for r in done if r.status_name == "KILLED_AT_DEADLINE"]
        # A goal may end at most one control period (the backup timer) plus one decode step
        # (the engine's next check) after its deadline, at the longest cache a goal can hold.
        period = 1.0 / NodeParams.control_rate_hz
        bound = period + cal.planning_timing().decode_step(min(args.max_length, 2048 + 256))
        ends = [(budget, run) for budget, run in runs if run.result is not None and run.done_at is not None]
        write("load", {
            "model": args.model, "clients": args.clients, "goals_sent": n_goals, "seconds": args.seconds,
            "terminal_statuses": statuses, "lost": statuses.get("LOST", 0),
            "succeeded_deadline_misses": sum(1 for r in done if r.status_name == "SUCCEEDED" and r.deadline_margin > 0),
            "rejected_reasons": sorted({r.status_reason.split(" (")[0] for r in done if r.status_name == "REJECTED"}),
            "kill_latency_p50_s": percentile(kills, 50) if kills else None,
            "kill_latency_p99_s": percentile(kills, 99) if kills else None,
            "bound_s": bound,
            "ended_past_bound_at_the_node": sum(1 for r in done if r.deadline_margin > bound),
            "worst_end_after_deadline_at_the_node_s": max((r.deadline_margin for r in done), default=None),
            # As the clients saw it: result received minus (goal sent + budget); includes DDS.
            "ended_past_bound_at_the_client": sum(1 for budget, run in ends
                                                  if run.done_at - run.sent_at - budget > bound),
            "worst_end_after_deadline_at_the_client_s": max((run.done_at - run.sent_at - budget
                                                             for budget, run in ends), default=None),
        })


if __name__ == "__main__":
    main()
