"""A fresh node's first goal against its fifth: the same prompt, the same budget, each node
started anew (warm-up is what makes the first as cheap as the later ones). Target: the first
goal's prefill within 1.5x of the fifth's. Prints JSON (results/bench/first_goal.json).
"""
from __future__ import annotations

import statistics

import rclpy
from common import parser, write
from node_common import start_calibrated_node

from timebill_ros.node.client import Client

PROMPT = ("The vase is in the closet. The shirt is in the bathroom. The valve is in the dock. "
          "Question: Where is the vase? Answer in one word.")
GOALS = 5


def one_node(args) -> list[dict]:
    """GOALS goals on a node started for them; each goal's prefill, decode and total seconds."""
    node, _ = start_calibrated_node(args)
    client = Client()
    try:
        assert client.wait_for_server(120), node.log()
        out = []
        while len(out) < GOALS:
            run = client.call(client.goal(PROMPT, budget=10.0, max_new_tokens=24), timeout=120)
            if run.result.status_reason.startswith("node is starting"):
                continue  # not a goal that ran
            r = run.result
            out.append({"status": r.status_name, "prefill_s": r.prefill_time, "decode_s": r.decode_time,
                        "total_s": r.total_time, "prompt_tokens": r.prompt_tokens})
        return out
    finally:
        client.close()
        node.stop()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--nodes", type=int, default=3, help="nodes started, one after the other")
    args = p.parse_args()
    rclpy.init()
    try:
        runs = [one_node(args) for _ in range(1 if args.quick else args.nodes)]
    finally:
        rclpy.try_shutdown()
    first = [run[0]["prefill_s"] for run in runs]
    fifth = [run[GOALS - 1]["prefill_s"] for run in runs]
    write("first_goal", {"model": args.model, "prompt_tokens": runs[0][0]["prompt_tokens"], "nodes": len(runs),
                         "goals": runs, "first_prefill_s": first, "fifth_prefill_s": fifth,
                         "first_over_fifth_median": statistics.median(f / v for f, v in zip(first, fifth)),
                         "first_over_fifth_max": max(f / v for f, v in zip(first, fifth)), "target": 1.5})


if __name__ == "__main__":
    main()
