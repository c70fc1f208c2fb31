"""Conversions between timebill_msgs messages and core data."""
from __future__ import annotations

from timebill_msgs.action import TimedGenerate
from timebill_msgs.msg import Request as RequestMsg
from timebill_msgs.msg import ResultRecord
from timebill_ros.core.jobs import Event, Result
from timebill_ros.core.validation import Goal


def goal_from_msg(msg: TimedGenerate.Goal) -> Goal:
    """The core's view of a goal message."""
    return Goal(
        prompt=msg.prompt,
        budget=msg.budget.sec + msg.budget.nanosec * 1e-9,
        chat_roles=list(msg.chat_roles),
        chat_contents=list(msg.chat_contents),
        max_new_tokens=int(msg.max_new_tokens),
        k=float(msg.k),
        alpha_max=float(msg.alpha_max),
        fixed_alpha=float(msg.fixed_alpha),
        overrun_policy=msg.overrun_policy,
        on_infeasible=msg.on_infeasible,
        system_prompt=msg.system_prompt,
        stop=list(msg.stop),
        temperature=float(msg.temperature),
        top_p=float(msg.top_p),
        seed=int(msg.seed),
        expected_response_tokens=int(msg.expected_response_tokens),
        ignore_eos=bool(msg.ignore_eos),
        json_schema=msg.json_schema,
        grammar=msg.grammar,
    )


def feedback_msg(event: Event, partial_text: str) -> TimedGenerate.Feedback:
    """Action feedback for an engine event."""
    return TimedGenerate.Feedback(
        phase=event.phase,
        elapsed=event.elapsed,
        predicted_response_tokens=event.predicted_tokens,
        worst_case_response_tokens=event.worst_case_tokens,
        wcet=event.wcet,
        alpha=event.alpha,
        tokens_generated=len(event.tokens),
        partial_text=partial_text,
        worst_case_source=event.worst_case_source,
    )


def result_msg(result: Result) -> TimedGenerate.Result:
    """Action result for an engine result (plan fields are 0 when no plan was made)."""
    msg = TimedGenerate.Result(
        status=int(result.status),
        status_name=result.status.name,
        status_reason=result.reason,
        text=result.text,
        queue_time=result.timings.queue,
        prefill_time=result.timings.prefill,
        predict_time=result.timings.predict,
        evict_time=result.timings.evict,
        decode_time=result.timings.decode,
        total_time=result.timings.total,
        prompt_tokens=result.prompt_tokens,
        kept_prompt_tokens=result.kept_prompt_tokens,
        response_tokens=len(result.token_ids),
        deadline_margin=result.deadline_margin,
        prefill_slowdown=result.prefill_factor,
        decode_slowdown=result.decode_factor,
        replans=result.replans,
    )
    if result.plan is not None:
        msg.alpha = result.plan.alpha
        msg.predicted_response_tokens = result.plan.predicted_tokens
        msg.worst_case_response_tokens = result.plan.worst_case_tokens
        msg.wcet = result.plan.wcet
        msg.feasible = result.plan.feasible
    return msg


GOAL_FIELDS = ("prompt", "budget", "max_new_tokens", "k", "alpha_max", "fixed_alpha", "overrun_policy", "on_infeasible",
               "expected_response_tokens")
RESULT_FIELDS = ("status", "status_name", "status_reason", "text", "queue_time", "prefill_time", "predict_time",
                 "evict_time", "decode_time", "total_time", "deadline_margin", "alpha", "predicted_response_tokens",
                 "worst_case_response_tokens", "wcet", "feasible", "replans", "prompt_tokens", "kept_prompt_tokens",
                 "response_tokens", "prefill_slowdown", "decode_slowdown")


def goal_from_request(msg: RequestMsg) -> TimedGenerate.Goal:
    """The TimedGenerate goal a topic request stands for."""
    return TimedGenerate.Goal(**{f: getattr(msg, f) for f in GOAL_FIELDS})


def record_msg(request: RequestMsg, result: TimedGenerate.Result) -> ResultRecord:
    """A ResultRecord: the request's labels and the result's fields."""
    return ResultRecord(
        request_id=request.request_id, task=request.task, method=request.method, reference=request.reference,
        budget=request.budget.sec + request.budget.nanosec * 1e-9, overrun_policy=request.overrun_policy,
        **{f: getattr(result, f) for f in RESULT_FIELDS},
    )
