"""Train the embedded default model: a small Qwen2 chat model (GQA, RoPE, ChatML, EOS)
with its own byte-level BPE tokenizer, on the task suite's train split.

Reproducible (seeded), resumable (checkpoints every few minutes), with a progress bar.
`timebill train-default-model` is the command; README's model card holds the recipe
and the measured figures.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from timebill_ros.core.tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS
from timebill_ros.eval import tasks
from timebill_ros.train.data import LEVELS, Level, conversation, corpus_sample, encode_pieces, kv_recall

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "default"


@dataclass
class Recipe:
    """Everything that decides the trained weights (saved beside them)."""

    seed: int = 0
    vocab_size: int = 4096
    tokenizer_conversations: int = 3000  # train-split chats the BPE is fitted on
    # 2 layers / 128: in the chat probes the copy step formed there first (4 layers lagged);
    # 6,000 steps take about an hour on 2 cores.
    hidden: int = 128
    layers: int = 2
    # 2 query heads of 64 (1 KV head: still grouped-query attention). In `timebill probe-binding`
    # (adjacent key-value recall, 2-8 facts, window 4) 2 heads bound within 300-600 steps in 5 of 6
    # runs (one seed stalled at ~36 %); 8 heads of 16 never did: a key is told apart from ~110 others.
    heads: int = 2
    kv_heads: int = 1
    intermediate: int = 384
    context: int = 2048
    steps: int = 6000
    tokens_per_step: int = 4096
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    # Weight init std. HF's 0.02 left every probe on a plateau (attention uniform, the copy
    # map a product of two tiny matrices); at 0.06 the copy step formed 7x sooner (README).
    init_std: float = 0.06
    local_first_layer: bool = True  # train the drill levels with their local layer 0 (`Level.window`)
    other_token_weight: float = 0.1  # loss weight of non-answer tokens (answers weigh 1)
    # Curriculum (train.data.LEVELS): move up a level once the running accuracy of the
    # first token of each chat's first retrieval answer reaches `advance_at` (after `min_level_steps`);
    # from `long_from` of the steps on, train at the last level whatever the accuracy.
    advance_at: float = 0.9
    min_level_steps: int = 50
    long_from: float = 0.8

    def window_at(self, level: Level) -> int:
        """Layer 0's attention window at LEVEL under this recipe (0 = full attention): what
        training uses and what a probe of its checkpoint must use too."""
        return level.window if self.local_first_layer else 0


def train_tokenizer(recipe: Recipe) -> PreTrainedTokenizerFast:
    """Byte-level BPE on a sample of the train split (prose, code, answers)."""
    tok = Tokenizer(models.BPE())
    # Plain GPT-2-style byte-level BPE. (Spaces as separate tokens were tried: they double
    # the distance between a fact's key and value and the retrieval circuit did not form.)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus_sample(recipe.tokenizer_conversations, recipe.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=recipe.context)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def workdir_tokenizer(recipe: Recipe, workdir: Path) -> PreTrainedTokenizerFast:
    """WORKDIR's tokenizer, fitted (and saved there) on first use."""
    tok_dir = workdir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(recipe).save_pretrained(tok_dir)
    return PreTrainedTokenizerFast.from_pretrained(tok_dir)


