"""This host's noise floor: the same 512-token prefill and 9 decode steps, repeated every few
seconds for MINUTES; each run is predicted from the median of the identical runs 3-5 minutes
before it. That error is the best any time model fitted minutes earlier can do here: the
time model's error on fresh lengths (ete_mape) is read against it. Prints JSON
(results/bench/noise_floor.json).
"""
from __future__ import annotations

import statistics
import sys
import time

from common import calibrated_engine, parser, write

from timebill_ros.core.calibration import profile_phases


def predicted_from_earlier(times: list[float], stamps: list[float], lag: tuple[float, float]
                           ) -> list[tuple[float, float]]:
    """(measured, predicted) for every run that has runs LAG seconds before it to predict from."""
    out = []
    for t, s in zip(times, stamps):
        earlier = [x for x, y in zip(times, stamps) if lag[0] <= s - y <= lag[1]]
        if earlier:
            out.append((t, statistics.median(earlier)))
    return out


def relative_errors(pairs: list[tuple[float, float]]) -> dict:
    errors = sorted(abs(p - m) / m for m, p in pairs)
    return {"runs": len(errors), "mean_pct": 100 * statistics.fmean(errors) if errors else None,
            "p90_pct": 100 * errors[int(0.9 * (len(errors) - 1))] if errors else None}


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--every", type=float, default=3.0, help="seconds between runs")
    args = p.parse_args()
    minutes = 2.0 if args.quick else args.minutes
    engine, _ = calibrated_engine(args)
    n = 512
    prefill, step, stamps = [], [], []
    start = time.monotonic()
    while time.monotonic() - start < minutes * 60:
        t0 = time.monotonic()
        profile = profile_phases(engine, [n], repeats=1, decode_steps=9)
        pre, dec = profile.prefill, profile.decode
        prefill.append(pre[0][1])
        step.append(dec[0][1])
        stamps.append(t0 - start)
        time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
    engine.close()
    lag = (180.0, 300.0) if minutes >= 6 else (30.0, 60.0)
    print(f"[bench] {len(stamps)} runs in {minutes:g} min", file=sys.stderr)
    write("noise_floor", {
        "model": args.model, "prompt_tokens": n, "decode_steps": 9, "minutes": minutes, "runs": len(stamps),
        "predicted_from_runs_seconds_before": list(lag),
        "prefill": {"min_s": min(prefill), "max_s": max(prefill), "median_s": statistics.median(prefill),
                    **relative_errors(predicted_from_earlier(prefill, stamps, lag))},
        "decode_step": {"min_s": min(step), "max_s": max(step), "median_s": statistics.median(step),
                        **relative_errors(predicted_from_earlier(step, stamps, lag))},
        "series": {"t_s": stamps, "prefill_s": prefill, "decode_step_s": step},
    })


if __name__ == "__main__":
    main()
