"""The same GGUF in llama.cpp (what llama_ros runs) and in our engine, side by side.

Prefill time at 512 and 2048 tokens and one decode step with a 512- and a 2048-entry
cache, both with the same thread count and the same random token ids, alternating the two
runtimes so that the shared machine's noise falls on both. Reported as ratios (ours /
llama.cpp). Our decode step is also timed on the model's float32 weights through
transformers' forward (quantization ''), the step before the lean int8 one, in the same run.
Needs `llama-cpp-python`, which only `make bench-llamacpp` installs (it is
compiled from source with flags that run on this CPU); `make setup` never does.
"""
from __future__ import annotations

from common import calibrated_engine, float_forward_engine, parser, random_ids, write

from timebill_ros.core.calibration import median_time
from timebill_ros.core.model import builtin_gguf_file

LENGTHS = (512, 2048)


def llama_prefill(llm, ids: list[int]) -> None:
    llm.reset()
    llm.eval(ids)


def llama_decode_step(llm, ids: list[int], steps: int) -> float:
    """Median time of one single-token eval after a prefill of IDS."""
    llama_prefill(llm, ids)
    return median_time(lambda: llm.eval([ids[-1]]), steps)


def ours_decode_step(engine, ids: list[int], steps: int) -> float:
    cache, logits = engine.prefill(ids)
    position = [len(ids)]

    def step() -> None:
        int(engine.decode_step(cache, 1, position[0]).argmax(-1))
        position[0] += 1

    return median_time(step, steps)


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    args = p.parse_args()
    from llama_cpp import Llama

    llm = Llama(model_path=str(builtin_gguf_file("smollm2")), n_ctx=max(LENGTHS) + 64, n_threads=args.threads,
                n_threads_batch=args.threads, n_batch=512, verbose=False)
    engine, _ = calibrated_engine(args)
    plain = float_forward_engine(engine)  # decode steps only: its prefill is the same code on the same weights
    repeats, steps = (1, 5) if args.quick else (3, 9)
    rows = []
    for n in LENGTHS:
        ids = random_ids(n, engine.loaded.model.config.vocab_size, seed=n)
        llama_prefill(llm, ids[:64])  # warm both
        engine.prefill(ids[:64])
        row = {"tokens": n,
               "llama_cpp_prefill_s": median_time(lambda: llama_prefill(llm, ids), repeats),
               "ours_prefill_s": median_time(lambda: engine.prefill(ids), repeats),
               "llama_cpp_decode_step_s": llama_decode_step(llm, ids, steps),
               "ours_decode_step_s": ours_decode_step(engine, ids, steps),
               "ours_float_forward_decode_step_s": ours_decode_step(plain, ids, steps)}
        row["prefill_ratio_ours_over_llama_cpp"] = row["ours_prefill_s"] / row["llama_cpp_prefill_s"]
        row["decode_ratio_ours_over_llama_cpp"] = row["ours_decode_step_s"] / row["llama_cpp_decode_step_s"]
        rows.append(row)
    engine.close()
    plain.close()
    write("llamacpp", {"model": args.model, "gguf": builtin_gguf_file("smollm2").name, "dtype": engine.loaded.dtype,
                       "float_forward_dtype": plain.loaded.dtype,
                       "llama_cpp_quantization": "Q4_1 (the GGUF as shipped)", "rows": rows})


if __name__ == "__main__":
    main()
