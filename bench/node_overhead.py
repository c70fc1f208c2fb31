"""What serving through the node costs over running the engine in-process: the same prompts,
the same alpha and the same forced tokens (ignore_eos, 48 tokens), sent to a `timebill_node`
and run on an in-process engine of the same model, calibration and kernels, alternating goal
by goal (the idle node waits while the in-process engine runs, and the other way round).

Per phase: the node's time over the in-process time (median of the per-pair ratios), for
prefill and for the mean decode step. It found the node running its jobs on another thread
than the one that loaded the model, which cost ~2.5x per decode step (core.torch_thread).
Prints JSON (results/bench/node_overhead.json).
"""
from __future__ import annotations

import random
import statistics

import rclpy
from common import calibrated_engine, parser, write
from node_common import start_calibrated_node
from timing_under_load import prompt_of

from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.model import encode_prompt
from timebill_ros.node.client import Client

TOKENS = 48
CASES = ((100, 0.65), (400, 0.5), (1300, 0.9))  # (about this many prompt tokens, alpha)


def in_process(engine, prompt: str, alpha: float) -> dict:
    """Prefill seconds and mean decode-step seconds of one forced run of the engine."""
    ids = encode_prompt(engine.loaded.tokenizer, prompt)
    r = engine.run(Request(ids, budget=1e6, max_new_tokens=TOKENS, expected_tokens=TOKENS, k=1.0,
                           fixed_alpha=alpha, ignore_eos=True), CancelToken())
    return {"prompt_tokens": len(ids), "prefill_s": r.timings.prefill, "step_s": r.timings.decode / (TOKENS - 1)}


def through_node(client: Client, prompt: str, alpha: float) -> dict:
    """The same run as a goal: the node's own phase timings from the result."""
    r = client.call(client.goal(prompt, budget=1000.0, max_new_tokens=TOKENS, expected_response_tokens=TOKENS,
                                k=1.0, fixed_alpha=alpha, ignore_eos=True, overrun_policy="skip_next"),
                    timeout=300).result
    assert r.status_name == "SUCCEEDED", (r.status_name, r.status_reason)
    return {"prompt_tokens": r.prompt_tokens, "prefill_s": r.prefill_time, "step_s": r.decode_time / (TOKENS - 1)}


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    p.add_argument("--repeats", type=int, default=5, help="pairs per case")
    args = p.parse_args()
    repeats = 2 if args.quick else args.repeats
    node, _ = start_calibrated_node(args, max_new_tokens=64)
    engine, cal = calibrated_engine(args)
    rclpy.init()
    client = Client()
    pairs = []
    try:
        assert client.wait_for_server(180), node.log()
        for _ in range(2):  # warm both sides before anything is timed
            through_node(client, prompt_of(100, random.Random(0)), 0.5)
            in_process(engine, prompt_of(100, random.Random(0)), 0.5)
        for i in range(repeats):
            for n, alpha in CASES:
                prompt = prompt_of(n, random.Random(n))
                first, second = (in_process, through_node) if i % 2 == 0 else (through_node, in_process)
                runs = {f.__name__: f(engine if f is in_process else client, prompt, alpha) for f in (first, second)}
                pairs.append({"case": [n, alpha], **runs})
    finally:
        client.close()
        rclpy.try_shutdown()
        node.stop()
        engine.close()

    def ratio(phase: str, rows: list[dict]) -> float:
        return statistics.median(r["through_node"][phase] / r["in_process"][phase] for r in rows)

    by_case = {f"{n} tokens, alpha {a}": {"node_over_in_process_prefill": ratio("prefill_s", rows),
                                          "node_over_in_process_step": ratio("step_s", rows),
                                          "in_process_step_ms": 1000 * statistics.median(
                                              r["in_process"]["step_s"] for r in rows)}
               for n, a in CASES for rows in [[r for r in pairs if r["case"] == [n, a]]]}
    write("node_overhead", {"model": args.model, "forced_tokens": TOKENS, "repeats": repeats,
                            "node_over_in_process_prefill": ratio("prefill_s", pairs),
                            "node_over_in_process_step": ratio("step_s", pairs),
                            "by_case": by_case, "pairs": pairs, "calibration_key": cal.key.filename()})


if __name__ == "__main__":
    main()
