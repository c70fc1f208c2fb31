"""The same GGUF in llama.cpp (what llama_ros runs) and in our engine, side by side.

Prefill time at 512 and 2048 tokens and one decode step with a 512- and a 2048-entry
cache, both with the same thread count and the same random token ids; decode steps are
timed in rounds, the runtimes taking turns, so that the shared machine's noise falls on
both. Reported as ratios (ours / llama.cpp). Our decode step is also timed on the model's
float32 weights through transformers' forward (quantization ''), the step before the lean
one, and on the other lean weights (int8-decode beside the default auto-decode, which on
this GGUF holds the layers in their own Q4_1 blocks; int4-decode beside int8-decode), in
the same run.
Needs `llama-cpp-python`, which only `make bench-llamacpp` installs (it is
compiled from source with flags that run on this CPU); `make setup` never does.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

from common import calibrated_engine, float_forward_engine, parser, random_ids, write

from timebill_ros.core.calibration import call_times, median_time
from timebill_ros.core.model import builtin_gguf_file

LENGTHS = (512, 2048)
SETTLE_S = 0.5


def llama_prefill(llm, ids: list[int]) -> None:
    llm.reset()
    llm.eval(ids)


def llama_decode_steps(llm, ids: list[int], steps: int) -> list[float]:
    """Times of STEPS single-token evals after a prefill of IDS."""
    llama_prefill(llm, ids)
    return call_times(lambda: llm.eval([ids[-1]]), steps)


def ours_decode_steps(engine, ids: list[int], steps: int) -> list[float]:
    """Times of STEPS decode steps of ENGINE after a prefill of IDS."""
    cache, logits = engine.prefill(ids)
    position = [len(ids)]

    def step() -> None:
        int(engine.decode_step(cache, 1, position[0]).argmax(-1))
        position[0] += 1

    return call_times(step, steps)


def decode_steps_side_by_side(arms: dict[str, Callable[[int], list[float]]], rounds: int, steps: int
                              ) -> dict[str, float]:
    """Median step time per arm over ROUNDS rounds of STEPS steps each, the arms taking turns
    (and turns at going first), so a slow spell of the shared machine lands on every arm."""
    samples: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for round_ in range(rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            # Both runtimes' worker threads spin-wait a while after their work (llama.cpp's
            # polling, OpenMP's block time): let them settle before the next arm starts.
            time.sleep(SETTLE_S)
            samples[name] += arms[name](steps)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    args = p.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=str(builtin_gguf_file("smollm2")), n_ctx=max(LENGTHS) + 64, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=512, verbose=False)
    engine, cal = calibrated_engine(args)
    choice = cal.kernel_choice()
    build_flags = os.environ.get("LLAMA_CPP_CMAKE", "unknown (installed outside make bench-llamacpp)")
    print(f"[bench] ours: {choice.summary() if choice else engine.loaded.dtype}\n"
          f"[bench] llama.cpp build flags: {build_flags}", flush=True)
    # Decode steps only: their prefill is the same code on the same weights.
    plain = float_forward_engine(engine)
    other_name = "int4-decode" if args.quantization == "int8-decode" else "int8-decode"
    other = float_forward_engine(engine, other_name)
    repeats, rounds, steps = (1, 2, 5) if args.quick else (3, 5, 9)
    rows = []
    for n in LENGTHS:
        ids = random_ids(n, engine.loaded.model.config.vocab_size, seed=n)
        llama_prefill(llm, ids[:64])  # warm both
        engine.prefill(ids[:64])
        row = {"tokens": n,
               "llama_cpp_prefill_s": median_time(lambda: llama_prefill(llm, ids), repeats),
               "ours_prefill_s": median_time(lambda: engine.prefill(ids), repeats),
               "decode_rounds": rounds, "decode_steps_per_round": steps}
        row.update(decode_steps_side_by_side({
            "llama_cpp_decode_step_s": lambda k: llama_decode_steps(llm, ids, k),
            "ours_decode_step_s": lambda k: ours_decode_steps(engine, ids, k),
            "ours_float_forward_decode_step_s": lambda k: ours_decode_steps(plain, ids, k),
            "ours_other_lean_decode_step_s": lambda k: ours_decode_steps(other, ids, k)},
            rounds, steps))
        row["prefill_ratio_ours_over_llama_cpp"] = row["ours_prefill_s"] / row["llama_cpp_prefill_s"]
        row["decode_ratio_ours_over_llama_cpp"] = row["ours_decode_step_s"] / row["llama_cpp_decode_step_s"]
        row["other_lean_ratio_over_llama_cpp"] = row["ours_other_lean_decode_step_s"] / row["llama_cpp_decode_step_s"]
        rows.append(row)
    engine.close()
    for extra in (plain, other):
        extra.close()
    write("llamacpp", {"model": args.model, "gguf": builtin_gguf_file("smollm2").name, "dtype": engine.loaded.dtype,
                       "decode_step_weights": engine.loaded.lean_step.describe() if engine.loaded.lean_step else "",
                       "float_forward_dtype": plain.loaded.dtype, "other_lean_dtype": other.loaded.dtype,
                       "llama_cpp_quantization": "Q4_1 (the GGUF as shipped)", "llama_cpp_build_flags": build_flags,
                       "kernel_choice": choice.to_dict() if choice else None, "rows": rows})


if __name__ == "__main__":
    main()
