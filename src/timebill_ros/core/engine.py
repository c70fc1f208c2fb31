"""One request end to end: prefill || predict -> plan -> evict -> decode (TimeBill section 4).

The engine owns no thread policy and no ROS: callers pass a CancelToken (set by a
deadline timer, a client cancel or a shutdown) and get Events while the job runs.
Every baseline is a setting of this one engine: vanilla is fixed_alpha = 0, a fixed
ratio is fixed_alpha = x, TimeBill is the planner's alpha*.
"""
from __future__ import annotations

import copy
import logging
import statistics
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from timebill_ros.core.attention import split_chunks
from timebill_ros.core.eviction import SnapKV, SnapKVScorer, attention_modules, evict, evict_again, mlp_modules
from timebill_ros.core.jobs import CancelToken, Event, OnInfeasible, Request, Result, Status, Timings
from timebill_ros.core.kv_cache import convert_cache, new_cache
from timebill_ros.core.length_probe import LayerTap
from timebill_ros.core.model import LoadedModel
from timebill_ros.core.online import OnlineTiming, PhaseWork, TimingSnapshot
from timebill_ros.core.planner import Plan, plan
from timebill_ros.core.predictor import LengthPredictor
from timebill_ros.core.replan import live_timing, paced_by_prefill, replan_floor, replan_keep, tokens_left
from timebill_ros.core.sampling import StopStrings, TokenChooser
from timebill_ros.core.timing import TimingModel

log = logging.getLogger(__name__)
EventSink = Callable[[Event], None]


