"""The node's ROS parameters: names, paper defaults, and their conversion to core settings."""
from __future__ import annotations

from dataclasses import dataclass, fields

from rclpy.node import Node

from timebill_ros.core.engine import EngineConfig
from timebill_ros.core.jobs import OnInfeasible, OverrunPolicy
from timebill_ros.core.validation import Limits


@dataclass
class NodeParams:
    """Every parameter of timebill_node with its default (config/timebill.yaml sets them too)."""

    model_path: str = "builtin:tiny-random"  # HF causal-LM directory or builtin:tiny-random
    dtype: str = "float32"
    quantization: str = ""  # "" | int8 (torchao weight-only; the paper's quantized baseline)
    threads: int = 2  # torch intra-op threads; the calibration is per thread count
    calibration_path: str = ""  # "" = $TIMEBILL_HOME/calibration/<model, dtype, threads, machine>.json
    action_name: str = "timebill/generate"
    control_rate_hz: float = 20.0  # the deadline timer; a kill lands within one period + one decode step
    diagnostics_rate_hz: float = 1.0  # DiagnosticArray on /diagnostics
    max_queue: int = 8  # accepted goals waiting behind the running one
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512  # upper bound a goal may ask for
    default_max_new_tokens: int = 128
    k: float = 5.0  # pessimistic factor for the worst-case length (paper: 5)
    alpha_max: float = 0.95  # largest eviction ratio (paper: 0.95)
    bucket_width: int = 16  # response-length predictor bucket width B (paper: 16)
    predictor_path: str = ""  # "" = fixed N_hat; builtin:default; or a `timebill train-rlp` folder
    fixed_prediction_tokens: int = 64  # N_hat when no trained length predictor is configured
    snapkv_window: int = 32  # SnapKV observation window
    snapkv_kernel: int = 5  # SnapKV pooling kernel (paper: 5)
    prefill_chunk: int = 512  # tokens per prefill forward; bounds kill latency during prefill
    overrun_policy: str = "kill"  # kill | skip_next
    on_infeasible: str = "best_effort"  # reject | best_effort

    @classmethod
    def declare(cls, node: Node) -> "NodeParams":
        """Declare every parameter on NODE and read back the values in force."""
        values = {}
        for f in fields(cls):
            values[f.name] = node.declare_parameter(f.name, getattr(cls(), f.name)).value
        return cls(**values)

    def limits(self, context_limit: int) -> Limits:
        """The goal bounds and defaults derived from these parameters."""
        return Limits(
            max_prompt_tokens=self.max_prompt_tokens,
            context_limit=context_limit,
            max_new_tokens=self.max_new_tokens,
            default_max_new_tokens=min(self.default_max_new_tokens, self.max_new_tokens),
            k=self.k,
            alpha_max=self.alpha_max,
            overrun_policy=OverrunPolicy(self.overrun_policy),
            on_infeasible=OnInfeasible(self.on_infeasible),
        )

    def engine_config(self) -> EngineConfig:
        """Engine settings; decode events come at the control rate."""
        return EngineConfig(
            snapkv_window=self.snapkv_window,
            snapkv_kernel=self.snapkv_kernel,
            prefill_chunk=self.prefill_chunk,
            event_period=1.0 / self.control_rate_hz,
        )
