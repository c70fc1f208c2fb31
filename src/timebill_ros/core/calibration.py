"""Profile the target model on this machine and fit the execution-time model.

A calibration is data: one JSON file per (model, dtype, threads, machine) holding the
fitted coefficients, every sample they came from, and the error on held-out lengths.
The engine's own prefill and decode_step are profiled, so what is timed is exactly
what runs in production (chunking and SnapKV scoring included).
"""
from __future__ import annotations

import json
import os
import platform
import random
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from timebill_ros.core import kernels
from timebill_ros.core.decode_step import calibration_tag
from timebill_ros.core.jobs import CancelToken
from timebill_ros.core.kernels import KernelChoice
from timebill_ros.core.paths import timebill_home
from timebill_ros.core.timing import TimingModel, bounding_margins, fit_decode, fit_prefill, mape

FORMAT_VERSION = 1


class CalibrationError(RuntimeError):
    """Missing or unreadable calibration; the message says how to make one."""


# The widest vector / matrix extension a CPU has, widest first: the kernels a calibration
# timed (and the decode kernels chosen by measurement) depend on it.
ISA_TAGS = (("amx_tile", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))


def machine_id(cpuinfo: str | None = None) -> str:
    """A name for this kind of machine: CPU model, core count and widest vector extension
    (stable across reboots). A virtual machine may name every CPU alike ("AMD EPYC" for a
    Zen 3 without AVX-512 and a Zen 4 with it): the extension tells them apart."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first CPU's fields
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    isa = next((tag for flag, tag in ISA_TAGS if flag in flags), "")
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu}-{os.cpu_count()}cpu-{isa}").strip("-").lower()


@dataclass(frozen=True)
class CalibrationKey:
    """What a calibration is valid for."""

    model: str
    dtype: str
    threads: int
    machine: str
    device: str = "cpu"  # where the model ran: a GPU's times say nothing about the CPU's
    step: str = ""  # the version of our own decode step, if one runs (decode_step.calibration_tag)

    @classmethod
    def for_model(cls, loaded) -> "CalibrationKey":
        """The key of a loaded model (a LoadedModel) on this machine."""
        quantization = loaded.dtype.partition("+")[2]
        return cls(loaded.name, loaded.dtype, loaded.threads, machine_id(), str(loaded.device),
                   calibration_tag(quantization))

    def filename(self) -> str:
        """The JSON file name under the calibration folder (CPU keys keep their old name)."""
        where = "" if self.device == "cpu" else f"__{self.device.replace(':', '')}"
        step = f"__{self.step}" if self.step else ""
        return f"{self.model}__{self.dtype}__t{self.threads}__{self.machine}{where}{step}.json"


def default_calibration_path(key: CalibrationKey) -> Path:
    """$TIMEBILL_HOME/calibration/<key>.json."""
    return timebill_home() / "calibration" / key.filename()


@dataclass
class Calibration:
    """Fitted coefficients, the samples behind them and their held-out error."""

    key: CalibrationKey
    timing: TimingModel
    prefill_samples: list[tuple[int, float]]
    decode_samples: list[tuple[int, float]]
    prefill_mape: float  # % on held-out prompt lengths
    decode_mape: float  # % on held-out cache lengths
    # The fit is a least-squares middle, exceeded by about half the samples; the planner
    # plans with fit * (1 + margin) + margin_s, which bounds every profiled sample
    # (timing.bounding_margins: a ratio from the longer samples, seconds for the rest).
    prefill_margin: float = 0.0
    decode_margin: float = 0.0
    prefill_margin_s: float = 0.0
    decode_margin_s: float = 0.0
    # Prefill with the length predictor running beside it, over prefill alone (>= 1; 1 when
    # no predictor was measured). The two threads share the cores, so the plan made beside
    # prefill must use the contended time.
    prefill_contention: float = 1.0
    # The decode kernels and K/V dtype chosen by measurement on this machine (core.kernels;
    # KernelChoice.to_dict), {} for a model without a lean decode step. The node runs them.
    kernels: dict = field(default_factory=dict)
    # The slowest piece of prefill between two cancel checks, as a share of its chunk's time
    # (measured on the last chunk of the longest profiled prompt); 0 when not measured. A kill
    # during prefill waits for at most one such piece (core.timing.prefill_kill_warning).
    prefill_piece_share: float = 0.0
    # (prompt tokens, alpha, seconds) of the eviction phase (gather + K/V dtype move)
    evict_samples: list[tuple[int, float, float]] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    settings: dict = field(default_factory=dict)

    def chunk_mismatch(self, prefill_chunk: int) -> str | None:
        """Why this calibration's prefill times do not fit an engine running PREFILL_CHUNK, or None."""
        timed = self.settings.get("prefill_chunk")
        return None if timed == prefill_chunk else f"it timed prefill in chunks of {timed} tokens, not {prefill_chunk}"

    def mismatches(self, key: CalibrationKey, longest: int) -> list[str]:
        """Why this calibration may not time a node that runs KEY and takes up to LONGEST tokens
        (prompt + answer): made for another model, weights, thread count, machine, device or
        decode step (a calibration_path set by hand), or profiled over shorter sequences (the
        fit is extrapolated beyond them). Empty when it fits."""
        out = [f"it was made for {name} '{theirs}', this node runs '{ours}'"
               for name, theirs, ours in zip(("model", "weights", "threads", "machine", "device", "decode step"),
                                             astuple(self.key), astuple(key)) if theirs != ours]
        profiled = self.settings.get("max_length")
        if profiled is not None and profiled < longest - 1:
            out.append(f"it profiled sequences up to {profiled} tokens, this node takes up to {longest}: "
                       "longer prompts are timed by extrapolating the fit")
        return out

    def kernel_choice(self) -> KernelChoice | None:
        """What this calibration chose to decode with (None when it chose nothing)."""
        return KernelChoice.from_dict(self.kernels) if self.kernels else None

    def kernel_mismatch(self, quantization: str, kv_dtype_pin: str) -> str | None:
        """Why the kernels this calibration chose and timed are not what a node pinning
        QUANTIZATION and KV_DTYPE_PIN may run, or None."""
        choice = self.kernel_choice()
        if choice is None:
            return None
        chosen = choice.chosen
        if chosen.weights not in kernels.WEIGHT_CANDIDATES.get(quantization, ()):
            return f"it chose decode weights {chosen.weights}, this node runs quantization '{quantization}'"
        if kv_dtype_pin not in ("auto", chosen.kv_dtype):
            return f"it chose a {chosen.kv_dtype} K/V cache, this node pins kv_cache_dtype {kv_dtype_pin}"
        return None

    def poor_fit_warning(self) -> str | None:
        """Why the fit may not time this machine (its held-out error above POOR_FIT_MAPE_PCT), or None.
        A profile disturbed by other work (measured: a few seconds of other processes during a
        6-minute calibration doubled some prefill samples, held-out error 29 %) plans with
        times that are wrong by as much; the fix is to profile again on an idle machine."""
        errors = {"prefill": self.prefill_mape, "decode step": self.decode_mape}
        poor = [f"{phase} {error:.0f} %" for phase, error in errors.items() if error > POOR_FIT_MAPE_PCT]
        if not poor:
            return None
        return (f"the calibration's held-out error is {' and '.join(poor)} (a clean profile here gives a few %): "
                "the machine was probably busy while it profiled, and plans will be off by as much; "
                "calibrate again when the machine is idle")

    def save(self, path: Path) -> Path:
        """Write the JSON (creating folders)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = asdict(self)
        data["format_version"] = FORMAT_VERSION
        path.write_text(json.dumps(data, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        """Read a calibration JSON; CalibrationError names the file and the fix."""
        fix = "run `timebill calibrate` for this model (see README, Calibration)"
        if not path.is_file():
            raise CalibrationError(f"no calibration at '{path}': {fix}")
        try:
            data = json.loads(path.read_text())
            return cls(
                key=CalibrationKey(**data["key"]),
                timing=TimingModel(**data["timing"]),
                prefill_samples=[tuple(s) for s in data["prefill_samples"]],
                decode_samples=[tuple(s) for s in data["decode_samples"]],
                prefill_mape=float(data["prefill_mape"]),
                decode_mape=float(data["decode_mape"]),
                prefill_margin=float(data.get("prefill_margin", 0.0)),
                decode_margin=float(data.get("decode_margin", 0.0)),
                prefill_margin_s=float(data.get("prefill_margin_s", 0.0)),
                decode_margin_s=float(data.get("decode_margin_s", 0.0)),
                prefill_contention=float(data.get("prefill_contention", 1.0)),
                kernels=data.get("kernels", {}),
                prefill_piece_share=float(data.get("prefill_piece_share", 0.0)),
                evict_samples=[tuple(x) for x in data.get("evict_samples", [])],
                created=data.get("created", ""),
                settings=data.get("settings", {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CalibrationError(f"calibration '{path}' is corrupt ({exc}): {fix}") from exc

    def planning_timing(self) -> TimingModel:
        """The fit raised by the margins (bounding every profiled sample) and prefill by the
        predictor's contention: what WCET and alpha* are computed from."""
        contention = max(1.0, self.prefill_contention)
        return self.timing.scaled((1.0 + self.prefill_margin) * contention, 1.0 + self.decode_margin,
                                  self.prefill_margin_s * contention, self.decode_margin_s)

    def fitted_timing(self) -> TimingModel:
        """The fit with prefill raised by the predictor's contention, no margins: the machine's
        pace as calibrated (what a served goal's phases are measured against)."""
        return self.timing.scaled(max(1.0, self.prefill_contention), 1.0)

    def age_seconds(self) -> float:
        """Seconds since this calibration was made."""
        try:
            return (datetime.now(timezone.utc) - datetime.fromisoformat(self.created)).total_seconds()
        except ValueError:
            return float("nan")


