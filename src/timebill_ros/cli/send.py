"""`timebill send`: a TimedGenerate action client that mirrors `ros2 action send_goal --feedback`."""
from __future__ import annotations

import json
import math
import sys
import time
import uuid

import click

EXIT_NOT_SUCCEEDED, EXIT_NO_SERVER, EXIT_GOAL_REFUSED, EXIT_INTERRUPTED = 1, 2, 3, 130


def make_goal(prompt: str, budget: float, overrides: dict):
    """A TimedGenerate.Goal from CLI values (range checks are the server's job)."""
    from builtin_interfaces.msg import Duration

    from timebill_msgs.action import TimedGenerate

    overrides = {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}  # click's multiple
    goal = TimedGenerate.Goal(prompt=prompt, **overrides)
    if math.isfinite(budget) and budget > 0:
        sec = int(budget)
        goal.budget = Duration(sec=sec, nanosec=int(round((budget - sec) * 1e9)) % 1_000_000_000)
    else:
        # A non-positive or non-finite budget cannot be put in a Duration; send 0 so the
        # server rejects it with its reason, exactly as it would for any other client.
        goal.budget = Duration(sec=0, nanosec=0)
    return goal


def format_feedback(fb) -> str:
    """One line per feedback message."""
    return (
        f"[{fb.elapsed:7.3f}s] {fb.phase:<8} N_hat={fb.predicted_response_tokens:<5} "
        f"N_W={fb.worst_case_response_tokens:<5} WCET={fb.wcet:.3f}s alpha={fb.alpha:.3f} "
        f"tokens={fb.tokens_generated}"
    )


def _result_fields(result) -> dict:
    return {name: getattr(result, name) for name in result.get_fields_and_field_types()}


class FeedbackPrinter:
    """Prints the feedback of one goal from a subscription of our own to the action's feedback topic.

    The ActionClient's feedback callback misses messages in two ways on a short goal: its reader
    may not be matched by the server yet (wait_for_server checks the services only), and it drops
    the callback as soon as the result is in, even with feedback still queued. Our reader is
    transient-local (the server keeps a history, `node.qos.feedback_qos`), filters on our goal
    id, and is drained after the result, so every message the server published is printed.
    """

    def __init__(self, node, action_name: str, goal_id, wait: float) -> None:
        from timebill_msgs.action import TimedGenerate
        from timebill_ros.node.qos import feedback_qos

        self.node, self.goal_id, self.count = node, bytes(goal_id.uuid), 0
        self.sub = node.create_subscription(TimedGenerate.Impl.FeedbackMessage, f"{action_name}/_action/feedback",
                                            self._on_message, feedback_qos())
        deadline = time.monotonic() + wait
        while self.sub.get_publisher_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)

    def _on_message(self, msg) -> None:
        if bytes(msg.goal_id.uuid) == self.goal_id:
            self.count += 1
            click.echo(format_feedback(msg.feedback))

    def drain(self, idle: float = 0.2, limit: float = 2.0) -> None:
        """Wait until no feedback has come for `idle` seconds (at most `limit`): the result can
        overtake the last feedback messages, which travel on another topic. The client's
        executor thread keeps spinning the node meanwhile."""
        end = time.monotonic() + limit
        quiet_until = time.monotonic() + idle
        while time.monotonic() < min(end, quiet_until):
            before = self.count
            time.sleep(0.05)
            if self.count != before:
                quiet_until = time.monotonic() + idle


STARTING = "node is starting"  # the start of a status_reason while the node loads or calibrates


