"""The vocabulary shared by the engine, the node and the evaluation: statuses,
requests, events, results and the cancel token. Plain data, no torch, no ROS."""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import asdict, dataclass, field

from timebill_ros.core.planner import Plan


class Status(enum.IntEnum):
    """Terminal status of a job; the values match TimedGenerate.Result's constants."""

    SUCCEEDED = 1
    KILLED_AT_DEADLINE = 2
    SKIPPED = 3
    INFEASIBLE = 4
    REJECTED = 5
    CANCELED = 6
    COMPLETED_LATE = 7


class OverrunPolicy(str, enum.Enum):
    """What happens when a job runs past its deadline (TimeBill section 5)."""

    KILL = "kill"  # the job is terminated at its deadline, its response empty
    SKIP_NEXT = "skip_next"  # the job finishes late; jobs arriving meanwhile are skipped


class OnInfeasible(str, enum.Enum):
    """What to do when even alpha_max cannot guarantee the budget."""

    # INFEASIBLE without running anything when the predicted prefill alone misses the budget;
    # otherwise prefill starts beside the prediction and the job stops INFEASIBLE as soon as
    # the plan shows that even alpha_max cannot fit (before any eviction or decode step).
    REJECT = "reject"
    BEST_EFFORT = "best_effort"  # run at alpha_max; the deadline still applies


class CancelToken:
    """Set once by whoever stops a job (deadline timer, client cancel, shutdown), or by
    itself once an armed deadline passes."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self.status: Status | None = None
        self.reason = ""
        self._deadline: float | None = None
        self._deadline_reason = ""

    def cancel(self, status: Status, reason: str) -> bool:
        """Stop the job with STATUS; the first call wins. Returns True if this call set it."""
        with self._lock:  # the timer, a client and the engine's own checks may race
            if self._event.is_set():
                return False
            self.status, self.reason = status, reason
            self._event.set()
            return True

    def arm_deadline(self, deadline: float, reason: str) -> None:
        """Stop with KILLED_AT_DEADLINE by itself once time.monotonic() reaches DEADLINE.

        The engine checks the token before every decode step and, in prefill, before every
        attention block and MLP and between the halves of a later chunk's attention, so an
        armed kill lands within one of those pieces after the deadline,
        instead of waiting for the next tick of a control timer (up to a period later) and
        for that timer's callback to get the interpreter from the busy engine thread."""
        self._deadline, self._deadline_reason = deadline, reason

    @property
    def was_set(self) -> bool:
        """True once someone stopped the job, not counting an armed deadline that passed
        unobserved (the node's queue then says the deadline passed while the goal waited)."""
        return self._event.is_set()

    @property
    def is_set(self) -> bool:
        """True once the job has been told to stop (or its armed deadline has passed)."""
        if self._deadline is not None and not self._event.is_set() and time.monotonic() >= self._deadline:
            self.cancel(Status.KILLED_AT_DEADLINE, self._deadline_reason)
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Block until the token is set or TIMEOUT seconds pass; True when set."""
        if self._deadline is not None:  # wake at an armed deadline rather than after it
            timeout = min(timeout, max(0.0, self._deadline - time.monotonic()))
        self._event.wait(timeout)
        return self.is_set


@dataclass(frozen=True)
class Sampling:
    """How each response token is chosen. temperature 0 is greedy (argmax, as the paper);
    otherwise softmax(logits / temperature) cut to the smallest set of tokens holding
    top_p of the probability, drawn with a generator seeded by `seed` (negative: unseeded)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = -1


@dataclass
class Request:
    """One generation job as the engine sees it (already validated and tokenized)."""

    prompt_ids: list[int]
    budget: float  # seconds, counted from `accepted_at`
    accepted_at: float = field(default_factory=time.monotonic)  # time.monotonic() at acceptance
    max_new_tokens: int = 128
    k: float = 5.0
    alpha_max: float = 0.95
    fixed_alpha: float | None = None  # baselines: a fixed ratio instead of the planner's
    on_infeasible: OnInfeasible = OnInfeasible.BEST_EFFORT
    ignore_eos: bool = False  # benchmarks: run to max_new_tokens (the worst case) whatever the tokens
    # The response ends at the first of these strings, like at EOS (the string is not kept).
    # The plan is unchanged: it bounds the length, whatever ends the response.
    stop: tuple[str, ...] = ()
    # The caller's own estimate of the response length (0 = ask the length predictor): a robot
    # that wants a one-word answer knows; the evaluation's true-length upper bound uses it too.
    expected_tokens: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    # A structured answer's compiled grammar (core.structured.Constraint), or None for free text.
    constraint: object | None = None

    @property
    def deadline(self) -> float:
        """Monotonic time by which the result is due."""
        return self.accepted_at + self.budget


@dataclass
class Event:
    """Progress of a running job, forwarded by the node as action feedback."""

    phase: str  # "prefill" | "planned" | "evicted" | "decode" | "replanned"
    elapsed: float
    predicted_tokens: int = 0
    worst_case_tokens: int = 0
    wcet: float = 0.0
    alpha: float = 0.0
    tokens: list[int] = field(default_factory=list)
    worst_case_source: str = ""  # where N_W came from: predictor, caller, schema


@dataclass
class Timings:
    """Measured seconds of each phase."""

    queue: float = 0.0
    prefill: float = 0.0
    predict: float = 0.0
    evict: float = 0.0
    decode: float = 0.0
    total: float = 0.0
    # Seconds from the start of decoding to each generated token (the first comes from the
    # prefill's logits): what eval.traces replays a decode from.
    token_s: list[float] = field(default_factory=list)


@dataclass
class Result:
    """The outcome of one job."""

    status: Status
    reason: str = ""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    kept_prompt_tokens: int = 0
    plan: Plan | None = None  # the plan decoding ran with (re-made after prefill with the real time spent)
    first_plan: Plan | None = None  # the plan made beside prefill with the predicted prefill time
    replans: int = 0  # evictions made during decoding because the live steps ran slower than planned
    timings: Timings = field(default_factory=Timings)
    deadline_margin: float = 0.0  # end of job minus deadline, seconds
    # The slow-down factors per phase the job was planned with (1 = as calibrated; see core.online)
    prefill_factor: float = 1.0
    decode_factor: float = 1.0

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        out = asdict(self)
        out["status"] = self.status.name
        return out
