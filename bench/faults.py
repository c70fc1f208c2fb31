"""Faults: a client killed in the middle of its goal, and the node restarted under a client.

1. A client process sends a long goal and is killed (SIGKILL, no cancel) once feedback
   flows; the next goal from another client must succeed, and the node must not leak the
   dead client's goal (it ends, and the node serves on).
2. `timebill send` waits on a long goal while the node is stopped (SIGTERM, as a robot's
   launch system restarts it): its exit code and message are recorded; a second node is
   started on the same parameters and `timebill send --wait-ready` is served by it.
Prints JSON (results/bench/faults.json).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

from common import parser, write
from node_common import node_session, start_calibrated_node

from timebill_ros.node.client import Client

VANISHING_CLIENT = """
import rclpy, time
from timebill_ros.node.client import Client
rclpy.init()
c = Client()
assert c.wait_for_server(60)
run = c.send(c.goal('Tell a long story about a robot arm.', budget=30.0, max_new_tokens=256))
while not run.feedback:
    time.sleep(0.01)
print('feedback', flush=True)
time.sleep(60)
"""


def killed_client(args) -> dict:
    """A client killed mid-goal; the next goal from another client."""
    with node_session(args) as (node, [client], _):
        vanishing = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT], stdout=subprocess.PIPE, text=True)
        got_feedback = vanishing.stdout.readline().strip() == "feedback"
        vanishing.kill()
        vanishing.wait()
        t0 = time.monotonic()
        run = client.call(client.goal("Where is the cup? The cup is in the sink.", budget=30.0,
                                      max_new_tokens=16), timeout=120)
        return {"killed_client_had_feedback": got_feedback, "next_goal_status": run.result.status_name,
                "next_goal_seconds": time.monotonic() - t0, "node_alive": node.proc.poll() is None}


def restart_under_a_client(args) -> dict:
    """`timebill send` on a long goal while the node is stopped; then a new node serves it."""
    send = [shutil.which("timebill"), "send", "Tell a long story about a robot arm.", "--budget", "30",
            "--max-new-tokens", "256", "--server-timeout", "120"]
    node, _ = start_calibrated_node(args)
    import rclpy

    rclpy.init()
    probe = Client()
    try:
        assert probe.wait_for_server(120), node.log()
        sender = subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3.0)  # the goal is running
        stopped_at = time.monotonic()
        node_exit = node.stop(signal.SIGTERM)
        out, err = sender.communicate(timeout=60)
        send_seconds_after_stop = time.monotonic() - stopped_at
    finally:
        probe.close()
        rclpy.try_shutdown()
    restarted, _ = start_calibrated_node(args)
    try:
        again = subprocess.run([*send[:2], "Where is the cup? The cup is in the sink.", "--budget", "30",
                                "--max-new-tokens", "16", "--wait-ready", "300", "--server-timeout", "120"],
                               capture_output=True, text=True, timeout=600)
    finally:
        restarted.stop()
    status = next((line for line in out.splitlines() if line.startswith("status:")), "")
    return {"node_exit_code": node_exit, "send_exit_code": sender.returncode, "send_status_line": status,
            "send_stderr": err.strip()[-300:],
            "send_returned_s_after_stop": send_seconds_after_stop,
            "after_restart_send_exit_code": again.returncode,
            "after_restart_status_line": next((line for line in again.stdout.splitlines()
                                               if line.startswith("status:")), "")}


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    write("faults", {"model": args.model, "killed_client": killed_client(args),
                     "node_restart": restart_under_a_client(args)})


if __name__ == "__main__":
    main()
