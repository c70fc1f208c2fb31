"""The node's health as diagnostic_msgs/DiagnosticArray on /diagnostics, for robot monitoring."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue


def health_status(node) -> DiagnosticStatus:
    """One DiagnosticStatus from the server's state (ERROR when it cannot promise budgets)."""
    with node._lock:
        queue_depth, running, stats = len(node._queue), node._running is not None, dict(node.stats)
    cal, loaded = node.calibration, node.loaded
    values = {
        "lifecycle_state": node.lifecycle_state(),
        "model": loaded.name if loaded else node.params.model_path,
        "device": str(loaded.device) if loaded else node.params.device,
        "dtype": loaded.dtype if loaded else node.params.dtype,
        "threads": loaded.threads if loaded else node.params.threads,
        "decode_kernels": loaded.lean_step.describe() if loaded and loaded.lean_step else "the model's forward",
        "calibration": str(node.calibration_file),
        "calibration_age_s": f"{cal.age_seconds():.0f}" if cal else "none",
        "queue_depth": queue_depth,
        "running": running,
        "succeeded": stats["succeeded"],
        "killed": stats["killed"],
        "deadline_misses": stats["deadline_misses"],
        "last_alpha": f"{stats['last_alpha']:.3f}",
        "last_wcet_s": f"{stats['last_wcet']:.3f}",
    }
    online = node.engine.online if node.engine else None
    drift = online.out_of_band() if online else []
    if online:
        values.update({"online_timing": online.enabled, "prefill_slowdown": f"{online.factor('prefill'):.3f}",
                       "decode_slowdown": f"{online.factor('decode'):.3f}",
                       "timing_estimator": node.params.timing_estimator,
                       "prefill_bound_factor": f"{online.bound_factor('prefill'):.3f}",
                       "decode_bound_factor": f"{online.bound_factor('decode'):.3f}",
                       "slowdown_goals": min(online.observations(p) for p in ("prefill", "decode"))})
        if online.conformal is not None:  # how the stated miss rate is doing
            misses, scored, shifted = online.conformal.tally()
            values["timing_bound_misses"] = f"{misses} of {scored} scored ({shifted} through a change of load)"
        if online.load is not None:  # other processes' CPU use: a leading sign of slower goals
            values["other_processes_cpu_cores"] = f"{online.load.recent(1.0):.2f}"
    refusal = node.refusal()
    if refusal:
        # Starting, inactive or shutting down is a state; no model or no calibration is a fault.
        fault = (node.engine is None and not node.startup.active) or bool(node.not_ready)
        level, message = DiagnosticStatus.ERROR if fault else DiagnosticStatus.WARN, refusal
    elif drift:
        level, message = DiagnosticStatus.WARN, "timing drift: " + "; ".join(drift)
    elif queue_depth >= node.params.max_queue:
        level, message = DiagnosticStatus.WARN, "queue full: new goals are rejected"
    else:
        level, message = DiagnosticStatus.OK, "serving"
    return DiagnosticStatus(
        level=level, name=f"{node.get_name()}: time-budgeted inference", message=message,
        hardware_id=str(values["model"]), values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )


def publish_health(node, publisher) -> None:
    """Publish the node's status now."""
    msg = DiagnosticArray(status=[health_status(node)])
    msg.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(msg)