class Stopped(Exception):
    """Raised inside a job when its cancel token is set or the plan rejects it."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


# The pieces the cancel checks cut a layer of a later prefill chunk into, for the start-up
# warning (core.timing.prefill_kill_warning): the attention block in two halves, the MLP.
# (MLPs in row slices would cut it further; left out: one trial run showed them slower, within
# the benchmark's run-to-run noise on this host, so undecided.)
PREFILL_PIECES_PER_LAYER = 3


@dataclass
class EngineConfig:
    """Engine-wide settings (per-request ones live on Request)."""

    snapkv_window: int = 32
    snapkv_kernel: int = 5
    prefill_chunk: int = 1024  # tokens per prefill forward (the cancel token is also checked between layers)
    event_period: float = 0.05  # seconds between decode events (phase changes always emit)
    fallback_prediction_tokens: int = 64  # N_hat when the length predictor fails on a prompt
    # In-goal re-plan: when, at the pace of the last `replan_steps` decode steps, the rest of the
    # worst case (or of an answer grown past it, core.replan.tokens_left) would end past the
    # deadline, evict again (0 turns it off; baselines with a fixed alpha never do).
    replan_steps: int = 8

    def validate(self) -> None:
        """Raise ValueError naming the setting when the combination cannot work."""
        if self.snapkv_window < 1 or self.snapkv_kernel < 1 or self.snapkv_kernel % 2 == 0:
            raise ValueError(f"snapkv_window must be >= 1 and snapkv_kernel odd and >= 1, got "
                             f"{self.snapkv_window} / {self.snapkv_kernel}")
        if self.prefill_chunk < self.snapkv_window:
            # SnapKV scores come from the last chunk's queries; a chunk shorter than the
            # observation window would leave nothing to score and nothing could be evicted.
            raise ValueError(f"prefill_chunk ({self.prefill_chunk}) must be >= snapkv_window "
                             f"({self.snapkv_window})")
        if self.fallback_prediction_tokens < 1:
            raise ValueError(f"fallback_prediction_tokens must be >= 1, got {self.fallback_prediction_tokens}")


@dataclass
class PrefillMemo:
    """The last prompt's prefill (its cache, last logits, SnapKV scores and chunk times), kept
    to serve the same prompt again: eval.traces runs one prompt once per alpha of a grid, and
    every run shares the one prefill. Evaluation only: a hit takes a copy's time, not a prefill's."""

    ids: tuple[int, ...] = ()
    cache: object = None
    logits: torch.Tensor | None = None
    scores: dict = field(default_factory=dict)
    chunks: list[tuple[int, int, float]] = field(default_factory=list)
    hidden: torch.Tensor | None = None  # the length probe's tapped state (Engine.tap)
    hits: int = 0


class Engine:
    """Time-budgeted greedy generation on one model; one job at a time."""

    def __init__(
        self,
        loaded: LoadedModel,
        timing: TimingModel,
        predictor: LengthPredictor,
        config: EngineConfig | None = None,
    ) -> None:
        self.loaded, self.timing, self.predictor = loaded, timing, predictor
        self.config = config or EngineConfig()
        self.config.validate()
        self.press = SnapKV(self.config.snapkv_window, self.config.snapkv_kernel)
        self.scorer = SnapKVScorer(self.press).attach(loaded.model, loaded.name)
        # Checked before every attention block and every MLP while prefill runs: a kill lands
        # within half a layer's time instead of one chunk's.
        self._prefill_cancel: CancelToken | None = None
        self._layer_checks = [m.register_forward_pre_hook(self._check_cancel)
                              for m in attention_modules(loaded.model) + mlp_modules(loaded.model)]
        self.predictor_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="length-predictor")
        # A predictor that reads the target's own prefill (core.length_probe) gets its layer tapped.
        reads = getattr(predictor, "reads_layer", None)
        self.tap = LayerTap(loaded.model, reads, armed=lambda: self.scorer.armed) if reads is not None else None
        # When set, goals are planned with its live model and feed it their measured phases;
        # otherwise they are planned with the static `timing`.
        self.online: OnlineTiming | None = None
        # When set, a prompt prefilled last time is served from it (evaluation: eval.traces).
        self.prefill_memo: PrefillMemo | None = None

    def planning_snapshot(self) -> TimingSnapshot:
        """The timing model the next goal is planned with."""
        return self.online.snapshot() if self.online else TimingSnapshot(self.timing, 1.0, 1.0)

    def close(self) -> None:
        """Release the hooks, the predictor thread and the online timing's load probe."""
        self.scorer.detach()
        if self.tap is not None:
            self.tap.detach()
        for handle in self._layer_checks:
            handle.remove()
        self.predictor_pool.shutdown(wait=False, cancel_futures=True)
        if self.online is not None:
            self.online.close()

    def warm_up(self, encode: Callable[[str], list[int]] | None = None) -> None:
        """Run two short jobs end to end (prefill beside a prediction, plan, eviction, the cache's
        dtype change, decode steps) at two prompt lengths: the first calls of each allocate and
        pick kernels (about a second for SmolLM2 here), which must not land on the first goal.
        ENCODE (text -> prompt ids through the chat template) warms the tokenizer too."""
        window = self.press.window
        texts = ("Warm up.", "Warm up the kernels of every phase with a longer prompt. " * 4)
        for text in texts:
            ids = encode(text) if encode else list(range(1, window + len(text) // 4))
            ids = ids if len(ids) > window else ids + list(range(1, window + 2 - len(ids)))
            self.run(Request(ids, budget=1e6, max_new_tokens=4, fixed_alpha=0.5, ignore_eos=True), CancelToken())
        self.loaded.synchronize()
        if self.online is not None:  # warm-up timings are not the machine's pace
            self.online.reset()

    def _check_cancel(self, module: torch.nn.Module, args: tuple) -> None:
        _raise_if_cancelled(self._prefill_cancel)

    # ---------------------------------------------------------------- phases
    @torch.inference_mode()
    def prefill(self, ids: list[int], cancel: CancelToken | None = None,
                on_chunk: Callable[[int, int, float], None] | None = None) -> tuple[object, torch.Tensor]:
        """Run the prompt through the model in chunks; return (cache, logits of the last position).

        SnapKV scores are recorded during the last chunk, which is made at least one
        observation window long. The cancel token is honoured before every attention block
        and MLP and between the two halves of a later chunk's attention (raising Stopped), so
        a kill does not wait for the running chunk.
        ON_CHUNK(start, end, seconds) is called after each chunk that completed.
        """
        memo = self.prefill_memo
        if memo is not None and memo.ids == tuple(ids):
            return self._from_memo(memo, on_chunk)
        cache = new_cache(self.loaded.model.config)  # grows in place: a decode step copies nothing
        if self.tap is not None:
            self.tap.last = None  # a prefill cut short leaves nothing to read
        self.scorer.scores.clear()
        bounds = chunk_bounds(len(ids), self.config.prefill_chunk, self.press.window)
        logits, chunks = None, []
        self._prefill_cancel = cancel
        try:
            for i, (start, end) in enumerate(bounds):
                _raise_if_cancelled(cancel)
                self.scorer.armed = i == len(bounds) - 1  # and the length probe's tap with it
                t0 = time.monotonic()
                # A chunk after cached ones: attention without a mask, the cancel token checked
                # between its two halves as well as before every attention block and MLP.
                with split_chunks(lambda: _raise_if_cancelled(cancel)):
                    out = self.loaded.model(
                        input_ids=torch.tensor([ids[start:end]], device=self.loaded.device), cache=cache,
                        use_cache=True, logits_to_keep=1,
                    )
                cache, logits = out.cache, out.logits[:, -1]
                self.loaded.synchronize()  # the chunk's time, not its launch's, and prefill's end is real
                chunks.append((start, end, time.monotonic() - t0))
                if on_chunk is not None:
                    on_chunk(*chunks[-1])
        finally:
            self.scorer.armed = False
            self._prefill_cancel = None
        if memo is not None:  # a copy: eviction and decoding change the cache in place
            memo.ids, memo.cache, memo.logits, memo.chunks = tuple(ids), copy.deepcopy(cache), logits.clone(), chunks
            memo.scores = {layer: score.clone() for layer, score in self.scorer.scores.items()}
            memo.hidden = self.tap.last if self.tap is not None else None
        return cache, logits

    def _from_memo(self, memo: PrefillMemo, on_chunk: Callable[[int, int, float], None] | None
                   ) -> tuple[object, torch.Tensor]:
        """The memo's prefill again: a copy of its cache and scores, its chunks reported as measured."""
        memo.hits += 1
        self.scorer.scores.clear()
        self.scorer.scores.update({layer: score.clone() for layer, score in memo.scores.items()})
        if self.tap is not None:
            self.tap.last = memo.hidden
        for chunk in memo.chunks:
            if on_chunk is not None:
                on_chunk(*chunk)
        return copy.deepcopy(memo.cache), memo.logits.clone()

    def prepare_for_decode(self, cache: object, check: Callable[[], None] = lambda: None) -> None:
        """Move the cache to the decode step's K/V dtype, layer by layer, calling CHECK between
        layers (a no-op when the step keeps the model's dtype or the cache cannot convert)."""
        step = self.loaded.lean_step
        convert_cache(cache, step.kv_dtype if step is not None else None, check)

    @torch.inference_mode()
    def decode_step(self, cache: object, token: int, position: int) -> torch.Tensor:
        """One decode step at the true position id; returns the next-token logits (the device is
        synchronized, so a clock read after it times the step)."""
        if self.loaded.lean_step is not None:
            return self.loaded.lean_step(cache, token, position)
        device = self.loaded.device
        out = self.loaded.model(input_ids=torch.tensor([[token]], device=device),
                                position_ids=torch.tensor([[position]], device=device), cache=cache, use_cache=True)
        self.loaded.synchronize()
        return out.logits[:, -1]

    # ------------------------------------------------------------------- job
    def run(self, request: Request, cancel: CancelToken, on_event: EventSink | None = None) -> Result:
        """Run one job to a terminal Result; never raises for a stopped job."""
        return self.run_job(Job(self, request, cancel, on_event or (lambda event: None)))

    @staticmethod
    def run_job(job: Job) -> Result:
        """Run JOB (made for this engine) to a terminal Result; never raises for a stopped job."""
        try:
            return job.run()
        except Stopped as stop:
            return job.finish(stop.status, stop.reason)


def chunk_bounds(n: int, chunk: int, min_last: int) -> list[tuple[int, int]]:
    """[start, end) pieces of at most `chunk` tokens, except the last, which is at least
    `min_last` long (or the whole prompt when it is shorter)."""
    ends = list(range(chunk, n, chunk)) + [n]
    while len(ends) > 1 and ends[-1] - ends[-2] < min_last:
        ends.pop(-2)
    starts = [0] + ends[:-1]
    return list(zip(starts, ends))


def _raise_if_cancelled(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.is_set:
        raise Stopped(cancel.status, cancel.reason)


class Job:
    """The state of one run; split out so each phase is a short method (eval.traces runs a
    subclass that evicts again at a given step, to measure what a re-plan does)."""

    def __init__(self, engine: Engine, request: Request, cancel: CancelToken, emit: EventSink) -> None:
        self.engine, self.request, self.cancel, self.emit = engine, request, cancel, emit
        self.started = time.monotonic()
        self.timings = Timings(queue=self.started - request.accepted_at)
        self.plan: Plan | None = None
        self.first_plan: Plan | None = None  # made beside prefill, with the predicted prefill time
        self.done = False
        self.tokens: list[int] = []
        self.kept = len(request.prompt_ids)
        self.choose = TokenChooser(request.sampling)
        self.stops = StopStrings(engine.loaded.tokenizer, request.stop)
        self.snapshot = engine.planning_snapshot()  # one timing model for all of this job's plans
        self.timing = self.snapshot.timing
        self.constraint = request.constraint  # a structured answer's grammar, or None
        if self.constraint is not None:  # its mask is part of every decode step
            self.timing = replace(self.timing, q=self.timing.q + self.constraint.step_cost)
        # For the online timing model; prefill counts as cut short until it completes.
        self.prefill_work, self.decode_work = PhaseWork(complete=False), PhaseWork()
        self.kept_scores: dict = {}  # SnapKV scores of the kept prompt entries, for a re-plan's eviction
        self.recent_steps: list[float] = []  # seconds of the decode steps since the last (re-)plan
        self.replans = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.request.accepted_at

    def event(self, phase: str) -> None:
        p = self.plan
        self.emit(
            Event(
                phase=phase,
                elapsed=self.elapsed(),
                predicted_tokens=p.predicted_tokens if p else 0,
                worst_case_tokens=p.worst_case_tokens if p else 0,
                wcet=p.wcet if p else 0.0,
                alpha=p.alpha if p else 0.0,
                tokens=list(self.tokens),
                worst_case_source=self.worst_case_source() if p else "",
            )
        )

    def worst_case_source(self) -> str:
        """Where N_W came from: the schema (a bound on the answer), the caller's estimate, or the predictor."""
        if self.constraint is not None and self.constraint.longest_tokens is not None:
            return "schema"
        return "caller" if self.request.expected_tokens > 0 else "predictor"

    def make_plan(self, n_hat: int, t_fixed: float) -> Plan:
        r, e = self.request, self.engine
        k = r.k
        if self.worst_case_source() == "schema":  # N_W = the schema's longest answer, not k x N_hat
            n_hat, k = self.constraint.longest_tokens, 1.0
        return plan(
            self.timing,
            n_x=len(r.prompt_ids),
            n_hat=n_hat,
            budget=r.budget,
            t_fixed=t_fixed,
            k=k,
            alpha_max=r.alpha_max,
            n_max=r.max_new_tokens,
            min_kept=e.press.window,
            fixed_alpha=r.fixed_alpha,
        )

    def predict(self) -> int:
        """N_hat: the caller's own estimate when it gave one, else the predictor's; a predictor
        failure falls back to the configured length, never fails the job."""
        if self.request.expected_tokens > 0:
            return self.request.expected_tokens
        try:
            return max(1, int(self.engine.predictor.predict(self.request.prompt_ids)))
        except Exception as exc:  # noqa: BLE001 - any predictor bug must leave the goal running
            fallback = self.engine.config.fallback_prediction_tokens
            log.warning("length predictor failed (%s: %s); planning with N_hat = %d", type(exc).__name__, exc, fallback)
            return fallback

    def predict_and_plan(self) -> tuple[int, float]:
        """Runs beside prefill: predict N_hat, then make the FIRST plan with the *predicted*
        prefill time (contention with this thread included, see Calibration)."""
        t0 = time.monotonic()
        n_hat = self.predict()
        t_predict = time.monotonic() - t0
        t_prefill = self.timing.prefill(len(self.request.prompt_ids))
        # A prediction that finishes within prefill is hidden behind it and costs nothing.
        t_fixed = (self.started - self.request.accepted_at) + t_prefill + max(0.0, t_predict - t_prefill)
        if self.done or self.cancel.is_set:
            return n_hat, t_predict  # the job already ended: no late plan, no feedback after its result
        self.plan = self.first_plan = self.make_plan(n_hat, t_fixed)
        self.event("planned")
        if not self.plan.feasible and self.request.on_infeasible is OnInfeasible.REJECT:
            self.cancel.cancel(Status.INFEASIBLE, infeasible_reason(self.plan))
        return n_hat, t_predict

    def read_prefill(self, n_hat: int) -> int:
        """N_hat after prefill: a predictor that reads the target's prefill (core.length_probe)
        replaces its prior with what the tapped layer says; a caller's own estimate stays, and a
        probe failure keeps the prior, never fails the job."""
        tap = self.engine.tap
        if tap is None or self.request.expected_tokens > 0:
            return n_hat
        try:
            return max(1, int(self.engine.predictor.predict_from_hidden(tap.last)))
        except Exception as exc:  # noqa: BLE001 - any predictor bug must leave the goal running
            log.warning("length probe failed (%s: %s); planning with its prior N_hat = %d",
                        type(exc).__name__, exc, n_hat)
            return n_hat

    def reject_if_prefill_alone_misses(self) -> None:
        """on_infeasible=reject: when the predicted prefill alone (the least any answer costs)
        cannot fit the budget, stop before anything runs."""
        if self.request.on_infeasible is not OnInfeasible.REJECT:
            return
        t_prefill = self.timing.prefill(len(self.request.prompt_ids))
        if (self.started - self.request.accepted_at) + t_prefill > self.request.budget:
            raise Stopped(Status.INFEASIBLE, f"budget {self.request.budget:.3f}s cannot be guaranteed: the "
                          f"predicted prefill alone takes {t_prefill:.3f}s; raise the budget or shorten the prompt")

    def reject_if_replan_misses(self) -> None:
        """on_infeasible=reject: the plan re-made after prefill (real time spent) shows that even
        alpha_max cannot fit; stop before any eviction or decode step."""
        p = self.plan
        if p.feasible or self.request.on_infeasible is not OnInfeasible.REJECT:
            return
        spent = self.elapsed()
        raise Stopped(Status.INFEASIBLE, f"after prefill: needs {p.wcet - spent:.3f}s more at alpha={p.alpha:.2f} "
                      f"for {_planned_tokens(p)}, has {p.budget - spent:.3f}s; "
                      "raise the budget, lower max_new_tokens or k")

    def wait_for_prediction(self, future: Future) -> tuple[int, float]:
        """The predictor's (N_hat, seconds), honouring the cancel token while it is still running."""
        while not future.done():
            _raise_if_cancelled(self.cancel)
            self.cancel.wait(0.002)
        return future.result()

    def run(self) -> Result:
        _raise_if_cancelled(self.cancel)
        self.reject_if_prefill_alone_misses()
        self.event("prefill")
        future = self.engine.predictor_pool.submit(self.predict_and_plan)
        t0 = time.monotonic()
        try:
            # A kill here raises at once: it never waits for the predictor thread.
            cache, logits = self.engine.prefill(self.request.prompt_ids, self.cancel, self.count_chunk)
            self.prefill_work.complete = True
        finally:
            self.timings.prefill = time.monotonic() - t0
        n_hat, self.timings.predict = self.wait_for_prediction(future)
        _raise_if_cancelled(self.cancel)
        n_hat = self.read_prefill(n_hat)
        # Re-plan with what is now known: the real time spent so far replaces predictions, and
        # a prefill far slower than planned says the decode steps will be too.
        self.timing = self.paced_by_prefill(self.timings.prefill)
        self.plan = self.make_plan(n_hat, self.elapsed())
        self.reject_if_replan_misses()
        self.evict(cache)
        self.decode(cache, logits)
        late = time.monotonic() > self.request.deadline
        if late:
            return self.finish(Status.COMPLETED_LATE, "finished after the deadline")
        return self.finish(Status.SUCCEEDED, "")

    def paced_by_prefill(self, seconds: float) -> TimingModel:
        """This job's timing with its decode steps (and eviction) slowed as much as its own
        prefill of SECONDS ran past the planned one when that is a change of load
        (core.replan.paced_by_prefill). A load that began after the first plan then evicts
        enough at once, instead of after `replan_steps` slow steps; the paper's single plan
        (replan_steps 0) keeps the planned pace."""
        if not self.engine.config.replan_steps or self.request.fixed_alpha is not None:
            return self.timing
        paced = paced_by_prefill(self.timing, self.timing.prefill(len(self.request.prompt_ids)), seconds)
        if paced is not self.timing:
            log.info("prefill ran %.1fx its plan: decode planned as much slower",
                     seconds / self.timing.prefill(len(self.request.prompt_ids)))
        return paced

    def count_chunk(self, start: int, end: int, seconds: float) -> None:
        """A completed prefill chunk, against the unmargined fit's time for it."""
        if self.engine.online is not None:
            base = self.engine.online.base
            self.prefill_work.add(base.prefill(end) - (base.prefill(start) if start else 0.0), seconds)

    def count_step(self, seconds: float) -> None:
        """A completed decode step; the timing model's i-th step attends over kept + i - 1 entries."""
        if self.engine.online is not None:
            self.decode_work.add(self.engine.online.base.decode_step(self.kept + len(self.tokens) - 1), seconds)

    def evict(self, cache: object) -> None:
        """Evict alpha of the prompt's cache, then move the cache to the decode step's K/V dtype:
        both layer by layer with the cancel token checked between layers (the conversion used to
        happen inside the first decode step, which no kill could cut)."""
        t0 = time.monotonic()
        check = lambda: _raise_if_cancelled(self.cancel)  # noqa: E731 - a callback
        if self.plan.alpha > 0.0:
            self.kept = evict(cache, self.engine.scorer.scores, self.plan.alpha, self.engine.press.window, check,
                              self.kept_scores)
        self.engine.prepare_for_decode(cache, check)
        self.engine.loaded.synchronize()
        self.timings.evict = time.monotonic() - t0
        self.event("evicted")

    def decode(self, cache: object, logits: torch.Tensor) -> None:
        t0 = time.monotonic()
        eos = self.engine.loaded.eos_token_ids
        position = len(self.request.prompt_ids)
        period, last_event = self.engine.config.event_period, 0.0
        try:
            token = self.next_token(logits)
            while True:
                self.tokens.append(token)
                self.timings.token_s.append(time.monotonic() - t0)
                if len(self.tokens) >= self.request.max_new_tokens or self.ends_response(token, eos):
                    break
                _raise_if_cancelled(self.cancel)
                if time.monotonic() - last_event >= period:
                    self.event("decode")
                    last_event = time.monotonic()
                    _raise_if_cancelled(self.cancel)  # the feedback may have waited for the node's locks
                step_started = time.monotonic()
                token = self.next_token(self.engine.decode_step(cache, token, position))
                self.count_step(time.monotonic() - step_started)
                position += 1
                self.recent_steps.append(time.monotonic() - step_started)
                self.replan_if_late(cache)
        finally:
            self.timings.decode = time.monotonic() - t0

    def replan_if_late(self, cache: object) -> None:
        """The paper plans once. When the live decode steps run so much slower than planned, or
        the answer runs so far past the N_W planned (core.replan.tokens_left), that the rest of
        the worst case would end past the deadline, plan alpha again from the live step time
        and evict again (SnapKV scores of the kept prompt entries; every decoded entry stays),
        so a slow spell or a long answer that shows itself after the plan can still end complete."""
        window, r = self.engine.config.replan_steps, self.request
        if not window or len(self.recent_steps) < window or r.fixed_alpha is not None:
            return
        remaining = tokens_left(self.plan.worst_case_tokens, len(self.tokens), r.max_new_tokens)
        if remaining < 2:
            return
        live = statistics.fmean(self.recent_steps[-window:])
        decoded = len(self.tokens) - 1  # entries decoding added to the cache
        keep = replan_keep(self.timing, kept=self.kept, floor=replan_floor(len(r.prompt_ids), r.alpha_max,
                                                                            self.engine.press.window),
                           decoded=decoded, remaining=remaining, left=r.deadline - time.monotonic(), live_step_s=live)
        if keep is None:
            return
        self.recent_steps.clear()
        timing = live_timing(self.timing, live, self.kept + decoded)
        if keep >= self.kept or not self.evict_to(cache, keep):
            return  # nothing left to evict, or a prompt too short to have been scored
        self.replans += 1
        wcet = self.elapsed() + timing.decode(self.kept, 0.0, remaining + 1)
        self.plan = replace(self.plan, alpha=1.0 - self.kept / len(r.prompt_ids), wcet=wcet,
                            feasible=wcet <= r.budget, worst_case_tokens=len(self.tokens) + remaining)
        self.event("replanned")

    def evict_to(self, cache: object, keep: int) -> bool:
        """A second eviction while decoding: keep the KEEP best-scored of the kept prompt
        entries (and every decoded one). False when the prompt was too short to be scored."""
        scores = self.kept_scores or dict(self.engine.scorer.scores)  # nothing evicted yet: the prompt's
        if len(scores) != len(cache.layers):
            return False
        self.kept_scores = scores
        self.kept = evict_again(cache, scores, self.kept, keep, lambda: _raise_if_cancelled(self.cancel))
        return True

    def next_token(self, logits: torch.Tensor) -> int:
        """The token chosen from LOGITS; a structured answer's grammar masks them first and follows it."""
        if self.constraint is None:
            return self.choose(logits)
        token = self.choose(self.constraint.mask(logits))
        if token not in self.engine.loaded.eos_token_ids:
            self.constraint.consume(token)
        return token

    def ends_response(self, token: int, eos: set[int]) -> bool:
        """EOS, a stop string or a complete structured answer ends the response (benchmarks may ignore EOS)."""
        if self.request.ignore_eos:
            return False
        if self.constraint is not None and self.constraint.complete:
            return True
        return token in eos or self.stops.hit(self.tokens)

    def finish(self, status: Status, reason: str) -> Result:
        self.done = True  # a predictor thread still running stays quiet from now on
        if self.engine.online is not None:
            self.prefill_work.spent = self.timings.prefill
            self.prefill_work.whole = self.engine.online.base.prefill(len(self.request.prompt_ids))
            self.engine.online.observe(self.prefill_work, self.decode_work, self.snapshot)
        if status in (Status.SUCCEEDED, Status.COMPLETED_LATE) and self.constraint is not None \
                and not self.constraint.accepted:  # would not parse: no partial structured answer
            status, reason = Status.INFEASIBLE, (f"the structured answer did not complete within max_new_tokens "
                                                 f"({self.request.max_new_tokens}); raise it or bound the schema")
        now = time.monotonic()
        self.timings.total = now - self.request.accepted_at
        keep_text = status in (Status.SUCCEEDED, Status.COMPLETED_LATE)
        tokenizer = self.engine.loaded.tokenizer
        return Result(
            status=status,
            reason=reason,
            text=self.stops.cut(tokenizer.decode(self.tokens, skip_special_tokens=True)) if keep_text else "",
            token_ids=list(self.tokens) if keep_text else [],
            prompt_tokens=len(self.request.prompt_ids),
            kept_prompt_tokens=self.kept,
            plan=self.plan,
            first_plan=self.first_plan,
            replans=self.replans,
            timings=self.timings,
            deadline_margin=now - self.request.deadline,
            prefill_factor=self.snapshot.prefill_factor,
            decode_factor=self.snapshot.decode_factor,
        )


class EvictsAgainAt(Job):
    """A run of REQUEST (a fixed alpha) that evicts again, down to KEEP prompt entries, once AT
    tokens are decoded: what the in-goal re-plan does there. The traces comparison measures it
    (eval.traces.measure_second_evictions); the node never runs it."""

    def __init__(self, engine: Engine, request: Request, at: int, keep: int) -> None:
        super().__init__(engine, request, CancelToken(), lambda event: None)
        self.at, self.keep_at = at, keep

    def replan_if_late(self, cache: object) -> None:
        if len(self.tokens) == self.at and self.keep_at < self.kept and self.evict_to(cache, self.keep_at):
            self.replans += 1


def infeasible_reason(p: Plan) -> str:
    """Why a plan cannot meet its budget, in words a user can act on."""
    return (
        f"budget {p.budget:.3f}s cannot be guaranteed: WCET {p.wcet:.3f}s even at alpha={p.alpha:.2f} "
        f"for {_planned_tokens(p)}; raise the budget, lower max_new_tokens or k"
    )


def _planned_tokens(p: Plan) -> str:
    """N_W in words, not called a worst case: with k < 1 (a goal or the node) it is below N_hat."""
    return f"the {p.worst_case_tokens} tokens planned (N_W = k x N_hat, at most max_new_tokens)"
