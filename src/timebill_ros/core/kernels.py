"""Which decode kernels and K/V-cache dtype to run on this machine, chosen by measuring.

A choice right on one CPU can be 2x wrong on another: the float16 K/V cache that made the
decode step ~10 % faster on an AMX Xeon made it 1.5-2x slower on an AMD EPYC without
AVX-512 FP16 (each attention read converts it). So calibration times the candidates on the
machine itself, side by side in alternating rounds, and keeps the fastest whose answers stay
within the quality bound; the node then runs what its calibration chose.

Candidates (for a model with a lean decode step, core/decode_step.py):
- K/V cache dtype: float32, bfloat16, float16 (parameter kv_cache_dtype pins one);
- decode weights: under quantization auto-decode, int4 where exact (else int8) or int8 for
  every matrix; int8-decode and int4-decode pin theirs.
Quality bound: a candidate is kept only if, fed the tokens the model's own float32 forward
chose greedily on fixed prompts, it picks the same next token at >= QUALITY_BOUND of the
positions (teacher-forced top-1 agreement: one forward per candidate, no answers to score).

Prefill weights stay in the model's dtype: prefill on float32 already runs ahead of
llama.cpp on both CPUs seen, so bfloat16 prefill is not among the candidates.
"""
from __future__ import annotations

import copy
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from timebill_ros.core.decode_step import LEAN_QUANTIZATIONS, LeanDecodeStep
from timebill_ros.core.kv_cache import convert_cache

KV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The decode weights each lean quantization may run: auto-decode measures two.
WEIGHT_CANDIDATES = {"auto-decode": ("auto-decode", "int8-decode"), "int8-decode": ("int8-decode",),
                     "int4-decode": ("int4-decode",)}
# Teacher-forced top-1 agreement with the float32 forward a candidate must reach. The shipped
# default of the Xeon (int4 where exact, float16 K/V), whose task-suite quality is published,
# agrees at 0.98-1.0 on these prompts; int8 rounding and a bfloat16 cache stay above 0.95.
QUALITY_BOUND = 0.95
QUALITY_PROMPTS = (
    "The cup is in the sink and the plate is on the table. Where is the cup? Answer in one sentence.",
    "List the steps a mobile robot takes to open a door, one per line.",
)
QUALITY_TOKENS = 32


@dataclass(frozen=True)
class Kernels:
    """One decode configuration: the lean quantization its weights come from and the K/V dtype."""

    weights: str  # a key of LEAN_QUANTIZATIONS
    kv_dtype: str  # a key of KV_DTYPES

    def label(self) -> str:
        """e.g. 'auto-decode, K/V float32'."""
        return f"{self.weights}, K/V {self.kv_dtype}"


