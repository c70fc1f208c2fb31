"""Fine-tune the real target (SmolLM2-135M-Instruct) on the task suite with a LoRA adapter.

As it ships, SmolLM2 answers QA with a sentence and often the wrong place, explains code
instead of continuing it and loops on lists, so its quality is too low to compare
eviction methods on. A small LoRA adapter (`peft`), trained on the suite's train split
with the loss on the answer tokens only (and the end-of-turn token, so answers stop),
makes it competent. The adapter ships in git (a few MB, bfloat16) and is merged into the
base weights once, at first load (`builtin:smollm2-tasks`, see `core.model`).

Seeded, resumable (checkpoints every few minutes), with a progress bar:
`timebill train-target` is the command; README's model card holds the measured figures.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from timebill_ros.core.model import PACKAGED_MODELS, encode_prompt, load_model
from timebill_ros.eval import tasks
from timebill_ros.train import save_without_card

TARGET_ADAPTER_DIR = PACKAGED_MODELS / "smollm2-tasks"
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TargetRecipe:
    """Everything that decides the adapter's weights (saved beside them).

    The defaults are recipe v9; each shipped adapter's `timebill_recipe.json` holds its own (a
    field it lacks, e.g. v5's `line_weight`, had its neutral value: 1.0, 0 for a cap, () for a list)."""

    base: str = "builtin:smollm2"
    seed: int = 0
    # v1 (700 steps; qa, code, list): 5 % of test answers looped to the cap, code answers ignored
    # the lines asked for. v2 (1,000 steps from scratch, prompts to 1,536 tokens, summaries added)
    # still failed the length check (issue 29): code 12.5 % at the cap, lists looping on long logs,
    # and summaries stopping after one bullet on reports longer than it was trained on. v3 started
    # from v2 (`init_adapter`) and trained 500 more steps on prompts to 3,072 tokens (the
    # evaluation's prompts go to 3,000) with the end-of-turn token's loss weighted up: summaries
    # passed, code still wrote ~1 line whatever was asked (length correlation 0.29) and one list
    # answer of 40 looped. v4 started from v3 on the prompts with the instruction, code's count
    # of lines included, also after the document (`tasks.restated`), with code's share of the
    # steps raised: code still wrote ~1 line (correlation 0.28). v5 starts from v4 on code whose
    # lines are numbered and whose lines asked for are named by number (tasks.code_example),
    # most steps on code, its prompts capped short (the stop, not the context, is to be learnt):
    # still ~1 line (0.32). v6 started from v5 with every line boundary's decision weighted up:
    # the stop moved but landed anywhere (0.19). v7 starts from v6 on code answers labelled with
    # the lines left ("3| ..", "2| ..", "1| .."), so the stop always follows the line labelled 1:
    # one-line asks came right, longer ones still often stopped after their first line (0.30).
    # v8 starts from v7 with fewer one-line asks among the code steps and line ends weighted 5x:
    # the countdown held (0.70), but 8-line answers went on after their line labelled 1. v9
    # starts from v8 with the stop weighted twice the line ends.
    init_adapter: str = "smollm2-tasks-v8"  # a packaged adapter to start from; "" = a fresh one
    steps: int = 150
    rank: int = 8  # 2.4 M trainable parameters, 4.9 MB in bfloat16
    lora_alpha: int = 16
    lr: float = 2e-4
    warmup: int = 20
    # Train in bfloat16 (AMX makes a step ~1.5x faster than float32 here); the adapter
    # itself stays float32 and is merged into the float32 weights the node serves.
    dtype: str = "bfloat16"
    # Prompts up to this long (tokens): a step's time grows with it. v2 trained to 1,536 and its
    # summaries of 2,000-3,000-token reports stopped after the first bullet point.
    max_prompt_tokens: int = 3072
    # Per task of tasks.TASKS, a lower cap where the prompt's length does not matter to what is
    # learnt (0 = max_prompt_tokens): a code step on 3,000 tokens costs ~8x one on 400.
    task_max_prompt_tokens: tuple[int, ...] = (0, 1024, 0, 0)
    # Per task of tasks.TASKS (qa, code, list, summary): QA's loss was 0.08 at v2's end, the
    # tasks whose answer length the prompt sets get the steps (v4: most to code, whose length
    # v3 did not learn; summaries' did).
    task_weights: tuple[float, ...] = (0.2, 4.0, 0.5, 0.5)
    # Weight of the end-of-turn token's loss against an answer token's: an answer's one stop
    # decision is otherwise 1/len of its loss, and v2 ran on past the lines asked for.
    end_weight: float = 10.0  # v3-v8: 5
    # Weight of each newline that has another line after it: the answer's "go on" against the
    # end of turn's "stop" at every line's end (v6: v3-v5 stopped code after ~1 line whatever
    # was asked, e.g. "554| ... LETTER E<|im_end|>" for lines 554-556; each such decision was
    # 1 token in ~20 of a line's loss). v7: 2; v8: 5 again, now that a label says where to stop;
    # v9: 3 (8-line answers, seven go-ons to one stop, learnt to go on past the last line).
    line_weight: float = 3.0
    # Lines asked for by the code steps, drawn uniformly (empty = the splits' tasks.CODE_LINES,
    # three in seven of them one line; v8: each count once, so going on is learnt as often).
    code_lines: tuple[int, ...] = (1, 2, 3, 5, 8)


