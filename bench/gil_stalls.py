"""What holds Python's interpreter lock while a node loads its model: a thread that sleeps
1 ms in a loop records its longest gap while each load step runs in the main thread, in the
order the node runs them (tokenizer, weights, calibration, predictor, engine, structured
compiler, warm-up). A goal that arrives during a step is answered no sooner than its gap
allows. Prints JSON (results/bench/gil_stalls.json).
"""
from __future__ import annotations

import sys
import threading
import time

from common import parser, write

from timebill_ros.core.calibration import Calibration, CalibrationKey, default_calibration_path
from timebill_ros.core.engine import Engine
from timebill_ros.core.model import encode_prompt, load_model, load_tokenizer
from timebill_ros.core.predictor import load_predictor
from timebill_ros.core.structured import llguidance_tokenizer, structured_compiler
from timebill_ros.node.params import NodeParams


class Ticker:
    """A thread that wakes every millisecond and keeps (when, gap since its last wake)."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            time.sleep(0.001)
            now = time.perf_counter()
            self.gaps.append((now, now - last))
            last = now

    def longest(self, start: float, end: float) -> float:
        """The longest gap that ended between START and END."""
        return max((gap for at, gap in self.gaps if start <= at <= end), default=0.0)

    def stop(self) -> None:
        self._stop = True


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    args = p.parse_args()
    params = NodeParams(model_path=args.model)
    ticker, steps, out = Ticker(), [], {}

    def step(name: str, fn):
        start = time.perf_counter()
        out[name] = fn()
        end = time.perf_counter()
        time.sleep(0.05)  # a gap that ends just after the call still counts
        steps.append({"step": name, "seconds": end - start, "longest_gap_ms": 1000 * ticker.longest(start, end + 0.05)})

    step("tokenizer", lambda: load_tokenizer(args.model))
    step("llguidance tokenizer", lambda: llguidance_tokenizer(out["tokenizer"]))
    step("weights (load_model)", lambda: load_model(args.model, quantization=params.quantization,
                                                    tokenizer=out["tokenizer"]))
    loaded = out["weights (load_model)"]
    calibration = default_calibration_path(CalibrationKey.for_model(loaded))
    if not calibration.is_file():
        sys.exit(f"no calibration at {calibration}: run `timebill calibrate --params-file config/timebill.yaml` first")
    step("calibration", lambda: Calibration.load(calibration))
    timing = out["calibration"].planning_timing()
    step("predictor", lambda: load_predictor(params.predictor_path, timing.prefill, params.fixed_prediction_tokens))
    step("engine", lambda: Engine(loaded, timing, out["predictor"], params.engine_config()))
    step("structured compiler (llguidance form given)",
         lambda: structured_compiler(loaded, out["llguidance tokenizer"]))
    step("warm-up", lambda: out["engine"].warm_up(lambda text: encode_prompt(loaded.tokenizer, text)))
    ticker.stop()
    out["engine"].close()
    write("gil_stalls", {"model": args.model, "steps": steps,
                         "note": "tokenizer and llguidance tokenizer run before the node's action server exists"})


if __name__ == "__main__":
    main()