# Held-out error above which a calibration is reported as a poor fit (clean profiles of
# SmolLM2 here: 2-5 %; the time model's own target is 3 %).
POOR_FIT_MAPE_PCT = 10.0


def spread_lengths(low: int, high: int, count: int) -> list[int]:
    """COUNT distinct integer lengths spread evenly over [low, high]."""
    return sorted({int(round(x)) for x in np.linspace(low, high, count)})


def split_held_out(lengths: list[int]) -> tuple[list[int], list[int]]:
    """Every third length is held out for the error estimate; the rest are fitted."""
    held = lengths[1::3]
    return [n for n in lengths if n not in held], held


def busy_machine_warning(busy_cores: float, cores: int, threads: int) -> str | None:
    """Why profiling THREADS threads now would time contention, not the model; None when the
    BUSY_CORES (cores' worth of CPU other work used over the last second) leave them free.
    (Measured: with one of two cores taken by another process, a 2-thread calibration timed
    prefill ~20x slower than on the idle machine.)"""
    if cores - busy_cores >= threads - 0.5:
        return None
    return (f"the machine is busy ({busy_cores:.1f} of {cores} cores in use over the last second, {threads} threads "
            "wanted): the profile will time the contention and overstate every plan on a quiet machine; "
            "calibrate when it is idle, or with fewer threads")