@dataclass
class KernelChoice:
    """What calibration chose and why: every candidate's median step time (seconds, per
    profiled cache length), its quality agreement, and the pins it respected."""

    chosen: Kernels
    step_seconds: dict[str, dict[int, float]]  # label -> {cache length: median seconds}
    # label -> teacher-forced top-1 agreement with the float32 forward, checked in order of speed
    # until one reached the bound (the slower ones are not checked)
    agreement: dict[str, float]
    pinned: dict[str, str]

    def to_dict(self) -> dict:
        """Plain JSON (stored in the calibration file)."""
        out = asdict(self)
        out["step_seconds"] = {label: {str(n): t for n, t in steps.items()}
                               for label, steps in self.step_seconds.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "KernelChoice":
        """The inverse of to_dict."""
        return cls(Kernels(**data["chosen"]),
                   {label: {int(n): t for n, t in steps.items()} for label, steps in data["step_seconds"].items()},
                   dict(data["agreement"]), dict(data.get("pinned", {})))

    def summary(self) -> str:
        """One line for the log: the choice and each candidate's time against it."""
        def mean(label: str) -> float:
            return statistics.fmean(self.step_seconds[label].values())

        best = mean(self.chosen.label())
        def quality(label: str) -> str:
            return f"agreement {self.agreement[label]:.2f}" if label in self.agreement else "slower, not checked"

        others = ", ".join(f"{label} {mean(label) / best:.2f}x ({quality(label)})"
                           for label in sorted(self.step_seconds, key=mean) if label != self.chosen.label())
        lengths = "/".join(str(n) for n in self.step_seconds[self.chosen.label()])
        return (f"decode kernels chosen by measurement: {self.chosen.label()} ({1000 * best:.1f} ms a step, mean "
                f"over {lengths} cached tokens){'; others: ' + others if others else ''}")


def candidates(quantization: str, kv_dtype_pin: str = "auto") -> list[Kernels]:
    """Every configuration the pins allow for a lean QUANTIZATION (empty for a model without a lean step)."""
    weights = WEIGHT_CANDIDATES.get(quantization, ())
    kv = tuple(KV_DTYPES) if kv_dtype_pin == "auto" else (kv_dtype_pin,)
    return [Kernels(w, d) for w in weights for d in kv]


def choose(step_seconds: dict[str, dict[int, float]], agreement: dict[str, float], options: list[Kernels],
           bound: float = QUALITY_BOUND) -> Kernels:
    """The fastest option (mean of its median step times) whose agreement reaches BOUND; when
    none does, the most faithful one (quality first: the bound is not traded for speed)."""
    good = [k for k in options if agreement[k.label()] >= bound]
    if not good:
        return max(options, key=lambda k: agreement[k.label()])
    return min(good, key=lambda k: statistics.fmean(step_seconds[k.label()].values()))


def build_step(model: torch.nn.Module, kernels: Kernels, built: dict[str, LeanDecodeStep] | None = None
               ) -> LeanDecodeStep:
    """The lean step KERNELS names (weights packed once per quantization when BUILT caches them)."""
    built = {} if built is None else built
    if kernels.weights not in built:
        built[kernels.weights] = LeanDecodeStep(model, *LEAN_QUANTIZATIONS[kernels.weights])
    return built[kernels.weights].with_kv_dtype(KV_DTYPES[kernels.kv_dtype])  # shares the packed weights


def measure_steps(engine, steps_by_label: dict[str, LeanDecodeStep], lengths: list[int], rounds: int = 4,
                  steps: int = 6, tick: Callable[[], None] = lambda: None) -> dict[str, dict[int, float]]:
    """Median decode-step seconds of each step at each cache length, measured in alternating,
    shuffled rounds (a slow spell of the host lands on every candidate alike); TICK after each
    candidate's turn in a round."""
    gen = torch.Generator().manual_seed(3)
    vocab = engine.loaded.model.config.vocab_size
    prefilled = {}
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        cache, _ = engine.prefill(ids)
        prefilled[n] = cache
    samples: dict[str, dict[int, list[float]]] = {label: {n: [] for n in lengths} for label in steps_by_label}
    order = list(steps_by_label)
    for round_ in range(rounds):
        random.Random(round_).shuffle(order)
        for label in order:
            step = steps_by_label[label]
            for n in lengths:
                cache = copy.deepcopy(prefilled[n])
                convert_cache(cache, step.kv_dtype)  # as the engine does after eviction
                token = 1
                for i in range(steps):
                    t0 = time.perf_counter()
                    token = int(step(cache, token, n + i).argmax(-1))
                    samples[label][n].append(time.perf_counter() - t0)
            tick()
    return {label: {n: statistics.median(ts) for n, ts in by_n.items()} for label, by_n in samples.items()}


@torch.inference_mode()
def agreement(engine, step: LeanDecodeStep, references: list[tuple[list[int], list[int]]]) -> float:
    """Share of positions where STEP, fed each reference's greedy tokens, picks the same next token."""
    hits = total = 0
    for prompt, tokens in references:
        cache, _ = engine.prefill(prompt)
        convert_cache(cache, step.kv_dtype)  # as the engine does after eviction
        for i in range(len(tokens) - 1):
            hits += int(step(cache, tokens[i], len(prompt) + i).argmax(-1)) == tokens[i + 1]
            total += 1
    return hits / max(1, total)


@torch.inference_mode()
def reference_answers(engine, encode: Callable[[str], list[int]]) -> list[tuple[list[int], list[int]]]:
    """Each quality prompt's ids and QUALITY_TOKENS greedy tokens from the model's own forward."""
    model, device = engine.loaded.model, engine.loaded.device
    out = []
    for text in QUALITY_PROMPTS:
        prompt = encode(text)
        cache, logits = engine.prefill(prompt)
        tokens = [int(logits.argmax(-1))]
        for i in range(QUALITY_TOKENS - 1):
            step = model(input_ids=torch.tensor([[tokens[-1]]], device=device),
                         position_ids=torch.tensor([[len(prompt) + i]], device=device), cache=cache, use_cache=True)
            tokens.append(int(step.logits[0, -1].argmax()))
        out.append((prompt, tokens))
    return out


def choose_kernels(engine, quantization: str, kv_dtype_pin: str, encode: Callable[[str], list[int]],
                   lengths: list[int], progress: Callable[[int], Callable[[], None]] | None = None
                   ) -> KernelChoice | None:
    """Measure every allowed candidate on this machine and choose (None without a lean step)."""
    options = candidates(quantization, kv_dtype_pin)
    if engine.loaded.lean_step is None or not options:
        return None
    built = {quantization: engine.loaded.lean_step}  # the weights packed at load
    steps = {k.label(): build_step(engine.loaded.model, k, built) for k in options}
    rounds = 4
    tick = progress(1 + len(steps) * (1 + rounds)) if progress else (lambda: None)
    references = reference_answers(engine, encode)
    tick()
    seconds = measure_steps(engine, steps, lengths, rounds=rounds, tick=tick)
    # Quality in order of speed, until one passes: the faster ones that fail are skipped,
    # the slower ones need no check (a first start spends its seconds on timing instead).
    quality: dict[str, float] = {}
    for k in sorted(options, key=lambda k: statistics.fmean(seconds[k.label()].values())):
        if not quality or max(quality.values()) < QUALITY_BOUND:
            quality[k.label()] = agreement(engine, steps[k.label()], references)
        tick()
    checked = [k for k in options if k.label() in quality]
    pinned = {"quantization": quantization, **({"kv_cache_dtype": kv_dtype_pin} if kv_dtype_pin != "auto" else {})}
    return KernelChoice(choose(seconds, quality, checked), seconds, quality, pinned)


def apply(loaded, kernels: Kernels, quantization: str) -> None:
    """Run KERNELS as LOADED's decode step from now on (LOADED was loaded with QUANTIZATION,
    whose packed weights are reused when KERNELS names them)."""
    loaded.lean_step = build_step(loaded.model, kernels, {quantization: loaded.lean_step})
