"""Shared set-up for the benchmarks: a calibrated engine and JSON output.

Benchmarks print JSON and write it under results/bench/; they never pass or fail on a
time. Ratios are measured side by side in one run, because this machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from timebill_ros.core.calibration import Calibration, load_or_calibrate, machine_id  # noqa: E402
from timebill_ros.core.engine import Engine, EngineConfig  # noqa: E402
from timebill_ros.core.model import load_model  # noqa: E402
from timebill_ros.core.predictor import FixedLengthPredictor  # noqa: E402
from timebill_ros.core.timing import TimingModel  # noqa: E402
from timebill_ros.node.params import NodeParams  # noqa: E402

RESULTS = Path(os.environ.get("TIMEBILL_RESULTS", Path(__file__).resolve().parents[1] / "results")) / "bench"


def parser(description: str) -> argparse.ArgumentParser:
    """Common options: model, threads, calibration."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=os.environ.get("TIMEBILL_BENCH_MODEL", "builtin:tiny-random"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-chunk", type=int, default=EngineConfig.prefill_chunk,
                   help="as the node's (default: %(default)s)")
    p.add_argument("--quantization", default=NodeParams.quantization,
                   help="as the node's (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=4096,
                   help="longest prompt + answer the calibration and the benchmarks use (capped by the context)")
    p.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    return p


def calibrated_engine(args, predictor=None) -> tuple[Engine, Calibration]:
    """Load the model; load its calibration or make one (and save it where the node looks)."""
    loaded = load_model(args.model, threads=args.threads, quantization=args.quantization)
    engine = Engine(loaded, TimingModel(0, 0, 0, 0, 0), predictor or FixedLengthPredictor(64),
                    EngineConfig(prefill_chunk=args.prefill_chunk, event_period=1e9))
    cal = load_or_calibrate(engine, points=12 if args.quick else 16, repeats=2,
                            max_length=min(args.max_length, loaded.context_limit),
                            announce=lambda message: print(f"[bench] {message}", file=sys.stderr))
    engine.warm_up()  # as the node does: the first forward of a process picks kernels and allocates
    return engine, cal


def float_forward_engine(engine: Engine, quantization: str = "") -> Engine:
    """ENGINE's model, timing and settings loaded again with QUANTIZATION; by default ''
    (decode steps through transformers' forward on the model's own weights: the step before
    the lean one)."""
    loaded = load_model(str(engine.loaded.path), threads=engine.loaded.threads, quantization=quantization)
    return Engine(loaded, engine.timing, engine.predictor, engine.config)


def longest(engine, args) -> int:
    """The longest sequence (prompt + answer) a benchmark may build: what was calibrated."""
    return min(args.max_length, engine.loaded.context_limit)


def random_ids(n: int, vocab: int, seed: int) -> list[int]:
    """N random token ids (timing does not depend on the text)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 250), (n,), generator=g).tolist()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


def summary(values: list[float]) -> dict:
    """Median, p99, mean, min, count."""
    return {"median": statistics.median(values), "p99": percentile(values, 99),
            "mean": statistics.fmean(values), "min": min(values), "n": len(values)}


def write(name: str, data: dict) -> Path:
    """Print DATA as JSON and save it to results/bench/NAME.json, with the machine's context."""
    data = {"benchmark": name, "machine": machine_id(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **data}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))
    return path
