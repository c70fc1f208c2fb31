"""One thread for every PyTorch call of a server: load, calibration, warm-up and every job.

PyTorch's CPU kernels run their parallel regions on OpenMP, and OpenMP keeps a worker pool
per thread that has run one. A process whose model is loaded on one thread and whose jobs
run on others (a ROS executor hands each goal to a pool thread) ends up with several pools
whose idle workers compete with the running one for the cores: measured on SmolLM2 with 2
threads on 2 cores (AMD EPYC), a decode step took 19.5 ms when the load and the job ran on
one thread and ~50 ms when the job ran on another thread than the load, the node's case
until this module (bench/node_overhead.py measures the node against the engine in-process).
So a server submits all of its torch work here, and waits on the result from any thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

T = TypeVar("T")


class TorchThread:
    """A single long-lived worker thread; `call` runs a function on it and returns its result
    (or raises its exception) in the calling thread."""

    def __init__(self, name: str = "timebill-torch") -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """FN(*ARGS, **KWARGS) on the torch thread, after whatever was submitted before it."""
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """Let the thread end once its queued calls are done (no new calls after this)."""
        self._pool.shutdown(wait=False)