def send_goal(prompt: str, budget: float, feedback: bool, server_timeout: float, action_name: str,
              as_json: bool, overrides: dict, wait_ready: float = 0.0) -> int:
    """Send one goal, stream feedback, print the result; return the exit code.

    The goal goes through `node.client.Client`, which survives a lost goal or result response
    (DDS can drop one while its channels are still matched): without it a lost response left
    this command waiting forever."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from unique_identifier_msgs.msg import UUID

    from timebill_msgs.action import TimedGenerate
    from timebill_ros.node.client import Client, ServerGone

    # rclpy's own SIGINT handler shuts the context down, and a Ctrl-C could then no longer
    # send the cancel; Python's KeyboardInterrupt leaves it up until we are done.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    client = Client(action_name, node_name="timebill_send")
    try:
        try:
            found = client.wait_for_server(timeout=min(1.0, server_timeout))
            if not found:  # say why nothing happens yet
                click.echo(f"waiting up to {server_timeout:g}s for the action server '{action_name}'", err=True)
                found = client.wait_for_server(timeout=server_timeout)
        except KeyboardInterrupt:  # nothing was sent yet: nothing to cancel
            click.echo("interrupted while waiting for the action server; no goal was sent", err=True)
            return EXIT_INTERRUPTED
        if not found:
            click.echo(f"no action server '{action_name}' within {server_timeout}s (is timebill_node running, "
                       "with the same ROS_DOMAIN_ID?)", err=True)
            return EXIT_NO_SERVER
        ready_by = time.monotonic() + wait_ready
        while True:
            goal_id = UUID(uuid=list(uuid.uuid4().bytes))
            printer = FeedbackPrinter(client.node, action_name, goal_id, server_timeout) if feedback else None
            run = client.send(make_goal(prompt, budget, overrides), goal_id=goal_id)
            try:
                client.wait(run, timeout=math.inf)
            except ServerGone as exc:
                click.echo(f"no result: {exc}; the goal's outcome is unknown", err=True)
                return EXIT_NO_SERVER
            except KeyboardInterrupt:
                click.echo("canceling the goal", err=True)
                client.cancel(run)
                try:
                    client.wait(run, timeout=5.0, ask_again_every=1.0)
                except TimeoutError:
                    pass
            reason = run.result.status_reason if run.result is not None else ""
            if not reason.startswith(STARTING) or time.monotonic() >= ready_by:
                break
            # --wait-ready: the node answered at once that it is still starting; ask again.
            click.echo(f"{reason} (asking again, up to {ready_by - time.monotonic():.0f} s more)", err=True)
            try:
                time.sleep(min(2.0, max(0.0, ready_by - time.monotonic())))
            except KeyboardInterrupt:  # between goals: nothing to cancel
                click.echo("interrupted while waiting for the node to start", err=True)
                return EXIT_INTERRUPTED
        if run.accepted is False:
            click.echo("goal refused by the server (shutting down?)", err=True)
            return EXIT_GOAL_REFUSED
        if printer:
            printer.drain()
        result = run.result if run.result is not None else TimedGenerate.Result()
        if not result.status_name:
            result.status_name = "UNKNOWN"
            result.status_reason = f"the server sent no result (action status {run.status})"
        print_result(result, as_json, structured=bool(overrides.get("json_schema")))
        return 0 if result.status == TimedGenerate.Result.SUCCEEDED else EXIT_NOT_SUCCEEDED
    finally:
        client.close()
        rclpy.try_shutdown()


def print_result(result, as_json: bool, structured: bool = False) -> None:
    """Print the result as JSON or as readable lines (STRUCTURED: the answer parsed, too)."""
    fields = _result_fields(result)
    if as_json:
        click.echo(json.dumps(fields, indent=2))
        return
    click.echo(f"status: {result.status_name}" + (f" ({result.status_reason})" if result.status_reason else ""))
    click.echo(f"plan: alpha={result.alpha:.3f} N_hat={result.predicted_response_tokens} "
               f"N_W={result.worst_case_response_tokens} WCET={result.wcet:.3f}s feasible={result.feasible}")
    click.echo(f"times: queue={result.queue_time:.3f}s prefill={result.prefill_time:.3f}s "
               f"evict={result.evict_time:.4f}s decode={result.decode_time:.3f}s total={result.total_time:.3f}s "
               f"(deadline margin {result.deadline_margin:+.3f}s)")
    click.echo(f"tokens: prompt={result.prompt_tokens} kept={result.kept_prompt_tokens} "
               f"response={result.response_tokens}")
    click.echo("text: " + result.text)
    if structured and result.text:
        click.echo("parsed: " + repr(json.loads(result.text)))
    sys.stdout.flush()