def build_model(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A fresh Qwen2 with the recipe's shape."""
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden, intermediate_size=recipe.intermediate,
        num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads, num_key_value_heads=recipe.kv_heads,
        max_position_embeddings=recipe.context, rope_theta=10000.0, tie_word_embeddings=True,
        initializer_range=recipe.init_std,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(recipe.seed)
    return Qwen2ForCausalLM(config)


def set_local_window(model: Qwen2ForCausalLM, window: int) -> None:
    """Make layer 0 a sliding-window layer over WINDOW tokens, or (0) full attention again.

    Uses the config's own `layer_types` (Qwen2's sliding-window attention), so masks, cache and
    generate follow; the exported model always has full attention (export sets 0)."""
    config = model.config
    config.use_sliding_window = bool(window)
    config.sliding_window = window or None
    config.layer_types = ["sliding_attention" if window and i == 0 else "full_attention"
                          for i in range(config.num_hidden_layers)]
    model.model.has_sliding_layers = bool(window)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_type = config.layer_types[i]
        layer.self_attn.sliding_window = config.sliding_window if config.layer_types[i] == "sliding_attention" else None


def encode(tokenizer, messages: list[dict], other_weight: float) -> tuple[list[int], list[float], list[bool]]:
    """ChatML token ids of a conversation, per-token loss weights (answers weigh 1) and
    flags on the first token of each retrieval answer (for the curriculum's accuracy)."""
    ids, weights, first = [], [], []
    for m in messages:
        header = f"<|im_start|>{m['role']}\n"
        enc = tokenizer(header + m["content"] + "<|im_end|>\n", return_offsets_mapping=True)
        seen_answer = False
        for tid, (start, _) in zip(enc["input_ids"], enc["offset_mapping"]):
            is_answer = m["role"] == "assistant" and start >= len(header)
            ids.append(tid)
            weights.append(1.0 if is_answer else other_weight)
            first.append(is_answer and not seen_answer and bool(m.get("retrieval")))
            seen_answer |= is_answer
    return ids, weights, first


def batch(recipe: Recipe, tokenizer, rng: random.Random, level: Level) -> tuple[torch.Tensor, ...]:
    """Padded ids, loss weights and flags filling about tokens_per_step tokens. Only the
    first retrieval answer of each conversation is flagged: later ones can be guessed by
    elimination (run B reached 55 % that way with no binding), the first cannot. A key-value
    level (`Level.kv`) weighs and flags every recalled value, and nothing else."""
    # One length per batch (the sequences differ by at most 20%), so little is padding.
    length = 2 ** rng.uniform(7.0, math.log2(max(level.max_target, 256)))
    seqs, total = [], 0
    while total < recipe.tokens_per_step:
        if level.kv:
            ids, flags = encode_pieces(tokenizer, kv_recall(rng, level.kv, level.facts))
            seqs.append((ids, [float(f) for f in flags], flags))
        else:
            target = int(round(length * rng.uniform(0.8, 1.0)))
            ids, w, flags = (part[: recipe.context] for part in encode(tokenizer, conversation(rng, target, level),
                                                                       recipe.other_token_weight))
            first_answer = flags.index(True) if True in flags else -1
            seqs.append((ids, w, [i == first_answer for i in range(len(flags))]))
        total += len(seqs[-1][0])
    width = max(len(s[0]) for s in seqs)
    x = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    wt = torch.zeros((len(seqs), width))
    first = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (ids, w, f) in enumerate(seqs):
        x[i, : len(ids)] = torch.tensor(ids)
        wt[i, : len(w)] = torch.tensor(w)
        first[i, : len(f)] = torch.tensor(f)
    return x, wt, first


def loss_of(model, x: torch.Tensor, wt: torch.Tensor, first: torch.Tensor) -> tuple[torch.Tensor, float | None]:
    """Weighted next-token cross-entropy and the accuracy on first retrieval-answer tokens
    (None when the batch has none). The LM head runs only where a target has weight: on
    key-value levels (values only) that makes a step ~2.7x cheaper."""
    hidden = model.model(input_ids=x).last_hidden_state[:, :-1]
    target, weight, flags = x[:, 1:], wt[:, 1:], first[:, 1:]
    scored = weight > 0
    logits = model.lm_head(hidden[scored]).float()
    ce = torch.nn.functional.cross_entropy(logits, target[scored], reduction="none")
    loss = (ce * weight[scored]).sum() / weight.sum()
    if not flags.any():
        return loss, None
    flagged = flags[scored]  # every flagged token has weight 1
    return loss, (logits.argmax(-1)[flagged] == target[scored][flagged]).float().mean().item()


def optimizer(model, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW as every run of the recipe uses it (the learning rate is set per step)."""
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)


def descend(model, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on LOSS, gradients clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def next_level(recipe: Recipe, level: int, steps_in_level: int, accuracy: float, step: int) -> int:
    """The curriculum's level for the next step."""
    last = len(LEVELS) - 1
    if step >= recipe.long_from * recipe.steps:
        return last
    if steps_in_level >= recipe.min_level_steps and accuracy >= recipe.advance_at:
        return min(level + 1, last)
    return level


@torch.no_grad()
def qa_accuracy(model, tokenizer, n: int = 24, max_target_tokens: int = 2000, seed: int = 0) -> float:
    """Exact-match accuracy on validation retrieval questions (a quick progress signal)."""
    model.eval()
    rng = random.Random(f"val-qa:{seed}")
    hits = 0
    for _ in range(n):
        target = int(round(2 ** rng.uniform(7.0, math.log2(max_target_tokens))))
        prompt, answer = tasks.qa_example(rng, "validation", target)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip().lower()
        hits += text == answer.lower()
    model.train()
    return hits / n


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(recipe: Recipe, workdir: Path, out_dir: Path = DEFAULT_MODEL_DIR, threads: int = 2,
          max_minutes: float | None = None, eval_every: int = 100, checkpoint_minutes: float = 5.0,
          export_only: bool = False) -> Path:
    """Train (or resume) and export the model to OUT_DIR; returns OUT_DIR.

    EXPORT_ONLY exports the last checkpoint as it is (e.g. after stopping a run early)."""
    torch.set_num_threads(threads)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))  # for probes of checkpoints
    tokenizer = workdir_tokenizer(recipe, workdir)
    model = build_model(recipe, tokenizer)
    opt = optimizer(model, recipe)
    step, rng, progress = _resume(workdir, model, opt, recipe)
    if export_only:
        export(model, tokenizer, recipe, step, out_dir)
        return out_dir
    log = _metrics_log(workdir / "metrics.jsonl", step)
    started, last_ckpt = time.monotonic(), time.monotonic()
    model.train()
    with tqdm(total=recipe.steps, initial=step, desc="training default model", unit="step") as bar:
        while step < recipe.steps:
            if max_minutes and time.monotonic() - started > max_minutes * 60:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(recipe, step)
            level = LEVELS[progress["level"]]
            set_local_window(model, recipe.window_at(level))
            x, wt, first = batch(recipe, tokenizer, rng, level)
            loss, accuracy = loss_of(model, x, wt, first)
            descend(model, opt, loss)
            step += 1
            _track(recipe, progress, accuracy, step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{progress['accuracy']:.2f}", level=progress["level"])
            record = {"step": step, "loss": round(loss.item(), 4), "tokens": int(x.numel()),
                      "time": round(time.monotonic() - started, 1), "level": progress["level"],
                      "answer_accuracy": round(progress["accuracy"], 3)}
            if step % eval_every == 0:
                record["val_qa_exact"] = qa_accuracy(model, tokenizer, max_target_tokens=max(256, level.max_target))
                bar.write(json.dumps(record))
            log.write(json.dumps(record) + "\n")
            log.flush()
            if time.monotonic() - last_ckpt > checkpoint_minutes * 60:
                _checkpoint(workdir, model, opt, step, rng, progress)
                last_ckpt = time.monotonic()
    _checkpoint(workdir, model, opt, step, rng, progress)
    export(model, tokenizer, recipe, step, out_dir)
    return out_dir


def _metrics_log(path: Path, step: int):
    """The metrics log opened for appending, without the records of steps after STEP (those
    of a run stopped between checkpoints, which the resumed run does again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
    return path.open("a")


def _track(recipe: Recipe, progress: dict, accuracy: float | None, step: int) -> None:
    """Update the running answer accuracy (EMA) and the curriculum level."""
    if accuracy is not None:
        progress["accuracy"] = 0.9 * progress["accuracy"] + 0.1 * accuracy
    progress["steps_in_level"] += 1
    level = next_level(recipe, progress["level"], progress["steps_in_level"], progress["accuracy"], step)
    if level != progress["level"]:
        progress.update(level=level, steps_in_level=0, accuracy=0.0)
        tqdm.write(f"step {step}: curriculum level {level} {LEVELS[level]}")


def _checkpoint(workdir: Path, model, opt, step: int, rng: random.Random, progress: dict) -> None:
    tmp = workdir / "checkpoint.pt.tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "progress": progress,
                "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(workdir / "checkpoint.pt")


def _resume(workdir: Path, model, opt, recipe: Recipe) -> tuple[int, random.Random, dict]:
    rng = random.Random(f"train:{recipe.seed}")
    progress = {"level": 0, "steps_in_level": 0, "accuracy": 0.0}
    path = workdir / "checkpoint.pt"
    if not path.exists():
        return 0, rng, progress
    state = torch.load(path, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    rng.setstate(state["rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), rng, state.get("progress", progress)


def export(model, tokenizer, recipe: Recipe, step: int, out_dir: Path) -> None:
    """save_pretrained (safetensors) + tokenizer + the recipe, loadable by AutoModelForCausalLM."""
    out_dir.mkdir(parents=True, exist_ok=True)
    set_local_window(model, 0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "timebill_recipe.json").write_text(json.dumps({**asdict(recipe), "trained_steps": step}, indent=2))
