"""Drive a timebill_node from Python: start one in a subprocess (`NodeProcess`), and a
TimedGenerate action client that spins in a background thread (`Client`). Used by the
integration tests, the benchmarks and the evaluation harness."""
from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
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


class Client:
    """A TimedGenerate action client spinning in a background thread."""

    def __init__(self, action_name: str = "timebill/generate") -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import SingleThreadedExecutor

        from timebill_msgs.action import TimedGenerate

        self.TimedGenerate = TimedGenerate
        self.node = rclpy.create_node(f"test_client_{int(time.time() * 1e6) % 10**9}")
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

    def send(self, goal, on_feedback=None) -> GoalRun:
        """Send without waiting for the result."""
        run = GoalRun(goal)

        def feedback(msg):
            run.feedback.append(msg.feedback)
            if on_feedback:
                on_feedback(run, msg.feedback)

        future = self.client.send_goal_async(goal, feedback_callback=feedback)

        def accepted(fut):
            run.handle, run.accepted_at = fut.result(), time.monotonic()
            run.accepted = run.handle.accepted
            if not run.accepted:
                run.done.set()
                return

            def finished(rf):
                run.result, run.status, run.done_at = rf.result().result, rf.result().status, time.monotonic()
                run.done.set()

            run.handle.get_result_async().add_done_callback(finished)

        future.add_done_callback(accepted)
        return run

    def wait(self, run: GoalRun, timeout: float = 60.0) -> GoalRun:
        """Block until RUN has its result; TimeoutError after TIMEOUT seconds (a hang check)."""
        if not run.done.wait(timeout):
            raise TimeoutError(f"no result within {timeout}s")
        return run

    def call(self, goal, timeout: float = 60.0, on_feedback=None) -> GoalRun:
        """Send and wait for the result."""
        return self.wait(self.send(goal, on_feedback), timeout)

    def cancel(self, run: GoalRun) -> None:
        """Ask the server to cancel RUN."""
        run.handle.cancel_goal_async()

    def close(self) -> None:
        """Stop spinning and destroy the client node."""
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
