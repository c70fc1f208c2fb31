"""Drive a timebill_node from Python: start one in a subprocess (`NodeProcess`), and a
TimedGenerate action client that spins in a background thread (`Client`). Used by
`timebill send`, the integration tests, the benchmarks and the evaluation harness."""
from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class NodeProcess:
    """timebill_node started with a params file, like `ros2 run` with --params-file."""

    def __init__(self, params: dict, workdir: Path, name: str = "node", ros_args: tuple[str, ...] = ()) -> None:
        self.params_file = workdir / f"{name}.yaml"
        # "/**": the file applies whatever the node's name and namespace (as config/timebill.yaml).
        self.params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.log_file = workdir / f"{name}.log"
        executable = shutil.which("timebill_node")
        if not executable:
            raise FileNotFoundError("timebill_node is not on PATH: `source scripts/env.sh` first")
        self._log = self.log_file.open("w")
        self.proc = subprocess.Popen(
            [executable, "--ros-args", "--params-file", str(self.params_file), *ros_args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        """Everything the node printed so far."""
        return self.log_file.read_text()

    def wait_serving(self, timeout: float = 300.0) -> bool:
        """Wait until the node has started serving goals (its 'serving' line; with autostart the
        action server answers from the first second, REJECTED "node is starting" until then);
        False when it exited or TIMEOUT passed first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if ": serving '" in self.log():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Signal the node and wait for it to exit; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# How often a waiting client checks that the action server is still there, and how long it
# may be gone before the wait gives up (a node restart takes longer than this to come back).
SERVER_CHECK_EVERY, SERVER_GONE_AFTER = 0.5, 3.0


class ServerGone(RuntimeError):
    """The action server disappeared while a goal waited for its result."""


@dataclass
class GoalRun:
    """One goal's life as the client saw it."""

    goal: object
    feedback: list = field(default_factory=list)
    accepted: bool | None = None
    handle: object = None
    result: object = None
    status: int | None = None  # action_msgs GoalStatus
    sent_at: float = field(default_factory=time.monotonic)
    accepted_at: float | None = None
    done_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)
    goal_id: object = None  # unique_identifier_msgs UUID, chosen by the client
    on_feedback: object = None  # called with (run, feedback) for each feedback message
    result_requests: int = 0
    resent: int = 0  # goal requests sent again because the server did not know the goal

    def state(self) -> str:
        """Where the goal stands, for a hang report."""
        if self.accepted is None:
            return (f"no goal response yet, {len(self.feedback)} feedback messages, "
                    f"{self.result_requests} probes, sent again {self.resent} times")
        return f"accepted={self.accepted}, {len(self.feedback)} feedback, {self.result_requests} result requests"


class Client:
    """A TimedGenerate action client spinning in a background thread."""

    def __init__(self, action_name: str = "timebill/generate", node_name: str = "") -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor

        from timebill_msgs.action import TimedGenerate

        self.TimedGenerate = TimedGenerate
        self.node = rclpy.create_node(node_name or f"test_client_{int(time.time() * 1e6) % 10**9}")
        self.client = ActionClient(self.node, TimedGenerate, action_name)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def wait_for_server(self, timeout: float = 60.0) -> bool:
        """True once the action server is discovered."""
        return self.client.wait_for_server(timeout_sec=timeout)

    def goal(self, prompt: str = "hello robot", budget: float = 10.0, **fields):
        """A TimedGenerate goal; FIELDS are any other goal fields."""
        from builtin_interfaces.msg import Duration

        sec = int(budget)
        g = self.TimedGenerate.Goal(prompt=prompt, **fields)
        g.budget = Duration(sec=sec, nanosec=int((budget - sec) * 1e9))
        return g

    def send(self, goal, on_feedback=None, goal_id=None) -> GoalRun:
        """Send without waiting for the result; GOAL_ID (a UUID msg) is made here unless given."""
        from unique_identifier_msgs.msg import UUID

        run = GoalRun(goal, goal_id=goal_id or UUID(uuid=list(uuid.uuid4().bytes)), on_feedback=on_feedback)
        self._send_goal(run)
        return run

    def _send_goal(self, run: GoalRun) -> None:
        """Send RUN's goal request under RUN's UUID (again, after a lost request)."""

        def feedback(msg):
            run.feedback.append(msg.feedback)
            if run.on_feedback:
                run.on_feedback(run, msg.feedback)

        def accepted(fut):
            if run.handle is not None:  # already taken over by a probe
                return
            run.handle, run.accepted_at = fut.result(), time.monotonic()
            run.accepted = run.handle.accepted
            if not run.accepted:
                run.done.set()
                return
            self._request_result(run)

        future = self.client.send_goal_async(run.goal, feedback_callback=feedback, goal_uuid=run.goal_id)
        future.add_done_callback(accepted)

    def _finish(self, run: GoalRun, answer) -> None:
        """Record a result response (the first one: later ones answer repeated requests)."""
        if run.done.is_set():
            return
        run.result, run.status, run.done_at = answer.result, answer.status, time.monotonic()
        run.done.set()

    def _request_result(self, run: GoalRun) -> None:
        """Ask the server for RUN's result (held by the server until the goal ends)."""
        run.result_requests += 1
        run.handle.get_result_async().add_done_callback(lambda rf: self._finish(run, rf.result()))

    def _probe(self, run: GoalRun) -> None:
        """RUN's goal response never came: ask for the result of its UUID. A goal the server
        knows is taken over and its result arrives when it ends; one the server does not know
        (status UNKNOWN: the goal request itself was lost) is sent again under the same UUID."""
        from action_msgs.msg import GoalStatus

        handle = self._handle_by_uuid(run)

        def answered(rf):
            answer = rf.result()
            if answer.status == GoalStatus.STATUS_UNKNOWN:
                if run.accepted is None:
                    run.resent += 1
                    self._send_goal(run)
                return
            if run.handle is None:
                run.handle, run.accepted, run.accepted_at = handle, True, time.monotonic()
            self._finish(run, answer)

        run.result_requests += 1
        handle.get_result_async().add_done_callback(answered)

    def _handle_by_uuid(self, run: GoalRun):
        """A goal handle for RUN's UUID, for requests about a goal whose goal response never came."""
        from rclpy.action.client import ClientGoalHandle

        response = self.TimedGenerate.Impl.SendGoalService.Response(accepted=True)
        return ClientGoalHandle(self.client, run.goal_id, response)

    def _ask_again(self, run: GoalRun) -> None:
        """A DDS service can drop a request or a response while its channels are still being
        matched (slow discovery on a loaded machine). A goal with no goal response is probed by
        its UUID (`_probe`); an accepted goal's result is asked for again."""
        if run.accepted is None:
            self._probe(run)
        elif run.accepted:
            self._request_result(run)

    def wait(self, run: GoalRun, timeout: float = 60.0, ask_again_every: float = 15.0,
             server_gone_after: float = SERVER_GONE_AFTER) -> GoalRun:
        """Block until RUN has its result; TimeoutError after TIMEOUT seconds (a hang check),
        ServerGone when the action server has been gone for SERVER_GONE_AFTER seconds (the node
        stopped or crashed under the goal: no result will ever come).

        Every ASK_AGAIN_EVERY seconds without a result the result is requested again: a
        request the server already answered costs nothing more than a duplicate reply."""
        deadline, asked, gone_since = time.monotonic() + timeout, time.monotonic(), None
        while not run.done.wait(max(0.0, min(SERVER_CHECK_EVERY, deadline - time.monotonic()))):
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no result within {timeout}s ({run.state()})")
            if self.client.server_is_ready():
                gone_since = None
            else:
                gone_since = gone_since or now
                if now - gone_since >= server_gone_after:
                    raise ServerGone(f"the action server went away {now - gone_since:.1f}s ago while the goal "
                                     f"waited for its result ({run.state()}): the node stopped or crashed")
            if now - asked >= ask_again_every:
                self._ask_again(run)
                asked = now
        return run

    def call(self, goal, timeout: float = 60.0, on_feedback=None) -> GoalRun:
        """Send and wait for the result."""
        return self.wait(self.send(goal, on_feedback), timeout)

    def cancel(self, run: GoalRun) -> None:
        """Ask the server to cancel RUN (by its UUID even before its goal response came)."""
        (run.handle or self._handle_by_uuid(run)).cancel_goal_async()

    def close(self) -> None:
        """Stop spinning and destroy the client node. The spin thread is joined: a process that
        exits while it still waits inside rclpy aborts ("terminate called without an active
        exception")."""
        self.executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
