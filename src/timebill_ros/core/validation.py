"""Turn a goal's raw fields into a Request, or a clear reason why not. No ROS, no torch.

Every check a robot user could trip over lives here, so the node, the CLI and the
evaluation reject bad input the same way and the fuzz tests can reach it directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from timebill_ros.core.jobs import OnInfeasible, OverrunPolicy, Request, Sampling
from timebill_ros.core.planner import K_MIN

ROLES = ("system", "user", "assistant")
MAX_PROMPT_CHARS = 1_000_000  # refuse to even tokenize beyond this (about 250k tokens)
MAX_STOP_STRINGS, MAX_STOP_CHARS = 8, 256  # each checked on every decode step


class InvalidGoal(ValueError):
    """A goal the node must reject; str(exc) is the reason sent back to the client."""


@dataclass(frozen=True)
class Limits:
    """Node-wide bounds and defaults that a goal is checked against."""

    max_prompt_tokens: int = 2048
    context_limit: int = 2048
    max_new_tokens: int = 512
    default_max_new_tokens: int = 128
    k: float = 5.0
    alpha_max: float = 0.95
    overrun_policy: OverrunPolicy = OverrunPolicy.KILL
    on_infeasible: OnInfeasible = OnInfeasible.BEST_EFFORT
    system_prompt: str = ""  # put first when a goal brings no system message of its own
    temperature: float = 0.0
    top_p: float = 1.0
    json_schema: str = ""  # structured answers by default (a goal's own schema or grammar wins)
    grammar: str = ""


@dataclass
class Goal:
    """The fields of a TimedGenerate goal, as plain Python."""

    prompt: str = ""
    budget: float = 0.0
    chat_roles: Sequence[str] = field(default_factory=list)
    chat_contents: Sequence[str] = field(default_factory=list)
    max_new_tokens: int = 0
    k: float = -1.0
    alpha_max: float = -1.0
    fixed_alpha: float = -1.0
    overrun_policy: str = ""
    on_infeasible: str = ""
    system_prompt: str = ""  # "" = the node's system_prompt
    stop: Sequence[str] = field(default_factory=list)
    temperature: float = -1.0  # negative = the node's; 0 = greedy
    top_p: float = -1.0  # negative = the node's
    seed: int = -1  # negative = unseeded sampling
    expected_response_tokens: int = 0  # 0 = the node's length predictor
    ignore_eos: bool = False  # worst-case runs: max_new_tokens tokens whatever they are
    json_schema: str = ""  # a JSON Schema the answer must follow ("" = the node's)
    grammar: str = ""  # or a grammar: Lark, GBNF, or "regex:..." ("" = the node's)


def messages_of(goal: Goal, system_prompt: str = "") -> list[dict[str, str]]:
    """The chat messages a goal asks for (one user turn for a plain prompt), after the goal's
    system prompt, else SYSTEM_PROMPT, unless the messages hold a system message already."""
    roles, contents = list(goal.chat_roles), list(goal.chat_contents)
    if len(roles) != len(contents):
        raise InvalidGoal(f"chat_roles has {len(roles)} entries but chat_contents has {len(contents)}")
    if roles and goal.prompt:
        raise InvalidGoal("give either prompt or chat messages, not both")
    if not roles:
        roles, contents = ["user"], [goal.prompt]
    bad = [r for r in roles if r not in ROLES]
    if bad:
        raise InvalidGoal(f"unknown chat role {bad[0]!r}; use one of {', '.join(ROLES)}")
    text = "".join(contents)
    if not text.strip():
        raise InvalidGoal("empty prompt")
    if "\x00" in text:
        raise InvalidGoal("prompt contains a NUL character")
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidGoal(f"prompt of {len(text)} characters is over the {MAX_PROMPT_CHARS} character limit")
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
    system = goal.system_prompt or system_prompt
    if system and "system" not in roles:
        messages.insert(0, {"role": "system", "content": system})
    return messages


def sampling_of(goal: Goal, limits: Limits) -> Sampling:
    """Temperature and top_p (the node's when negative) and the seed, checked."""
    temperature = _override(goal.temperature, limits.temperature, "temperature", 0.0, 100.0, False)
    top_p = _override(goal.top_p, limits.top_p, "top_p", 0.0, 1.0, False)
    if top_p == 0.0:
        raise InvalidGoal("top_p must be > 0 (1 keeps the whole distribution)")
    return Sampling(float(temperature), float(top_p), int(goal.seed))


def stops_of(goal: Goal) -> tuple[str, ...]:
    """The stop strings, checked: a few, each non-empty and short."""
    stops = tuple(goal.stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidGoal(f"{len(stops)} stop strings; at most {MAX_STOP_STRINGS}")
    for s in stops:
        if not s or len(s) > MAX_STOP_CHARS:
            raise InvalidGoal(f"stop strings must be 1..{MAX_STOP_CHARS} characters, got {s!r}"[:200])
    return stops


def _override(value: float, default: float, name: str, low: float, high: float, high_open: bool) -> float:
    if not math.isfinite(value):
        raise InvalidGoal(f"{name} must be finite, got {value}")
    if value < 0:
        return default
    if value < low or value > high or (high_open and value == high):
        bracket = ")" if high_open else "]"
        raise InvalidGoal(f"{name} must be in [{low}, {high}{bracket} (or negative for the default), got {value}")
    return value


def build_request(
    goal: Goal,
    limits: Limits,
    encode: Callable[[list[dict[str, str]]], list[int]],
    accepted_at: float,
    constrain: Callable[[str, str], object] | None = None,
) -> tuple[Request, OverrunPolicy]:
    """Validate GOAL against LIMITS and tokenize it with ENCODE; CONSTRAIN(json_schema, grammar)
    compiles a structured answer's constraint (raising ValueError with the compiler's message).
    Raise InvalidGoal with a reason."""
    if not math.isfinite(goal.budget) or goal.budget <= 0:
        raise InvalidGoal(f"budget must be a finite number of seconds > 0, got {goal.budget}")
    if goal.max_new_tokens > limits.max_new_tokens:
        raise InvalidGoal(f"max_new_tokens {goal.max_new_tokens} is over the node's limit of {limits.max_new_tokens}")
    max_new = goal.max_new_tokens or limits.default_max_new_tokens
    k = _override(goal.k, limits.k, "k", K_MIN, 1000.0, False)
    alpha_max = _override(goal.alpha_max, limits.alpha_max, "alpha_max", 0.0, 1.0, True)
    fixed = _override(goal.fixed_alpha, -1.0, "fixed_alpha", 0.0, 1.0, True)
    policy = _choice(goal.overrun_policy, limits.overrun_policy, OverrunPolicy, "overrun_policy")
    on_infeasible = _choice(goal.on_infeasible, limits.on_infeasible, OnInfeasible, "on_infeasible")
    sampling, stop = sampling_of(goal, limits), stops_of(goal)
    if not 0 <= goal.expected_response_tokens <= max_new:
        raise InvalidGoal(f"expected_response_tokens must be in [0, max_new_tokens = {max_new}], "
                          f"got {goal.expected_response_tokens}")
    constraint = constraint_of(goal, limits, constrain)
    ids = encode(messages_of(goal, limits.system_prompt))
    room = min(limits.max_prompt_tokens, limits.context_limit - max_new)
    if len(ids) > room:
        raise InvalidGoal(
            f"prompt has {len(ids)} tokens; this node takes at most {room} "
            f"(max_prompt_tokens={limits.max_prompt_tokens}, context {limits.context_limit} "
            f"minus max_new_tokens {max_new})"
        )
    request = Request(
        prompt_ids=ids,
        budget=float(goal.budget),
        accepted_at=accepted_at,
        max_new_tokens=int(max_new),
        k=float(k),
        alpha_max=float(alpha_max),
        fixed_alpha=None if fixed < 0 else float(fixed),
        on_infeasible=on_infeasible,
        stop=stop,
        sampling=sampling,
        expected_tokens=int(goal.expected_response_tokens),
        ignore_eos=bool(goal.ignore_eos),
        constraint=constraint,
    )
    return request, policy


def constraint_of(goal: Goal, limits: Limits, constrain: Callable[[str, str], object] | None) -> object | None:
    """The compiled constraint of the goal's (else the node's) json_schema or grammar; None for free text."""
    schema, grammar = goal.json_schema, goal.grammar
    if not schema and not grammar:
        schema, grammar = limits.json_schema, limits.grammar
    if not schema and not grammar:
        return None
    if constrain is None:
        raise InvalidGoal("structured answers (json_schema, grammar) are not available on this node")
    if goal.ignore_eos:
        raise InvalidGoal("ignore_eos cannot be combined with json_schema or grammar (the grammar ends the answer)")
    try:
        return constrain(schema, grammar)
    except ValueError as exc:
        raise InvalidGoal(str(exc)) from None


def _choice(value: str, default, enum_type, name: str):
    if not value:
        return default
    try:
        return enum_type(value.strip().lower())
    except ValueError:
        options = ", ".join(repr(e.value) for e in enum_type)
        raise InvalidGoal(f"unknown {name} {value!r}; use one of {options} or '' for the node default") from None
