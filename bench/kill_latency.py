"""Kill latency of timebill_node: how long after its deadline a killed goal's result comes.

Starts a real node (subprocess) and sends goals that cannot finish in their budget, with
kill policy: one set whose deadline falls inside decode, one whose deadline falls inside
the prefill of a prompt near the largest the node takes. Reports, per set:
- server side: the result's deadline_margin (job end minus deadline);
- client side: result arrival minus (goal acceptance seen by the client + budget).
The issue's bound is one control period plus one decode step (a kill by the control
timer); a Kill job's armed deadline should do better: one decode step in decode, half a
layer of a prefill chunk in prefill (the engine's next check after the deadline).
"""
from __future__ import annotations

from common import calibrated_engine, longest, parser, summary, write
from node_common import node_session

from timebill_ros.core.model import encode_prompt


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--goals", type=int, default=40)
    p.add_argument("--control-rate", type=float, default=20.0)
    args = p.parse_args()
    engine, cal = calibrated_engine(args)
    context = longest(engine, args)
    max_prompt = min(2048, context // 2)
    long_prompt = prompt_of_about(engine.loaded.tokenizer, max_prompt - 64)
    engine.close()
    step = cal.timing.decode_step(1000)
    with node_session(args, control_rate_hz=args.control_rate, max_new_tokens=context // 2,
                      max_prompt_tokens=max_prompt) as (_, [client], _):
        n_goals = 8 if args.quick else args.goals
        phases = {}
        # Deadlines inside decode: a short prompt, then ~20 steps, spread over a control period.
        # It asks for a long answer: SmolLM2 on int8 decode ends its reply to "status report"
        # x 60 within ~20 tokens, and a goal that finishes is no kill.
        short = "Write a long story about a robot that explores a cave. " * 8
        phases["decode"] = kill_set(client, short, n_goals, args.control_rate, context // 2 - 256,
                                    lambda i: cal.timing.prefill(200) + 20 * step)
        # Deadlines inside prefill of a long prompt: a fraction of its predicted prefill time.
        phases["prefill"] = kill_set(client, long_prompt, n_goals, args.control_rate, 64,
                                     lambda i: cal.timing.prefill(max_prompt) * (0.2 + 0.6 * (i % 5) / 4))
        write("kill_latency", {
            "model": args.model, "control_rate_hz": args.control_rate, "goals_per_phase": n_goals,
            "prefill_chunk": args.prefill_chunk,
            "predicted_decode_step_s": step, "bound_s": 1 / args.control_rate + step,
            "long_prompt_tokens": len(encode_prompt(engine.loaded.tokenizer, long_prompt)), "phases": phases,
        })


def prompt_of_about(tokenizer, tokens: int) -> str:
    """A prompt of at most TOKENS tokens (chat template included), close to it."""
    reps = tokens
    while len(encode_prompt(tokenizer, "status report " * reps)) > tokens:
        reps = int(reps * 0.9)
    return "status report " * reps


def kill_set(client, prompt: str, n_goals: int, rate: float, max_new: int, base_budget) -> dict:
    """Send N_GOALS goals whose budgets end at BASE_BUDGET(i) plus a share of a control period."""
    server, seen, statuses = [], [], {}
    for i in range(n_goals):
        budget = base_budget(i) + (i % 7) * (1 / rate) / 7
        run = client.call(client.goal(prompt, budget=budget, max_new_tokens=max_new, k=1.0, alpha_max=0.0),
                          timeout=120)
        r = run.result
        statuses[r.status_name] = statuses.get(r.status_name, 0) + 1
        if r.status_name == "KILLED_AT_DEADLINE":
            server.append(r.deadline_margin)
            seen.append(run.done_at - (run.accepted_at + budget))
    return {"statuses": statuses,
            "server_deadline_margin_s": summary(server) if server else None,
            "server_deadline_margins_s": sorted(server),  # each killed goal's, to see the tail
            "client_seen_latency_s": summary(seen) if seen else None,
            "p50_s": summary(server)["median"] if server else None,
            "p99_s": summary(server)["p99"] if server else None}


if __name__ == "__main__":
    main()