def busy_cores_now(seconds: float = 1.0) -> float:
    """Cores' worth of CPU in use over the next SECONDS. Not the load average: its 1-minute
    window still counts work that has just ended (`make eval` calibrating its second node
    right after the first got a false warning every time)."""
    import psutil

    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


def call_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of REPEATS calls of FN."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of FN over REPEATS calls."""
    return statistics.median(call_times(fn, repeats))


@dataclass
class Profile:
    """What one sweep of prefills and decode steps measured (`profile_phases`)."""

    prefill: list[tuple[int, float]]  # (prompt tokens, mean seconds)
    decode: list[tuple[int, float]]  # (cached tokens, mean seconds of a step)
    piece_share: float = 1.0  # longest stretch between cancel checks / the last chunk's time
    evict_samples: list[tuple[int, float, float]] = field(default_factory=list)  # (tokens, alpha, s)


def profile_phases(engine, lengths: list[int], repeats: int, decode_steps: int,
                   tick: Callable[[], None] = lambda: None, evict_lengths: Iterable[int] = ()) -> Profile:
    """Mean prefill time of the engine at each prompt length (random token ids), and the
    mean time of the DECODE_STEPS decode steps that follow each prefill; from the same
    prefills, the slowest piece between cancel checks of the longest one (`piece_share`) and
    the eviction phase after those of EVICT_LENGTHS (`eviction_times`), so a first start pays
    for no extra prefill.

    Each round visits every length once, in a shuffled order: on a shared machine a slow
    spell then lands on one sample of many lengths (and the median drops it) instead of on
    every sample of a few neighbouring lengths, which would bend the fit. Decode steps are
    timed the way a goal runs them, right after its prefill, and in the same shuffled rounds;
    profiled in one sweep of a few seconds instead (as before), every decode sample fell in
    the same few seconds of this shared machine's changing speed (a benchmark minutes later
    then measured steps ~15 % above the fit at every length). A sample is labelled with the
    prompt length; its steps attend over up to DECODE_STEPS more entries, a few microseconds
    at these lengths."""
    gen = torch.Generator().manual_seed(0)
    vocab = engine.loaded.model.config.vocab_size
    prompts = {n: torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths}
    prefill_s: dict[int, list[float]] = {n: [] for n in lengths}
    step_s: dict[int, list[float]] = {n: [] for n in lengths}
    shares: list[float] = []
    evict_lengths, evict_samples = set(evict_lengths), []
    order, done = list(lengths), 0
    for round_ in range(repeats):
        random.Random(round_).shuffle(order)
        for n in order:
            clock, chunk_ends = _CheckClock(), []  # the cancel checks a goal's prefill makes, timed
            t0 = time.perf_counter()
            cache, logits = engine.prefill(prompts[n], clock, lambda s, e, sec: chunk_ends.append(time.perf_counter()))
            prefill_s[n].append(time.perf_counter() - t0)
            if n == lengths[-1]:
                shares.append(piece_share(clock.marks, chunk_ends))
            if n in evict_lengths:
                evict_samples += eviction_times(engine, cache, n)
            token = int(logits.argmax(-1))
            for i in range(decode_steps):
                t0 = time.perf_counter()
                token = int(engine.decode_step(cache, token, n + i).argmax(-1))  # one step of the decode loop
                step_s[n].append(time.perf_counter() - t0)
            done += 1
            if done % repeats == 0:  # the bar counts lengths
                tick()
    # Means, not medians: a WCET sums steps, and a sum follows the mean (the tail is the
    # online bound's job, core.conformal). The piece share is the smallest of the rounds': a
    # spike of the host is not the model's shape.
    return Profile([(n, statistics.fmean(prefill_s[n])) for n in lengths],
                   [(n, statistics.fmean(step_s[n])) for n in lengths], min(shares, default=1.0), evict_samples)


