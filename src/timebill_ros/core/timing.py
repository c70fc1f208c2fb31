"""The execution-time model of the target LLM on this machine (TimeBill section 2).

    prefill:          t_prefill(N_x) = a*N_x^2 + b*N_x + c
    one decode step:  t_dec(N_kv)    = p*N_kv + q
    decode of N tokens after evicting alpha of the prompt once, after prefill:
        sum_{i=1}^{N-1} p*((1-alpha)*N_x + i - 1) + q
    (the first response token comes out of prefill, so N tokens cost N-1 decode steps).
    the eviction phase between them (SnapKV gather, then the cache's move to the decode
    step's K/V dtype):  e0 + e1*N_x when alpha > 0, v0 + v1*N_x at alpha = 0 (the move alone).

Coefficients are fitted by least squares on profiled timings (see `calibration`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import nnls


@dataclass(frozen=True)
class TimingModel:
    """Fitted coefficients; all times in seconds."""

    a: float
    b: float
    c: float
    p: float
    q: float
    e0: float = 0.0
    e1: float = 0.0
    v0: float = 0.0
    v1: float = 0.0

    def evict(self, n_x: float, alpha: float) -> float:
        """Predicted time of the eviction phase: the gather when alpha > 0, plus the K/V move."""
        return self.e0 + self.e1 * n_x if alpha > 0.0 else self.v0 + self.v1 * n_x

    def prefill(self, n_x: float) -> float:
        """Predicted prefill time of an N_x-token prompt."""
        return self.a * n_x * n_x + self.b * n_x + self.c

    def decode_step(self, n_kv: float) -> float:
        """Predicted time of one decode step that attends over N_kv cached entries."""
        return self.p * n_kv + self.q

    def decode(self, n_x: float, alpha: float, n_tokens: int) -> float:
        """Predicted decode time for N tokens after evicting alpha of the prompt (closed-form sum)."""
        steps = max(int(n_tokens) - 1, 0)
        kept = (1.0 - alpha) * n_x
        return steps * (self.p * kept + self.q) + self.p * steps * (steps - 1) / 2.0

    def end_to_end(self, n_x: float, alpha: float, n_tokens: int) -> float:
        """Predicted prefill + decode time."""
        return self.prefill(n_x) + self.decode(n_x, alpha, n_tokens)

    def goal_time(self, n_x: float, alpha: float, n_tokens: int) -> float:
        """Predicted prefill + eviction phase + decode: a whole goal as the plan's WCET counts it."""
        return self.prefill(n_x) + self.evict(n_x, alpha) + self.decode(n_x, alpha, n_tokens)

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON."""
        return asdict(self)

    def scaled(self, prefill_factor: float, decode_factor: float, prefill_add: float = 0.0,
               decode_add: float = 0.0) -> "TimingModel":
        """The same model with prefill and decode-step times multiplied by the factors, then
        raised by the additive seconds (the form stays a*N^2 + b*N + c and p*N + q)."""
        return TimingModel(self.a * prefill_factor, self.b * prefill_factor, self.c * prefill_factor + prefill_add,
                           self.p * decode_factor, self.q * decode_factor + decode_add,
                           # the eviction phase is memory traffic like a decode step: it follows decode
                           self.e0 * decode_factor, self.e1 * decode_factor, self.v0 * decode_factor,
                           self.v1 * decode_factor)


def slowest_chunk(timing: TimingModel, chunk: int, context: int) -> float:
    """Predicted time of the slowest prefill chunk: the last one of a full context, where
    attention spans the most positions. A kill during prefill waits for the running chunk,
    so this bounds how late it can land beyond the control tick."""
    chunk = min(chunk, context)
    return timing.prefill(context) - timing.prefill(context - chunk) + timing.c


def largest_chunk_within(timing: TimingModel, seconds: float, context: int, step: int = 64) -> int:
    """The largest multiple of STEP whose slowest chunk fits in SECONDS (at least STEP)."""
    best = step
    for chunk in range(step, context + 1, step):
        if slowest_chunk(timing, chunk, context) <= seconds:
            best = chunk
    return best


def prefill_kill_warning(timing: TimingModel, chunk: int, context: int, period: float, layers: int,
                         pieces_per_layer: int, piece_share: float | None = None) -> str | None:
    """Why a kill during prefill could land more than one decode step after its deadline with
    this CHUNK, and the chunk that would not; None when the chunk is fine.

    A Kill job's token is armed with its deadline (the control timer, one PERIOD at most,
    backs it up); the engine stops at its next cancel check. The model's LAYERS are cut into
    PIECES_PER_LAYER pieces by those checks (no default: the engine's is
    `engine.PREFILL_PIECES_PER_LAYER`, before the attention block and the MLP and between the
    halves of a later chunk's attention), so the
    wait is one piece of the slowest chunk: PIECE_SHARE of it, as calibration measured the
    slowest piece (an MLP holds about two thirds of a layer's weights), or an equal share of the
    LAYERS * PIECES_PER_LAYER pieces when not measured. It must not exceed one decode step at
    that context."""
    # A chunk is this many of its slowest pieces long.
    pieces = 1.0 / piece_share if piece_share else pieces_per_layer * layers
    step = timing.decode_step(context)
    piece = slowest_chunk(timing, chunk, context) / pieces
    if piece <= step:
        return None
    fit = largest_chunk_within(timing, step * pieces, context)
    return (f"prefill_chunk {chunk}: a kill during prefill waits for the running piece of a layer (part of an "
            f"attention block or MLP), up to {1000 * piece:.0f} ms here, longer than one decode step "
            f"({1000 * step:.0f} ms), so it can land later than one decode step after its deadline (and than one "
            f"control period, {1000 * period:.0f} ms, plus one step); prefill_chunk <= {fit} keeps it within "
            "(calibrate again after changing it)")


def _nonnegative_least_squares(design: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0. Time never falls as a prompt grows; an
    unconstrained fit on noisy samples can get a negative N^2 term and then predict
    shorter (even negative) times for long prompts, exactly where the plan matters.
    Columns are scaled to unit norm first so the solver sees a well-conditioned problem."""
    scale = np.linalg.norm(design, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(design / scale, np.asarray(seconds, dtype=float))
    return coef / scale


def fit_prefill(n_x: np.ndarray, seconds: np.ndarray, relative: bool = False) -> tuple[float, float, float]:
    """Non-negative least-squares a, b, c of a*N^2 + b*N + c; RELATIVE minimizes the relative
    error instead (rows weighted by 1/seconds), so short prompts are fitted as well as long
    ones: an absolute fit let the intercept go to ~0 and a 47-token prompt ran 2.1x its prediction."""
    n = np.asarray(n_x, dtype=float)
    design, target = np.stack([n * n, n, np.ones_like(n)], axis=1), np.asarray(seconds, dtype=float)
    if relative:
        design, target = design / target[:, None], np.ones_like(target)
    coef = _nonnegative_least_squares(design, target)
    return float(coef[0]), float(coef[1]), float(coef[2])


def fit_decode(n_kv: np.ndarray, seconds: np.ndarray, relative: bool = False) -> tuple[float, float]:
    """Non-negative least-squares p, q of p*N_kv + q (RELATIVE: as in fit_prefill); also fits
    the eviction phase's linear terms."""
    n = np.asarray(n_kv, dtype=float)
    design, target = np.stack([n, np.ones_like(n)], axis=1), np.asarray(seconds, dtype=float)
    if relative:
        design, target = design / target[:, None], np.ones_like(target)
    coef = _nonnegative_least_squares(design, target)
    return float(coef[0]), float(coef[1])


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(predicted - measured) / measured) * 100.0)


def bounding_margins(lengths: np.ndarray, predicted: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(relative r, absolute d seconds) such that predicted * (1 + r) + d >= every measurement.

    r is the worst relative overrun among the longer half of the samples, where time is long
    enough for a ratio to mean something; d then covers what is left, which is where short
    samples' jitter lands. A ratio alone, taken over every sample, lets one 16-token prompt
    whose few milliseconds came out 3x the fit triple every plan (seen: +203 %)."""
    lengths, predicted, measured = (np.asarray(x, dtype=float) for x in (lengths, predicted, measured))
    long = lengths >= np.median(lengths)
    r = worst_overrun(predicted[long], measured[long])
    d = float(max(0.0, np.max(measured - predicted * (1.0 + r))))
    return r, d


def worst_overrun(predicted: np.ndarray, measured: np.ndarray) -> float:
    """The largest share by which a measurement exceeded its prediction (0 when none did)."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(max(0.0, np.max(measured / predicted - 1.0)))
