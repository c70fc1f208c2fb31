"""Every kind of bad goal is rejected with a reason that names the problem."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timebill_ros.core.jobs import OnInfeasible, OverrunPolicy
from timebill_ros.core.validation import Goal, InvalidGoal, Limits, build_request

LIMITS = Limits(max_prompt_tokens=100, context_limit=256, max_new_tokens=64, default_max_new_tokens=32)


def encode(messages):
    return list("".join(m["content"] for m in messages).encode())  # one token per byte


def build(**fields):
    return build_request(Goal(**{"prompt": "hello", "budget": 1.0, **fields}), LIMITS, encode, accepted_at=0.0)


def test_a_good_goal_gets_defaults():
    request, policy = build()
    assert request.prompt_ids == list(b"hello") and request.budget == 1.0
    assert request.max_new_tokens == 32 and request.k == 5.0 and request.alpha_max == 0.95
    assert request.fixed_alpha is None and policy is OverrunPolicy.KILL
    assert request.on_infeasible is OnInfeasible.BEST_EFFORT


def test_overrides_are_taken():
    request, policy = build(max_new_tokens=10, k=2.0, alpha_max=0.5, fixed_alpha=0.25,
                            overrun_policy="SKIP_NEXT", on_infeasible="reject")
    assert (request.max_new_tokens, request.k, request.alpha_max, request.fixed_alpha) == (10, 2.0, 0.5, 0.25)
    assert policy is OverrunPolicy.SKIP_NEXT and request.on_infeasible is OnInfeasible.REJECT


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"prompt": ""}, "empty prompt"),
        ({"prompt": "   \n"}, "empty prompt"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"budget": 0.0}, "budget"),
        ({"budget": -1.0}, "budget"),
        ({"budget": math.nan}, "budget"),
        ({"budget": math.inf}, "budget"),
        ({"prompt": "x" * 101}, "101 tokens"),
        ({"max_new_tokens": 65}, "max_new_tokens"),
        ({"overrun_policy": "explode"}, "overrun_policy"),
        ({"on_infeasible": "maybe"}, "on_infeasible"),
        ({"k": 0.05}, r"k must be in \[0\.1, "),
        ({"k": math.nan}, "k must be finite"),
        ({"alpha_max": 1.0}, "alpha_max"),
        ({"fixed_alpha": 1.5}, "fixed_alpha"),
        ({"chat_roles": ["user"], "chat_contents": []}, "chat_roles"),
        ({"prompt": "", "chat_roles": ["robot"], "chat_contents": ["hi"]}, "unknown chat role"),
        ({"chat_roles": ["user"], "chat_contents": ["hi"]}, "either prompt or chat"),
        ({"temperature": 101.0}, "temperature must be in"),
        ({"temperature": math.inf}, "temperature must be finite"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"top_p": 0.0}, "top_p must be > 0"),
        ({"stop": [""]}, "stop strings must be 1..256"),
        ({"stop": ["x" * 257]}, "stop strings must be 1..256"),
        ({"stop": ["a"] * 9}, "at most 8"),
        ({"expected_response_tokens": 33}, "expected_response_tokens must be in"),
    ],
)
def test_bad_goals_are_rejected_with_a_reason(fields, words):
    with pytest.raises(InvalidGoal, match=words):
        build(**fields)


def test_context_room_counts_the_response():
    limits = Limits(max_prompt_tokens=1000, context_limit=100, max_new_tokens=64)
    with pytest.raises(InvalidGoal, match="context 100 minus max_new_tokens 64"):
        build_request(Goal(prompt="x" * 40, budget=1.0, max_new_tokens=64), limits, encode, 0.0)


def test_output_control_defaults_come_from_the_node_and_goals_override_them():
    from timebill_ros.core.jobs import Sampling

    node = Limits(max_prompt_tokens=100, context_limit=256, system_prompt="SYS:", temperature=0.7, top_p=0.9)
    plain, _ = build_request(Goal(prompt="hi", budget=1.0), node, encode, 0.0)
    assert plain.prompt_ids == list(b"SYS:hi") and plain.sampling == Sampling(0.7, 0.9, -1) and plain.stop == ()
    own, _ = build_request(Goal(prompt="hi", budget=1.0, system_prompt="mine:", temperature=0.0, top_p=1.0,
                                seed=7, stop=["\n"]), node, encode, 0.0)
    assert own.prompt_ids == list(b"mine:hi") and own.sampling == Sampling(0.0, 1.0, 7) and own.stop == ("\n",)
    # A chat that brings its own system message keeps it, and only it.
    chat, _ = build_request(Goal(chat_roles=["system", "user"], chat_contents=["S", "hi"], budget=1.0), node,
                            encode, 0.0)
    assert chat.prompt_ids == list(b"Shi")


def test_chat_messages_are_accepted():
    request, _ = build(prompt="", chat_roles=["system", "user"], chat_contents=["be brief", "hi"])
    assert request.prompt_ids == list(b"be briefhi")


@given(
    prompt=st.text(max_size=300),
    budget=st.floats(allow_nan=True, allow_infinity=True),
    max_new=st.integers(0, 2**32 - 1),
    k=st.floats(allow_nan=True, allow_infinity=True, width=32),
    policy=st.text(max_size=12),
)
def test_fuzzed_goals_either_build_or_give_a_reason(prompt, budget, max_new, k, policy):
    try:
        request, _ = build(prompt=prompt, budget=budget, max_new_tokens=max_new, k=k, overrun_policy=policy)
    except InvalidGoal as exc:
        assert str(exc)
    else:
        assert 0 < request.budget < math.inf and 1 <= request.max_new_tokens <= LIMITS.max_new_tokens
        assert len(request.prompt_ids) <= LIMITS.max_prompt_tokens and request.k >= 1.0
