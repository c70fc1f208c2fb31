"""The node's ROS parameters: names, paper defaults, and their conversion to core settings."""
from __future__ import annotations

from dataclasses import dataclass, fields

from rclpy.node import Node

from timebill_ros.core.engine import EngineConfig
from timebill_ros.core.jobs import OnInfeasible, OverrunPolicy
from timebill_ros.core.validation import Limits


class InvalidParameter(ValueError):
    """A parameter value the node cannot start with; the message names it and the allowed values."""


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
    predictor_path: str = ""  # "" = fixed N_hat; builtin:default; or a `timebill train-rlp` folder
    fixed_prediction_tokens: int = 64  # N_hat when no trained length predictor is configured
    snapkv_window: int = 32  # SnapKV observation window
    snapkv_kernel: int = 5  # SnapKV pooling kernel (paper: 5)
    prefill_chunk: int = 512  # tokens per prefill forward; bounds kill latency during prefill
    overrun_policy: str = "kill"  # kill | skip_next
    on_infeasible: str = "best_effort"  # reject | best_effort

    def validate(self) -> None:
        """Raise InvalidParameter naming the first parameter whose value cannot work."""
        positive = {"control_rate_hz": self.control_rate_hz, "diagnostics_rate_hz": self.diagnostics_rate_hz,
                    "threads": self.threads, "max_new_tokens": self.max_new_tokens,
                    "default_max_new_tokens": self.default_max_new_tokens,
                    "max_prompt_tokens": self.max_prompt_tokens,
                    "fixed_prediction_tokens": self.fixed_prediction_tokens}
        for name, value in positive.items():
            if not value > 0:
                raise InvalidParameter(f"parameter {name} must be > 0, got {value}")
        if self.max_queue < 0:
            raise InvalidParameter(f"parameter max_queue must be >= 0, got {self.max_queue}")
        if not 1.0 <= self.k:
            raise InvalidParameter(f"parameter k must be >= 1, got {self.k}")
        if not 0.0 <= self.alpha_max < 1.0:
            raise InvalidParameter(f"parameter alpha_max must be in [0, 1), got {self.alpha_max}")
        for name, enum_type in (("overrun_policy", OverrunPolicy), ("on_infeasible", OnInfeasible)):
            if getattr(self, name) not in {e.value for e in enum_type}:
                options = ", ".join(e.value for e in enum_type)
                raise InvalidParameter(f"parameter {name} must be one of {options}, got {getattr(self, name)!r}")
        try:
            self.engine_config().validate()
        except ValueError as exc:
            raise InvalidParameter(f"parameter {exc}") from None

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
            fallback_prediction_tokens=self.fixed_prediction_tokens,
        )
