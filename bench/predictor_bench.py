"""What the length predictor costs when it runs beside prefill on this machine.

Same prompts (the task suite's test split), side by side in one run: the engine with a
fixed N_hat against the engine with the trained predictor (input compression on).
Reports the end-to-end overhead, how often the prediction was hidden behind prefill,
and the prefill slow-down from sharing the cores.
"""
from __future__ import annotations

import statistics

import torch
from common import calibrated_engine, parser, summary, write

from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.model import encode_prompt
from timebill_ros.core.predictor import FixedLengthPredictor, load_predictor
from timebill_ros.eval import tasks


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--predictor", default="builtin:default")
    p.add_argument("--per-task", type=int, default=10)
    args = p.parse_args()
    engine, cal = calibrated_engine(args)
    fixed = FixedLengthPredictor(64)
    trained = load_predictor(args.predictor, cal.planning_timing().prefill, 64)  # as the node serves
    per_task = 3 if args.quick else args.per_task
    examples = tasks.first_per_task(tasks.load("test"), per_task)
    rows = []
    for ex in examples:
        ids = encode_prompt(engine.loaded.tokenizer, ex.prompt)[: engine.loaded.context_limit - 64]
        row = {"n_x": len(ids)}
        for name, predictor in (("fixed", fixed), ("trained", trained), ("fixed_again", fixed)):
            engine.predictor = predictor
            r = engine.run(Request(ids, budget=1e9, max_new_tokens=8, fixed_alpha=0.0), CancelToken())
            row[name] = {"prefill": r.timings.prefill, "predict": r.timings.predict,
                         "until_decode": r.timings.prefill + r.timings.evict,
                         "n_hat": r.plan.predicted_tokens}
        row["hidden"] = row["trained"]["predict"] <= row["trained"]["prefill"]
        row["input_tokens"] = trained.last_input_tokens if hasattr(trained, "last_input_tokens") else len(ids)
        rows.append(row)
    base = [(r["fixed"]["until_decode"] + r["fixed_again"]["until_decode"]) / 2 for r in rows]
    with_pred = [r["trained"]["until_decode"] for r in rows]
    engine.close()
    write("predictor_overhead", {
        "model": args.model, "predictor": args.predictor, "prompts": len(rows),
        "torch_threads": torch.get_num_threads(),
        "thread_split": ("prefill on the calling thread, prediction on one worker thread; "
                         "both use torch's intra-op pool"),
        "hidden_share": sum(r["hidden"] for r in rows) / len(rows),
        "prefill_with_fixed_s": summary(base), "prefill_with_predictor_s": summary(with_pred),
        "overhead_pct_median": statistics.median((w / b - 1) * 100 for w, b in zip(with_pred, base)),
        "truncated_share": sum(r["input_tokens"] < r["n_x"] for r in rows) / len(rows),
        "samples": rows,
    })


if __name__ == "__main__":
    main()
