"""Overrun handling across jobs (TimeBill section 5).

Kill: a job past its deadline is terminated, incomplete, its response empty. The
control timer stops a running job at its deadline; a job that finishes after its
deadline but before the timer's next tick is late all the same, so its answer is
discarded too: under Kill nothing is ever delivered late.
Skip-Next: the overrunning job finishes (COMPLETED_LATE, text kept) and jobs that
arrive meanwhile are skipped (the node decides that on arrival).
"""
from __future__ import annotations

from dataclasses import replace

from timebill_ros.core.jobs import OverrunPolicy, Result, Status


def apply_overrun_policy(result: Result, policy: OverrunPolicy) -> Result:
    """The result as the policy delivers it."""
    if policy is OverrunPolicy.KILL and result.status is Status.COMPLETED_LATE:
        return replace(result, status=Status.KILLED_AT_DEADLINE, text="", token_ids=[],
                       reason="finished after the deadline, before the control timer fired: discarded (kill)")
    return result
