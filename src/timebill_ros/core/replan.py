"""The in-goal re-plan's decisions as pure functions (no torch, no clock).

The paper plans alpha once, after prefill. The engine (core.engine.Job) plans again while it
decodes when the goal is heading past its deadline, and evicts a second time; the traces
comparison (eval.traces) replays the same decisions on measured decodes. Both call these
functions, so the replay cannot drift from what the node does.
"""
from __future__ import annotations

from timebill_ros.core.conformal import PACE_CHANGE
from timebill_ros.core.planner import optimal_alpha
from timebill_ros.core.timing import TimingModel


def paced_by_prefill(timing: TimingModel, planned_s: float, seconds: float) -> TimingModel:
    """TIMING with its decode steps (and eviction) slowed as much as a prefill of SECONDS ran
    past its PLANNED_S, when that is a change of load (more than PACE_CHANGE x: a core taken by
    another process slowed goals 2.6-8.9x, idle noise stays within 1.5x) rather than noise."""
    slower = seconds / planned_s if planned_s > 0.0 else 1.0
    return timing.scaled(1.0, slower) if slower > PACE_CHANGE else timing


def tokens_left(planned: int, decoded: int, n_max: int) -> int:
    """The tokens the worst case still holds after DECODED: the rest of the plan's N_W
    (PLANNED), and once the answer has outgrown it, as many again as it has so far (at most
    N_MAX in all). The plan's guarantee covers N_W tokens only; an answer that runs past them
    is read as one that may run as long again, not as one about to end (on the v9 target the
    answers past N_W were most of the goals killed where another alpha would have fit)."""
    if planned - decoded >= 2:
        return planned - decoded
    return max(0, min(n_max, 2 * decoded) - decoded)


def live_timing(timing: TimingModel, live_step_s: float, entries: int) -> TimingModel:
    """TIMING with its decode steps scaled so a step over ENTRIES cached entries takes
    LIVE_STEP_S, the pace the goal's recent steps ran at."""
    return timing.scaled(1.0, live_step_s / max(1e-9, timing.decode_step(entries)))


def replan_keep(timing: TimingModel, *, kept: int, floor: int, decoded: int, remaining: int, left: float,
                live_step_s: float) -> int | None:
    """None while REMAINING more steps at LIVE_STEP_S each end within the LEFT seconds; when
    they would not, the prompt entries to keep of the KEPT ones (never below FLOOR) so that the
    rest fits at that pace, from the closed form over the kept prompt with the DECODED entries
    as fixed cost: KEPT itself when evicting more cannot help."""
    if left >= remaining * live_step_s:
        return None
    if kept <= floor:
        return kept
    paced = live_timing(timing, live_step_s, kept + decoded)
    raw = optimal_alpha(paced, kept, remaining + 1, left - paced.evict(kept, 1.0), remaining * paced.p * decoded)
    return min(kept, max(floor, int(kept * (1.0 - min(max(raw, 0.0), 1.0)))))


def replan_floor(n_x: int, alpha_max: float, window: int) -> int:
    """The fewest prompt entries a re-plan keeps: alpha_max's share of an N_X-token prompt,
    never below the SnapKV observation WINDOW."""
    return max(window, int(n_x * (1.0 - alpha_max)))