def sample_example(recipe: TargetRecipe, rng: random.Random) -> tasks.Example:
    """One fresh train-split example (the split has no fixed size: it is drawn on demand)."""
    task = rng.choices(tasks.TASKS, weights=recipe.task_weights)[0]
    shortest = 9.0 if task == "summary" else 7.0  # a report of a few sections at least
    longest = dict(zip(tasks.TASKS, recipe.task_max_prompt_tokens)).get(task) or recipe.max_prompt_tokens
    target = int(round(2 ** rng.uniform(shortest, math.log2(longest))))
    if task == "code" and recipe.code_lines:
        prompt, answer = tasks.code_example(rng, "train", target, tuple(recipe.code_lines))
    else:
        prompt, answer = tasks.MAKERS[task](rng, "train", target)
    return tasks.Example(f"train-{task}", task, "train", prompt, answer, target)


def encode_example(tokenizer, example: tasks.Example, end_ids: list[int]) -> tuple[torch.Tensor, int, list[int]]:
    """Prompt (through the chat template, as the node serves it) + answer + end of turn;
    returns the ids, where the answer starts, and the answer positions that end a line with
    another to come (`line_ends`)."""
    prompt = encode_prompt(tokenizer, example.prompt)
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    return torch.tensor([prompt + answer + end_ids]), len(prompt), line_ends(tokenizer, answer)


def line_ends(tokenizer, answer_ids: list[int]) -> list[int]:
    """Positions in ANSWER_IDS whose token ends a line (a newline): where the answer decides to
    go on with another line; at its last line's end the end of turn decides to stop."""
    return [i for i, t in enumerate(answer_ids) if tokenizer.decode([t]).endswith("\n")]


