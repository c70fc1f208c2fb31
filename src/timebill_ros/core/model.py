"""Load a causal LM and its tokenizer; build prompt token ids through the chat template.

Any Hugging Face causal-LM directory works (Qwen2.5-7B-Instruct on a robot). The
spec `builtin:default` names the small chat model shipped with the package, and
`builtin:tiny-random` a tiny seeded random model that is built on first use.
Nothing is downloaded: loading is always local-files-only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from timebill_ros.core.paths import timebill_home

BUILTIN_PREFIX = "builtin:"
PACKAGED_MODELS = Path(__file__).resolve().parent.parent / "models"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the path and how to fix it."""


@dataclass
class LoadedModel:
    """A causal LM ready for inference, with what the timing model is keyed by."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    name: str
    dtype: str
    threads: int

    @property
    def context_limit(self) -> int:
        """Largest number of positions the model was built for."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def eos_token_ids(self) -> set[int]:
        """Every token id that ends a response."""
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        return ids


def resolve_model_path(spec: str) -> Path:
    """Turn a model spec (a directory or `builtin:NAME`) into a local directory."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec[len(BUILTIN_PREFIX):]
        if name == "default":
            path = PACKAGED_MODELS / "default"
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"the default model is missing at '{path}'; "
                                     "`timebill train-default-model` makes it")
            return path
        if name != "tiny-random":
            raise ModelLoadError(f"unknown builtin model '{spec}'; known: builtin:default, builtin:tiny-random")
        path = timebill_home() / "models" / "tiny-random"
        if not (path / "config.json").exists():
            from timebill_ros.core.tiny_model import build_tiny_model

            build_tiny_model(path)
        return path
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no model at '{path}' (config.json missing). Set model_path to a Hugging Face "
            "causal-LM directory, or to builtin:tiny-random."
        )
    return path


def model_fingerprint(path: Path) -> str:
    """A short, stable name for the model: folder name + hash of its config."""
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:8]
    return f"{path.name}-{digest}"


QUANTIZATIONS = ("", "int8")


def load_model(spec: str, *, dtype: str = "float32", threads: int = 2, quantization: str = "") -> LoadedModel:
    """Load model and tokenizer from SPEC, with a fixed torch thread count.

    quantization="int8" applies torchao's int8 weight-only quantization (the AWQ-like
    baseline of the paper); the calibration is then keyed by "<dtype>+int8".
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of {sorted(DTYPES)}")
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization '{quantization}'; choose one of {QUANTIZATIONS}")
    path = resolve_model_path(spec)
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a node's log is no place for a loading bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"could not load the model at '{path}': {exc}") from exc
    model.eval()
    if quantization == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
        dtype = f"{dtype}+int8"
    return LoadedModel(model, tokenizer, path, model_fingerprint(path), dtype, threads)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str = "",
    messages: list[dict[str, str]] | None = None,
) -> list[int]:
    """Token ids of a prompt (one user turn) or chat messages, with the generation prompt."""
    if not messages:
        messages = [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer("\n".join(m["content"] for m in messages))["input_ids"]
