"""A node's first start on a machine: `timebill_node` with config/timebill.yaml and no
calibration on disk, timed from the process start to its first served goal (model load,
decode-kernel choice, the quick calibration, warm-up), then a restart that loads what the
first start saved. The converted model is reused (it is not part of a first start here).

While each start runs, a client sends a 0.02 s goal the moment `wait_for_server` returns and
then one every PROBE_EVERY seconds until the node serves: every such goal must be answered at once (REJECTED,
"node is starting ..."), and the seconds from sending to its result are recorded, with the
node's own start-up stages (its "start-up took" log line).
Prints JSON (results/bench/first_start.json).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rclpy
from common import parser, percentile, write

from timebill_ros.core.paths import timebill_home
from timebill_ros.node.client import Client

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The cup is in the sink. Where is the cup?"
# Often enough that a restart's few seconds of loading get ~20 probes: a GIL held for 0.3 s
# by one load step is missed by a probe a second (the restart once had two).
PROBE_EVERY = 0.1


def probe_until_served(client: Client) -> list[float]:
    """Seconds from sending to the result of each 0.02 s goal answered "node is starting"."""
    latencies = []
    while True:
        sent = time.monotonic()
        run = client.call(client.goal(PROMPT, budget=0.02, max_new_tokens=4), timeout=120)
        if not run.result.status_reason.startswith("node is starting"):
            return latencies
        latencies.append(time.monotonic() - sent)
        time.sleep(PROBE_EVERY)


def start_to_served(home: Path) -> dict:
    """One start of the shipped node: seconds to its first SUCCEEDED goal, the answers to goals
    sent while it started, and its stages."""
    env = {**os.environ, "TIMEBILL_HOME": str(home)}
    log = home / f"node-{time.monotonic_ns()}.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        node = subprocess.Popen([shutil.which("timebill_node"), "--ros-args", "--params-file",
                                 str(REPO / "config" / "timebill.yaml")], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        client = Client()
        try:
            if not client.wait_for_server(120):
                sys.exit(f"no action server; log:\n{log.read_text()}")
            probes = probe_until_served(client)
            run = client.call(client.goal(PROMPT, budget=5.0, max_new_tokens=16), timeout=120)
            served = time.monotonic() - t0
        finally:
            client.close()
            node.send_signal(2)
            node.wait(timeout=30)
    text = log.read_text()
    if run.result.status_name != "SUCCEEDED":
        sys.exit(f"not served: {run.result.status_name} {run.result.status_reason}\n{text}")
    stages = re.search(r"start-up took (.*)", text)
    held_out = re.search(r"prefill held-out error ([\d.]+)%, decode ([\d.]+)%", text)
    return {"to_served_s": served, "calibrated": "calibrating this machine now" in text,
            "held_out_error_pct": {"prefill": float(held_out[1]), "decode": float(held_out[2])} if held_out else None,
            "answers_while_starting_s": probes,
            "stages": {name.strip(): float(s) for name, s in re.findall(r"([^,]+?) ([\d.]+) s(?:,|$)",
                                                                       stages.group(1).strip())}
            if stages else {}}


def main() -> None:
    args = parser(__doc__).parse_args()
    home = Path(tempfile.mkdtemp(prefix="timebill-first-start-"))
    (home / "models").symlink_to(timebill_home() / "models")  # the conversion is not what is timed
    rclpy.init()
    try:
        first, again = start_to_served(home), start_to_served(home)
    finally:
        rclpy.try_shutdown()
    answers = first["answers_while_starting_s"] + again["answers_while_starting_s"]
    write("first_start", {"model": "builtin:smollm2 (config/timebill.yaml)", "threads": args.threads,
                          "first_start_to_served_s": first["to_served_s"], "restart_to_served_s": again["to_served_s"],
                          "calibrated_on_first_start": first["calibrated"],
                          "calibrated_on_restart": again["calibrated"],
                          "first_start_stages_s": first["stages"], "restart_stages_s": again["stages"],
                          "first_start_held_out_error_pct": first["held_out_error_pct"],
                          "goals_while_starting": len(answers), "probe_every_s": PROBE_EVERY,
                          "answer_while_starting_p50_s": percentile(answers, 50) if answers else None,
                          "answer_while_starting_max_s": max(answers, default=None),
                          "first_goal_after_server_seen_s": [s["answers_while_starting_s"][0]
                                                             for s in (first, again) if s["answers_while_starting_s"]],
                          "starts": {"first": first, "restart": again}})


if __name__ == "__main__":
    main()