def calibrate(
    engine,
    key: CalibrationKey,
    *,
    points: int = 24,
    repeats: int = 3,
    decode_steps: int = 9,
    max_length: int | None = None,
    progress: Callable[[int], Callable[[], None]] | None = None,
    predictor_for: Callable[[TimingModel], object] | None = None,
) -> Calibration:
    """Profile prefill and decode over lengths up to the context limit, fit, and measure held-out MAPE.

    PREDICTOR_FOR(fit) gives the length predictor the node will run beside prefill (it may
    compress its input by the fitted prefill time); its slow-down of prefill is measured too.
    """
    limit = max_length or engine.loaded.context_limit
    lengths = spread_lengths(16, limit - 1, points)
    fit_n, held_n = split_held_out(lengths)
    contention_lengths = sorted({lengths[len(lengths) // 4], lengths[len(lengths) // 2], lengths[-1]})
    tick = progress(len(lengths) + 2 + (len(contention_lengths) if predictor_for else 0)) if progress \
        else (lambda: None)
    # Warm-up: first calls allocate and pick kernels; keep them out of the samples.
    engine.prefill(list(range(min(64, limit))))
    tick()
    engine.prefill(list(range(min(64, limit))))
    tick()
    profile = profile_phases(engine, lengths, repeats, decode_steps, tick, evict_lengths=contention_lengths)
    prefill, decode, evict_samples = profile.prefill, profile.decode, profile.evict_samples
    timing = with_eviction(_fit(prefill, decode, set(fit_n)), evict_samples)
    held_pre = [(n, t) for n, t in prefill if n in held_n]
    held_dec = [(n, t) for n, t in decode if n in held_n]
    contention = 1.0
    if predictor_for is not None:
        contention = measure_prefill_contention(engine, predictor_for(timing), contention_lengths, repeats, tick)
    # Margins from every sample, fitted and held out.
    pre_r, pre_d = bounding_margins([n for n, _ in prefill], [timing.prefill(n) for n, _ in prefill],
                                    [t for _, t in prefill])
    dec_r, dec_d = bounding_margins([n for n, _ in decode], [timing.decode_step(n) for n, _ in decode],
                                    [t for _, t in decode])
    return Calibration(
        key=key,
        timing=timing,
        prefill_samples=prefill,
        decode_samples=decode,
        prefill_mape=mape([timing.prefill(n) for n, _ in held_pre], [t for _, t in held_pre]),
        decode_mape=mape([timing.decode_step(n) for n, _ in held_dec], [t for _, t in held_dec]),
        prefill_margin=pre_r,
        decode_margin=dec_r,
        prefill_margin_s=pre_d,
        decode_margin_s=dec_d,
        prefill_contention=contention,
        prefill_piece_share=profile.piece_share,
        evict_samples=evict_samples,
        settings={"points": points, "repeats": repeats, "decode_steps": decode_steps, "max_length": limit,
                  "prefill_chunk": engine.config.prefill_chunk},
    )


def calibrate_machine(engine, key: CalibrationKey, *, quantization: str, kv_dtype_pin: str,
                      encode: Callable[[str], list[int]], stage: Callable[[str], None] = lambda name: None,
                      progress: Callable[[int], Callable[[], None]] | None = None, **profile) -> Calibration:
    """Choose the decode kernels by measurement (core.kernels), run them, then profile and fit
    (`calibrate`, with PROFILE's settings): what `timebill calibrate` and a node's first start do.
    STAGE(name) announces each of the two stages; PROGRESS counts the steps of each."""
    limit = profile.get("max_length") or engine.loaded.context_limit
    stage("choosing the decode kernels")
    choice = kernels.choose_kernels(engine, quantization, kv_dtype_pin, encode,
                                    sorted({min(512, limit - 1), min(2048, limit - 1)}), progress)
    if choice is not None:
        kernels.apply(engine.loaded, choice.chosen, quantization)
    stage("calibrating the time model")
    cal = calibrate(engine, key, progress=progress, **profile)
    cal.kernels = choice.to_dict() if choice else {}
    return cal


class _CheckClock(CancelToken):
    """A cancel token that is never set and notes the time of every check the engine makes."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: list[float] = []

    @property
    def is_set(self) -> bool:
        self.marks.append(time.perf_counter())
        return False


def piece_share(marks: list[float], chunk_ends: list[float]) -> float:
    """The longest stretch between two cancel checks (MARKS) in the last prefill chunk, as a
    share of that chunk's time (CHUNK_ENDS: when each chunk ended)."""
    start = chunk_ends[-2] if len(chunk_ends) > 1 else marks[0]
    marks = [t for t in marks if t >= start] + [chunk_ends[-1]]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return max(gaps) / (chunk_ends[-1] - start)


def calibrate_and_save(loaded, key: CalibrationKey, path: Path, config, *, predictor_path: str = "",
                       predictor_for: Callable[[TimingModel], object] | None = None,
                       warn: Callable[[str], None] = lambda message: None, settings: dict | None = None,
                       **machine) -> Calibration:
    """What `timebill calibrate` and a node's first start both do: warn (WARN) when the machine
    is busy, calibrate LOADED with an engine of CONFIG (`calibrate_machine`, MACHINE's settings;
    PREDICTOR_FOR only when PREDICTOR_PATH is set), record the predictor (and SETTINGS) and save to PATH."""
    from timebill_ros.core.engine import Engine
    from timebill_ros.core.predictor import FixedLengthPredictor

    if busy := busy_machine_warning(busy_cores_now(), os.cpu_count() or 1, loaded.threads):
        warn(busy)
    engine = Engine(loaded, TimingModel(0.0, 0.0, 0.0, 0.0, 0.0), FixedLengthPredictor(), config)
    try:
        cal = calibrate_machine(engine, key, predictor_for=predictor_for if predictor_path else None, **machine)
    finally:
        engine.close()
    cal.settings.update({"predictor_path": predictor_path, **(settings or {})})
    cal.save(path)
    return cal


def measure_prefill_contention(engine, predictor, lengths: list[int], repeats: int = 3,
                               tick: Callable[[], None] = lambda: None) -> float:
    """Prefill time with PREDICTOR.predict running in a second thread, as in a served job,
    over prefill alone: the largest ratio of medians over LENGTHS (at least 1)."""
    gen = torch.Generator().manual_seed(2)
    vocab = engine.loaded.model.config.vocab_size
    ratios = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for n in lengths:
            ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
            alone = median_time(lambda: engine.prefill(ids), repeats)
            beside = []
            for _ in range(repeats):
                future = pool.submit(predictor.predict, ids)
                t0 = time.perf_counter()
                engine.prefill(ids)
                beside.append(time.perf_counter() - t0)
                future.result()
            ratios.append(statistics.median(beside) / alone)
            tick()
    return max(1.0, max(ratios))


def _fit(prefill: list[tuple[int, float]], decode: list[tuple[int, float]], fit_lengths: set[int]) -> TimingModel:
    """Fits by relative error: a plan's bound is the fit times a ratio (core.conformal), which
    only means the same at every length when the fit is as right, relatively, for short prompts."""
    pre = np.array([s for s in prefill if s[0] in fit_lengths])
    dec = np.array([s for s in decode if s[0] in fit_lengths])
    a, b, c = fit_prefill(pre[:, 0], pre[:, 1], relative=True)
    p, q = fit_decode(dec[:, 0], dec[:, 1], relative=True)
    return TimingModel(a=a, b=b, c=c, p=p, q=q)


EVICT_ALPHA = 0.5  # the ratio the eviction phase is profiled at (the gather barely depends on it)


def eviction_times(engine, prefilled, n: int) -> list[tuple[int, float, float]]:
    """(N, alpha, seconds) of the eviction phase on copies of a PREFILLED cache of N prompt
    tokens: at EVICT_ALPHA (SnapKV gather, then the K/V dtype move) and at 0 (the move alone)."""
    import copy

    from timebill_ros.core.eviction import evict

    samples = []
    for alpha in (EVICT_ALPHA, 0.0):
        cache = copy.deepcopy(prefilled)
        t0 = time.perf_counter()
        if alpha > 0.0:
            evict(cache, engine.scorer.scores, alpha, engine.press.window)
        engine.prepare_for_decode(cache)
        engine.loaded.synchronize()
        samples.append((n, alpha, time.perf_counter() - t0))
    return samples


def with_eviction(timing: TimingModel, samples: list[tuple[int, float, float]]) -> TimingModel:
    """TIMING with the eviction phase's linear terms fitted on SAMPLES (absolute least squares:
    these are milliseconds beside seconds of prefill)."""
    from dataclasses import replace

    fits = {}
    for evicting in (True, False):
        rows = np.array([(n, t) for n, alpha, t in samples if (alpha > 0.0) == evicting])
        fits[evicting] = fit_decode(rows[:, 0], rows[:, 1]) if len(rows) else (0.0, 0.0)
    return replace(timing, e1=fits[True][0], e0=fits[True][1], v1=fits[False][0], v0=fits[False][1])


def load_or_calibrate(engine, points: int = 24, announce: Callable[[str], None] = lambda message: None,
                      max_length: int | None = None, repeats: int = 3, kv_dtype_pin: str = "auto") -> Calibration:
    """The calibration of the engine's model where the node looks for it, made and saved now
    (with the decode-kernel choice, `calibrate_machine`) if there is none, if it does not reach
    MAX_LENGTH tokens, if it timed prefill in other chunks than the engine runs or chose kernels
    KV_DTYPE_PIN excludes; the engine then plans with it and runs the kernels it chose."""
    from timebill_ros.core.model import encode_prompt

    key = CalibrationKey.for_model(engine.loaded)
    quantization = engine.loaded.dtype.partition("+")[2]
    path = default_calibration_path(key)
    want = min(max_length or engine.loaded.context_limit, engine.loaded.context_limit)
    try:
        cal = Calibration.load(path)
        if cal.settings.get("max_length", 0) < want - 1:
            announce(f"the calibration of {key.model} reaches {cal.settings.get('max_length')} tokens, "
                     f"{want} are needed: calibrating again")
            raise CalibrationError("too short")
        if mismatch := cal.chunk_mismatch(engine.config.prefill_chunk) or cal.kernel_mismatch(quantization,
                                                                                                  kv_dtype_pin):
            announce(f"the calibration of {key.model} does not fit: {mismatch}; calibrating again")
            raise CalibrationError(mismatch)
    except CalibrationError:
        announce(f"calibrating {key.model} on this machine up to {want} tokens (once)")
        cal = calibrate_machine(engine, key, quantization=quantization, kv_dtype_pin=kv_dtype_pin,
                                encode=lambda text: encode_prompt(engine.loaded.tokenizer, text),
                                points=points, repeats=repeats, max_length=want)
        cal.save(path)
    if choice := cal.kernel_choice():
        kernels.apply(engine.loaded, choice.chosen, quantization)
        announce(choice.summary())
    engine.timing = cal.planning_timing()
    return cal
