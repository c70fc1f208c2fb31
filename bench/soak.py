"""Soak: many goals in a row; the node's resident memory, threads and open files after
every block of goals. Target: flat after warm-up (no leak). Prints JSON."""
from __future__ import annotations

from common import parser, write
from node_common import node_session, proc_stats


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--goals", type=int, default=1000)
    p.add_argument("--block", type=int, default=100)
    args = p.parse_args()
    n_goals = 200 if args.quick else args.goals
    samples, statuses = [], {}
    with node_session(args) as (node, [client], _):
        for i in range(n_goals):
            budget = 0.02 if i % 5 == 0 else 5.0  # every fifth goal is killed at its deadline
            run = client.call(client.goal("status of the arm " * (1 + i % 50), budget=budget, max_new_tokens=16),
                              timeout=120)
            statuses[run.result.status_name] = statuses.get(run.result.status_name, 0) + 1
            if (i + 1) % args.block == 0:
                samples.append({"goals": i + 1, **proc_stats(node.proc.pid)})
        warm = samples[1:] if len(samples) > 2 else samples
        growth = (warm[-1]["rss_mb"] - warm[0]["rss_mb"]) / max(1, (warm[-1]["goals"] - warm[0]["goals"]) / 100)
        write("soak", {"model": args.model, "goals": n_goals, "statuses": statuses, "samples": samples,
                       "rss_growth_mb_per_100_goals_after_warmup": growth,
                       "threads_first_last": [samples[0]["threads"], samples[-1]["threads"]],
                       "fds_first_last": [samples[0]["fds"], samples[-1]["fds"]]})


if __name__ == "__main__":
    main()