def answer_loss(model, ids: torch.Tensor, start: int, end_tokens: int = 0, end_weight: float = 1.0,
                go_ons: list[int] = (), line_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy over the answer tokens only (the prompt is given, not learned), the last
    END_TOKENS of them (the end of turn) weighted END_WEIGHT times an answer token and the
    answer positions GO_ONS (a newline with another line to come, from `line_ends`) LINE_WEIGHT times."""
    logits = model(input_ids=ids).logits[0, start - 1:-1].float()
    losses = torch.nn.functional.cross_entropy(logits, ids[0, start:], reduction="none")
    weights = torch.ones_like(losses)
    weights[list(go_ons)] = line_weight
    if end_tokens:
        weights[-end_tokens:] = end_weight
    return (losses * weights).sum() / weights.sum()


def lr_at(recipe: TargetRecipe, step: int) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))


def peft_model(recipe: TargetRecipe, threads: int):
    """The base model in the training dtype with a fresh, seeded LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(recipe.seed)
    loaded = load_model(recipe.base, dtype=recipe.dtype, threads=threads)
    config = LoraConfig(r=recipe.rank, lora_alpha=recipe.lora_alpha, lora_dropout=0.0,
                        target_modules=list(LORA_MODULES), task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, config)
    if recipe.init_adapter:
        _load_adapter(model, PACKAGED_MODELS / recipe.init_adapter)
    model.train()
    return model, loaded.tokenizer


def _load_adapter(model, folder: Path) -> None:
    """Start from a trained adapter's weights (same rank and modules) instead of fresh ones."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"no adapter to start from at {weights}")
    result = set_peft_model_state_dict(model, {k: v.float() for k, v in load_file(weights).items()})
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    if lora_missing:
        raise RuntimeError(f"{weights} lacks {len(lora_missing)} LoRA weights (another rank or modules?)")


def train_target(recipe: TargetRecipe, workdir: Path, out_dir: Path = TARGET_ADAPTER_DIR, threads: int = 2,
                 max_minutes: float | None = None, checkpoint_minutes: float = 3.0) -> Path:
    """Train (or resume) the adapter and export it to OUT_DIR; returns OUT_DIR."""
    workdir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = peft_model(recipe, threads)
    end_ids = tokenizer("<|im_end|>", add_special_tokens=False)["input_ids"]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    step, rng, history, minutes_before = _resume(workdir, model, opt, recipe)  # minutes of earlier runs
    started, last_ckpt = time.monotonic(), time.monotonic()
    minutes = lambda: round(minutes_before + (time.monotonic() - started) / 60, 2)  # noqa: E731
    ema: dict[str, float] = {}
    with tqdm(total=recipe.steps, initial=step, desc="training target adapter", unit="step") as bar:
        while step < recipe.steps:
            if max_minutes and time.monotonic() - started > max_minutes * 60:
                break
            example = sample_example(recipe, rng)
            ids, start, ends = encode_example(tokenizer, example, end_ids)
            for group in opt.param_groups:
                group["lr"] = lr_at(recipe, step)
            loss = answer_loss(model, ids, start, len(end_ids), recipe.end_weight, ends, recipe.line_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            ema[example.task] = 0.9 * ema.get(example.task, loss.item()) + 0.1 * loss.item()
            bar.set_postfix({t: f"{v:.2f}" for t, v in sorted(ema.items())})
            bar.update(1)
            if step % 50 == 0:
                history.append({"step": step, "loss": dict(ema), "minutes": minutes()})
            if time.monotonic() - last_ckpt > checkpoint_minutes * 60:
                _checkpoint(workdir, model, opt, step, rng, history, minutes())
                last_ckpt = time.monotonic()
    history.append({"step": step, "loss": dict(ema), "minutes": minutes()})
    _checkpoint(workdir, model, opt, step, rng, history, minutes())
    export_adapter(model, recipe, step, history, out_dir)
    return out_dir


def _checkpoint(workdir: Path, model, opt, step: int, rng: random.Random, history: list[dict],
                minutes: float) -> None:
    from peft import get_peft_model_state_dict

    tmp = workdir / "checkpoint.pt.tmp"
    torch.save({"adapter": get_peft_model_state_dict(model), "opt": opt.state_dict(), "step": step,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history, "minutes": minutes}, tmp)
    tmp.replace(workdir / "checkpoint.pt")


def _resume(workdir: Path, model, opt, recipe: TargetRecipe) -> tuple[int, random.Random, list[dict], float]:
    from peft import set_peft_model_state_dict

    rng = random.Random(f"train-target:{recipe.seed}")
    path = workdir / "checkpoint.pt"
    recipe_file = workdir / "recipe.json"
    if recipe_file.exists() and json.loads(recipe_file.read_text()) != json.loads(json.dumps(asdict(recipe))):
        raise RuntimeError(f"{workdir} holds a run of another recipe; use another --workdir or delete it")
    recipe_file.write_text(json.dumps(asdict(recipe), indent=2))
    if not path.exists():
        return 0, rng, [], 0.0
    state = torch.load(path, weights_only=False)
    set_peft_model_state_dict(model, state["adapter"])
    opt.load_state_dict(state["opt"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), rng, state["history"], float(state["minutes"])


def export_adapter(model, recipe: TargetRecipe, step: int, history: list[dict], out_dir: Path) -> None:
    """The adapter (config + bfloat16 safetensors, a few MB) and its recipe, for git."""
    from safetensors.torch import load_file, save_file

    save_without_card(model, out_dir)
    config_file = out_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = recipe.base  # not this machine's cache path
    config_file.write_text(json.dumps(config, indent=2))
    weights = out_dir / "adapter_model.safetensors"
    # bfloat16 halves the file; the merge upcasts it to the served dtype.
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(weights).items()}, weights)
    (out_dir / "timebill_recipe.json").write_text(
        json.dumps({**asdict(recipe), "trained_steps": step, "history": history}, indent=2))
