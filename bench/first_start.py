"""A node's first start on a machine: `timebill_node` with config/timebill.yaml and no
calibration on disk, timed from the process start to its first served goal (model load,
decode-kernel choice, the quick calibration, warm-up), then a restart that loads what the
first start saved. The converted model is reused (it is not part of a first start here).
Prints JSON (results/bench/first_start.json).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import parser, write

from timebill_ros.core.paths import timebill_home

REPO = Path(__file__).resolve().parents[1]


def start_to_served(home: Path) -> tuple[float, str]:
    """Seconds from starting the shipped node to its first SUCCEEDED goal, and its log."""
    env = {**os.environ, "TIMEBILL_HOME": str(home)}
    log = home / f"node-{time.monotonic_ns()}.log"
    t0 = time.monotonic()
    with log.open("w") as out:
        node = subprocess.Popen([shutil.which("timebill_node"), "--ros-args", "--params-file",
                                 str(REPO / "config" / "timebill.yaml")], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
        try:
            sent = subprocess.run([shutil.which("timebill"), "send", "The cup is in the sink. Where is the cup?",
                                   "--budget", "5", "--max-new-tokens", "16", "--wait-ready", "600",
                                   "--server-timeout", "120"], capture_output=True, text=True, env=env, timeout=900)
        finally:
            node.send_signal(2)
            node.wait(timeout=30)
    if sent.returncode != 0:
        sys.exit(f"not served: {sent.stdout}{sent.stderr}\n{log.read_text()}")
    return time.monotonic() - t0, log.read_text()


def main() -> None:
    args = parser(__doc__).parse_args()
    home = Path(tempfile.mkdtemp(prefix="timebill-first-start-"))
    (home / "models").symlink_to(timebill_home() / "models")  # the conversion is not what is timed
    first, log = start_to_served(home)
    again, log_again = start_to_served(home)
    calibrating = "calibrating this machine now"
    write("first_start", {"model": "builtin:smollm2 (config/timebill.yaml)", "first_start_to_served_s": first,
                          "restart_to_served_s": again, "calibrated_on_first_start": calibrating in log,
                          "calibrated_on_restart": calibrating in log_again, "threads": args.threads})


if __name__ == "__main__":
    main()
