"""Shared by the node benchmarks: start a calibrated node, talk to it, read its process stats."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import rclpy
from common import calibrated_engine

from timebill_ros.core.calibration import default_calibration_path
from timebill_ros.node.client import Client, NodeProcess


def start_calibrated_node(args, ros_args: tuple[str, ...] = (), name: str = "node", **params
                          ) -> tuple[NodeProcess, object]:
    """A timebill_node on args.model with its calibration (made first if missing)."""
    engine, cal = calibrated_engine(args)
    engine.close()
    work = Path(tempfile.mkdtemp(prefix="timebill-bench-"))
    node = NodeProcess({"model_path": args.model, "threads": args.threads, "prefill_chunk": args.prefill_chunk,
                        "quantization": args.quantization,
                        "calibration_path": str(default_calibration_path(cal.key)), **params}, work, name, ros_args)
    if not node.wait_serving():
        raise SystemExit(f"node did not come up; log:\n{node.log()}")
    return node, cal


@contextmanager
def node_session(args, clients: int = 1, **params) -> Iterator[tuple[NodeProcess, list[Client], object]]:
    """(node, clients that found its action server, calibration); on exit the clients,
    rclpy and the node are shut down in that order, whatever happened."""
    node, cal = start_calibrated_node(args, **params)
    rclpy.init()
    found = [Client() for _ in range(clients)]
    try:
        if not all(c.wait_for_server(120) for c in found):
            raise SystemExit(f"node did not come up; log:\n{node.log()}")
        yield node, found, cal
    finally:
        for c in found:
            c.close()
        rclpy.try_shutdown()
        node.stop()


def proc_stats(pid: int) -> dict:
    """Resident memory (MB), thread count and open file descriptors of a process."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}
