"""Where a starting node is (loading the model, calibrating), for the goals and the
diagnostics that arrive meanwhile: a goal sent while the node starts gets REJECTED at once
with this description instead of waiting for the start-up to end."""
from __future__ import annotations

import threading
import time


class Startup:
    """The stage of an autostart in progress and, where the work is counted, its progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stage = ""  # "" when the node is not starting
        self._began = self._stage_began = self._counted_since = 0.0
        self._done = self._total = 0
        self.stages: list[tuple[str, float]] = []  # (stage, seconds) of this start, in order

    def begin(self, stage: str) -> None:
        """Enter STAGE (e.g. "loading the model"); its progress is unknown until `expect`."""
        with self._lock:
            now = time.monotonic()
            if not self.stage:
                self._began, self.stages = now, []
            elif stage != self.stage:
                self.stages.append((self.stage, now - self._stage_began))
            else:
                return  # the same stage again (autostart's configure): keep its start
            self.stage, self._stage_began, self._done, self._total = stage, now, 0, 0

    def expect(self, total: int) -> None:
        """The current stage has TOTAL equal steps (reset to none done)."""
        with self._lock:
            self._done, self._total, self._counted_since = 0, total, time.monotonic()

    def tick(self) -> None:
        """One step of the current stage is done."""
        with self._lock:
            self._done += 1

    def end(self) -> None:
        """The node has started (or failed to)."""
        with self._lock:
            if self.stage:
                self.stages.append((self.stage, time.monotonic() - self._stage_began))
            self.stage = ""

    def summary(self) -> str:
        """How long the last start took, by stage: 'loading the model 9.1 s, warming up 2.0 s'."""
        with self._lock:
            return ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in self.stages)

    @property
    def active(self) -> bool:
        """True while the node is starting."""
        return bool(self.stage)

    def seconds_left(self) -> float | None:
        """The current stage's remaining seconds at its pace so far; None when not counted yet."""
        with self._lock:
            if not self._total or not self._done:
                return None
            spent = time.monotonic() - self._counted_since
            return spent * (self._total - self._done) / self._done

    def describe(self) -> str:
        """Why goals are not served yet, e.g. 'node is starting: calibrating ..., about 42 s left'."""
        left = self.seconds_left()
        with self._lock:
            if not self.stage:
                return ""
            since = time.monotonic() - self._began
            done, total, stage = self._done, self._total, self.stage
        if left is not None:
            return (f"node is starting: {stage} ({done} of {total} steps), about {left:.0f} s left; "
                    "send the goal again then")
        return f"node is starting: {stage} ({since:.1f} s since start); send the goal again shortly"
