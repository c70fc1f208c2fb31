"""Kill latency of timebill_node: how long after its deadline a killed goal's result comes.

Starts a real node (subprocess) and sends goals that cannot finish in their budget
(long prompt, many tokens, kill policy). Reports, per goal:
- server side: the result's deadline_margin (job end minus deadline);
- client side: result arrival minus (goal acceptance seen by the client + budget).
The design bound is one control period plus one decode step.
"""
from __future__ import annotations

from common import calibrated_engine, parser, summary, write
from node_common import node_session


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--goals", type=int, default=40)
    p.add_argument("--control-rate", type=float, default=20.0)
    args = p.parse_args()
    engine, cal = calibrated_engine(args)
    context = engine.loaded.context_limit
    engine.close()
    step = cal.timing.decode_step(1000)
    with node_session(args, control_rate_hz=args.control_rate, max_new_tokens=context // 2) as (_, [client], _):
        server, seen, statuses = [], [], {}
        n_goals = 8 if args.quick else args.goals
        prompt = "status report " * 60
        for i in range(n_goals):
            # Budgets that end somewhere inside decode, spread over a control period.
            budget = cal.timing.prefill(200) + 20 * step + (i % 7) * (1 / args.control_rate) / 7
            run = client.call(client.goal(prompt, budget=budget, max_new_tokens=context // 2 - 256,
                                          k=1.0, alpha_max=0.0), timeout=120)
            r = run.result
            statuses[r.status_name] = statuses.get(r.status_name, 0) + 1
            if r.status_name == "KILLED_AT_DEADLINE":
                server.append(r.deadline_margin)
                seen.append(run.done_at - (run.accepted_at + budget))
        write("kill_latency", {
            "model": args.model, "control_rate_hz": args.control_rate, "goals": n_goals, "statuses": statuses,
            "predicted_decode_step_s": step, "bound_s": 1 / args.control_rate + step,
            "server_deadline_margin_s": summary(server) if server else None,
            "client_seen_latency_s": summary(seen) if seen else None,
            "p50_s": summary(server)["median"] if server else None, "p99_s": summary(server)["p99"] if server else None,
        })


if __name__ == "__main__":
    main()
