"""Response-length predictors: anything with `predict(prompt_ids) -> N_hat` tokens.

TimeBill's predictor (section 1) is a small language model with a classification head
over buckets of B tokens, trained on the target model's own response lengths:
class c (0-based) holds lengths in ((c)B, (c+1)B], and N_hat is the bucket's upper
edge, capped at N_max. Its input is compressed to the longest prefix+suffix whose
predicted predictor time fits inside the target's predicted prefill time, so the
prediction hides behind prefill.

`FixedLengthPredictor` gives one configured guess for every prompt; k then carries all
the uncertainty. `ModelLengthPredictor` loads a trained predictor folder (see
`timebill train-rlp`): bucket classifiers, the regression baseline and the coarse
ProxyModel/S3-style classifiers share it.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch

from timebill_ros.core.timing import TimingModel


class LengthPredictor(Protocol):
    """Predicts the number of response tokens the target model will produce."""

    def predict(self, prompt_ids: list[int]) -> int:
        """N_hat for this prompt, in tokens."""
        ...


@dataclass(frozen=True)
class FixedLengthPredictor:
    """The same prediction for every prompt."""

    tokens: int = 64

    def predict(self, prompt_ids: list[int]) -> int:
        """Always `tokens`."""
        return self.tokens


@dataclass
class PredictorSpec:
    """How a trained predictor's output becomes N_hat, and how its input is compressed."""

    kind: str  # "buckets" | "regression" | "classes" | "probe" (core.length_probe)
    n_max: int  # the largest response length it was trained for
    bucket_width: int = 16  # kind == buckets
    # kind == buckets: how N_hat is read from the bucket probabilities. "argmax": the upper edge
    # of the likeliest bucket (the paper's; predictors trained before this field). "expectation":
    # the probability-weighted mean of the buckets' midpoints: on a few hundred distilled
    # examples the argmax settles on one bucket for every prompt (R^2 < 0) while the
    # expectation still orders prompts (issue 29); the stored pessimism k covers the rest.
    readout: str = "argmax"
    class_values: list[float] = field(default_factory=list)  # kind == classes: N_hat of each class
    class_edges: list[float] = field(default_factory=list)  # kind == classes: upper edges (training labels)
    regression_scale: float = 256.0  # kind == regression: output * scale = N_hat
    max_input_tokens: int = 2048  # the backbone's own limit (512 for the BERT-style baselines)
    head_tokens: int = 32  # compression keeps this many leading tokens (the instruction) + the tail
    time_coefficients: list[float] = field(default_factory=list)  # a_p, b_p, c_p of its own time (seconds)
    target_model: str = ""
    # A predictor trained as a LoRA adapter on the target's first `backbone_layers` layers
    # (a real target is too large to ship a copy of): the folder holds only the adapter and
    # head; loading rebuilds the truncated backbone from `backbone` (a model spec) and merges.
    backbone: str = ""
    backbone_layers: int = 0
    # The smallest k whose k x N_hat covered 90 % of the validation answers (train.predictor.
    # pessimism_k); the node plans with it unless a goal or the k parameter says otherwise.
    # 0: not chosen (predictors trained before it existed): the paper's 5.
    pessimism_k: float = 0.0
    # kind == probe (core.length_probe): the decoder layer of the target it reads after prefill,
    # and its N_hat before prefill (the first plan), the training lengths' mean.
    probe_layer: int = 0
    prior_tokens: int = 64

    def __post_init__(self) -> None:
        if self.readout not in ("argmax", "expectation"):
            raise ValueError(f"unknown predictor readout '{self.readout}' (argmax | expectation)")

    @property
    def n_classes(self) -> int:
        """Outputs of the head."""
        if self.kind == "buckets":
            return math.ceil(self.n_max / self.bucket_width)
        return len(self.class_values) if self.kind == "classes" else 1  # regression, probe: one output

    def label(self, n_tokens: int) -> int | float:
        """Training label of a response of N tokens."""
        if self.kind == "buckets":
            return min(self.n_classes, max(1, math.ceil(n_tokens / self.bucket_width))) - 1
        if self.kind == "classes":
            return next((i for i, edge in enumerate(self.class_edges) if n_tokens <= edge), len(self.class_edges) - 1)
        return n_tokens / self.regression_scale

    def tokens(self, output: torch.Tensor) -> int:
        """N_hat from the head's output for one prompt."""
        if self.kind == "buckets" and self.readout == "expectation":
            midpoints = (torch.arange(output.numel(), dtype=torch.float) + 0.5) * self.bucket_width
            return int(min(self.n_max, max(1.0, round(float((output.float().softmax(-1) * midpoints).sum())))))
        if self.kind == "buckets":
            return min(self.n_max, (int(output.argmax()) + 1) * self.bucket_width)
        if self.kind == "classes":
            return int(round(self.class_values[int(output.argmax())]))
        return int(min(self.n_max, max(1.0, round(float(output.reshape(-1)[0]) * self.regression_scale))))

    def input_budget(self, seconds: float) -> int:
        """Longest input whose predicted predictor time fits in SECONDS (at least head + 16)."""
        if not self.time_coefficients:
            return self.max_input_tokens
        own_time = TimingModel(*self.time_coefficients, p=0.0, q=0.0).prefill
        best = self.head_tokens + 16
        lo, hi = best, self.max_input_tokens
        while lo <= hi:  # the fit is non-negative, so the time grows with N
            mid = (lo + hi) // 2
            if own_time(mid) <= seconds:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    def save(self, folder: Path) -> None:
        """predictor.json beside the weights."""
        (folder / "predictor.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "PredictorSpec":
        """Read predictor.json."""
        return cls(**json.loads((folder / "predictor.json").read_text()))


def compress(ids: list[int], budget: int, head: int) -> list[int]:
    """Keep the first HEAD tokens and the last (BUDGET - HEAD): instruction and question survive."""
    if len(ids) <= budget:
        return ids
    return ids[:head] + ids[len(ids) - (budget - head):]


def truncated_backbone(target_dir: Path, layers: int, spec: PredictorSpec, pad_id: int | None):
    """A sequence classifier of the target's own architecture with its first LAYERS layers and
    the target's weights for them (the head is new): TimeBill's small LM, cut from the target.
    Only the tensors it keeps are read from the target's safetensors."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(target_dir, local_files_only=True)
    config.num_hidden_layers, config.num_labels = layers, spec.n_classes
    config.layer_types = config.layer_types[:layers] if getattr(config, "layer_types", None) else None
    config.pad_token_id = pad_id
    config.problem_type = "regression" if spec.kind == "regression" else "single_label_classification"
    torch.manual_seed(0)  # the head's initialisation
    model = AutoModelForSequenceClassification.from_config(config)
    wanted = set(model.state_dict())
    with safe_open(str(target_dir / "model.safetensors"), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k in wanted}
    missing, _ = model.load_state_dict(state, strict=False)
    if any(not k.startswith("score.") for k in missing):
        raise ValueError(f"the target's weights at '{target_dir}' do not fit a {type(model).__name__}: "
                         f"missing {missing[:3]}")
    return model


def load_classifier(folder: Path, spec: PredictorSpec):
    """The predictor's network: a saved model, or the target's truncated backbone with the
    folder's LoRA adapter merged in."""
    if not spec.backbone:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
    from peft import PeftModel

    from timebill_ros.core.model import resolve_model_path

    target_dir = resolve_model_path(spec.backbone)
    config = json.loads((target_dir / "config.json").read_text())
    base = truncated_backbone(target_dir, spec.backbone_layers, spec, config.get("pad_token_id"))
    return PeftModel.from_pretrained(base, folder, local_files_only=True).merge_and_unload()


class ModelLengthPredictor:
    """A trained predictor folder (a sequence-classification model or a LoRA adapter on the
    target's truncated backbone, + predictor.json)."""

    def __init__(self, folder: str | Path, prefill_time: Callable[[int], float] | None = None) -> None:
        self.folder = Path(folder)
        self.spec = PredictorSpec.load(self.folder)
        self.model = load_classifier(self.folder, self.spec).eval()
        self.prefill_time = prefill_time  # the target's predicted prefill time, for input compression
        self.last_input_tokens = 0
        self._lock = threading.Lock()

    def input_for(self, prompt_ids: list[int]) -> list[int]:
        """The (compressed) predictor input for a prompt."""
        budget = self.spec.max_input_tokens
        if self.prefill_time is not None:
            budget = min(budget, self.spec.input_budget(self.prefill_time(len(prompt_ids))))
        return compress(prompt_ids, budget, self.spec.head_tokens)

    @property
    def pessimism_k(self) -> float:
        """The k chosen for this predictor on its validation split (0: none)."""
        return self.spec.pessimism_k

    @torch.inference_mode()
    def predict(self, prompt_ids: list[int]) -> int:
        """N_hat in tokens."""
        ids = self.input_for(prompt_ids)
        with self._lock:
            self.last_input_tokens = len(ids)
            output = self.model(input_ids=torch.tensor([ids])).logits[0]
        return self.spec.tokens(output)


class PredictorLoadError(RuntimeError):
    """The configured predictor could not be loaded; the message names the folder and the fix."""


def check_target(predictor: LengthPredictor, model_name: str) -> None:
    """PredictorLoadError when a trained predictor was distilled from another model: it reads
    that model's token ids and predicts that model's lengths."""
    target = getattr(getattr(predictor, "spec", None), "target_model", "")
    if target and target != model_name:
        raise PredictorLoadError(
            f"the length predictor at '{predictor.folder}' was distilled from model {target}, but the node runs "
            f"{model_name}: distil one for this model with `timebill train-rlp --target <model>`, or set "
            "predictor_path to \"\" for a fixed prediction")


# builtin predictor name -> (the packaged model folder, the predictor in its rlp/)
BUILTIN_PREDICTORS = {"default": ("default", "buckets16"), "toy": ("default", "buckets16"),
                      "smollm2-tasks": ("smollm2-tasks", "buckets16"),
                      "smollm2-tasks-v3": ("smollm2-tasks-v3", "buckets16"),
                      "smollm2-tasks-v9": ("smollm2-tasks-v9", "buckets16"),
                      "smollm2-tasks-v9-probe": ("smollm2-tasks-v9", "probe")}


def predictor_folder(spec: str) -> Path:
    """The folder a predictor_path names (`builtin:NAME` or a path)."""
    if not spec.startswith("builtin:"):
        return Path(spec).expanduser()
    name = spec[len("builtin:"):]
    if name not in BUILTIN_PREDICTORS:
        raise PredictorLoadError(f"unknown builtin predictor '{spec}'; known: "
                                 + ", ".join(f"builtin:{n}" for n in BUILTIN_PREDICTORS))
    model, predictor = BUILTIN_PREDICTORS[name]
    return Path(__file__).resolve().parent.parent / "models" / model / "rlp" / predictor


def predictor_digest(spec: str, fixed_tokens: int = 0) -> str:
    """What a predictor_path's N_hat comes from, as a short digest of its folder's files (names and
    bytes; a retrained predictor under the same builtin name gets another), or "fixed:N" for the
    fixed prediction: results computed from N_hat say which predictor read it."""
    if not spec:
        return f"fixed:{fixed_tokens}"
    folder, digest = predictor_folder(spec), hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def load_predictor(spec: str, prefill_time: Callable[[int], float] | None, fixed_tokens: int) -> LengthPredictor:
    """`""` -> FixedLengthPredictor(fixed_tokens); `builtin:NAME` -> the shipped bucket predictor
    of builtin model NAME (`default`/`toy`, `smollm2-tasks`, `smollm2-tasks-v3`, `smollm2-tasks-v9`),
    or v9's hidden-state probe (`smollm2-tasks-v9-probe`, core.length_probe); otherwise a predictor
    folder made by `timebill train-rlp`."""
    if not spec:
        return FixedLengthPredictor(fixed_tokens)
    folder = predictor_folder(spec)
    if not (folder / "predictor.json").is_file():
        raise PredictorLoadError(
            f"no length predictor at '{folder}' (predictor.json missing): train one with "
            "`timebill train-rlp --target <model>`, or set predictor_path to \"\" for a fixed prediction"
        )
    try:
        if PredictorSpec.load(folder).kind == "probe":
            from timebill_ros.core.length_probe import HiddenStateProbe

            return HiddenStateProbe(folder)
        return ModelLengthPredictor(folder, prefill_time)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PredictorLoadError(f"could not load the length predictor at '{folder}': {exc}") from exc
