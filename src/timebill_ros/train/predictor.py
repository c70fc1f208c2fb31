"""Train and evaluate response-length predictors (TimeBill section 1) by distillation.

1. Distillation data: prompts disjoint from the evaluation test split (the task suite's
   train split plus free-form prompts), answered by the *target* model with the serving
   settings (greedy, chat template, max_new_tokens); label = response token count.
2. Predictors, all trained the same way on the same data:
   - `buckets{B}`: the TimeBill SLM, the target's first layers + a classification head
     over ceil(N_max / B) buckets;
   - `regression`: the same SLM with a single output;
   - `proxy5`, `s3_10`: a small BERT-style encoder (512-token limit) with 5 / 10 classes,
     the ProxyModel and S3 baselines.
3. Evaluation on the test split: MAE, RMSE, R^2; with full and with compressed input.
"""
from __future__ import annotations

import gzip
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from transformers import BertConfig, BertForSequenceClassification

from timebill_ros.core.engine import Engine
from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.model import encode_prompt
from timebill_ros.core.predictor import PredictorSpec, compress, truncated_backbone
from timebill_ros.core.timing import fit_prefill
from timebill_ros.eval import tasks
from timebill_ros.train.distilled import Sample, read_distilled

PREDICTORS = ("buckets16", "buckets32", "buckets64", "regression", "proxy5", "s3_10")


def predictor_prompts(split: str, n_per_task: int, seed: int = 0, free: int = 0,
                      long: int = 0) -> list[tuple[str, str]]:
    """Task-suite prompts of SPLIT, LONG more a task in the evaluation's regime (`_suite`),
    plus FREE free-form prompts built from docstring prose."""
    prompts = [(e.id, e.prompt) for e in _suite(split, n_per_task, seed, long)]
    rng = random.Random(f"free:{split}:{seed}")
    # From the split's prose itself, not from the default model's training chats: those change
    # with its recipe, and the distillation prompts must not (they did: the shipped free-form
    # prompts no longer matched the code).
    pool = tasks.sentences(split)
    for i in range(free):
        text = " ".join(rng.sample(pool, rng.randint(2, 40)))[:4000]
        ask = rng.choice(["Summarise this text.", "Answer briefly.", "Repeat the first sentence.",
                          "What is this about?"])
        prompts.append((f"{split}-free-{i}", f"{ask}\n\n{text}"))
    return prompts


def distill(engine: Engine, prompts: list[tuple[str, str]], max_new_tokens: int, cache: Path,
            tick: Callable[[], None] = lambda: None) -> list[Sample]:
    """Answer every prompt with the target (greedy); cached as JSONL.gz (resumes, also after a
    run killed mid-write). A cached answer to other prompt tokens than the prompt's now (its
    template changed) is answered again: the cache is keyed by id, and a stale length would
    teach the predictor the old prompt's answer."""
    encoded = {pid: prompt_ids(engine, text, max_new_tokens) for pid, text in prompts}
    done = {pid: s for pid, s in read_distilled(cache).items() if encoded.get(pid, s.prompt_ids) == s.prompt_ids}
    todo = [(pid, text) for pid, text in prompts if pid not in done]
    for _ in range(len(prompts) - len(todo)):
        tick()
    if not todo:  # complete: the (shipped) file is left byte for byte as it is
        return [done[pid] for pid, _ in prompts]
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():  # rewrite what was readable, so new answers follow a complete gzip stream
        tmp = cache.with_suffix(".tmp")
        with gzip.open(tmp, "wt") as f:
            f.writelines(json.dumps(s.__dict__) + "\n" for s in done.values())
        tmp.replace(cache)
    with gzip.open(cache, "at") as f:
        for pid, _ in todo:
            ids = encoded[pid]
            result = engine.run(Request(ids, budget=1e9, max_new_tokens=max_new_tokens, fixed_alpha=0.0),
                                CancelToken())
            done[pid] = Sample(pid, ids, len(result.token_ids))
            f.write(json.dumps(done[pid].__dict__) + "\n")
            f.flush()
            tick()
    return [done[pid] for pid, _ in prompts]


def prompt_ids(engine: Engine, text: str, max_new_tokens: int) -> list[int]:
    """The tokens the target answers for TEXT: its chat encoding, cut to leave room for the answer."""
    return encode_prompt(engine.loaded.tokenizer, text)[: engine.loaded.context_limit - max_new_tokens]


def spec_for(name: str, train: list[Sample], n_max: int, target: str) -> PredictorSpec:
    """The spec of a named predictor; coarse classes are quantiles of the training lengths."""
    if name.startswith("buckets"):
        return PredictorSpec("buckets", n_max, bucket_width=int(name[7:]), readout="expectation", target_model=target)
    if name == "regression":
        return PredictorSpec("regression", n_max, target_model=target)
    n_classes = 5 if name == "proxy5" else 10
    lengths = np.array(sorted(s.n_tokens for s in train))
    edges = sorted(set(float(np.quantile(lengths, (i + 1) / n_classes)) for i in range(n_classes)))
    edges[-1] = float(n_max)
    values, low = [], 0.0
    for edge in edges:  # each class predicts the mean training length inside it
        inside = lengths[(lengths > low) & (lengths <= edge)]
        values.append(float(inside.mean()) if len(inside) else edge)
        low = edge
    return PredictorSpec("classes", n_max, class_values=values, class_edges=edges, max_input_tokens=512,
                         target_model=target)


def build_model(name: str, spec: PredictorSpec, target_dir: Path, layers: int, vocab: int, pad_id: int,
                lora_rank: int = 0):
    """The SLM (the target's first LAYERS layers + head, fully trained, or with LORA_RANK > 0
    a LoRA adapter + head, of which only the adapter is saved) or a from-scratch BERT-style encoder."""
    torch.manual_seed(0)
    if spec.kind != "classes":
        model = truncated_backbone(target_dir, layers, spec, pad_id)
        if not lora_rank:
            return model
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear",
                            modules_to_save=["score"], task_type="SEQ_CLS")
        return get_peft_model(model, config)
    config = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=512, num_labels=spec.n_classes,
                        pad_token_id=pad_id)
    return BertForSequenceClassification(config)


def predict_tokens(model, spec: PredictorSpec, ids: list[int]) -> int:
    """N_hat for one (already compressed) input."""
    with torch.inference_mode():
        return spec.tokens(model(input_ids=torch.tensor([ids])).logits[0])


def fit(model, spec: PredictorSpec, train: list[Sample], val: list[Sample], *, epochs: int, lr: float,
        head_lr: float | None = None, accumulate: int = 1, patience: int = 3, seed: int = 0,
        tick: Callable[[], None] = lambda: None) -> dict:
    """Train with AdamW, batch 1 (no padding) x ACCUMULATE, the new head at HEAD_LR (default
    10 x LR: it starts from random while the backbone starts trained); keep the epoch with the
    best validation MAE, stop after PATIENCE epochs without a better one.

    One optimizer step per example by default: with a few hundred distilled examples, 8 per
    step left 79 steps in three epochs and a head that predicted one bucket for every prompt."""
    rng = random.Random(seed)
    head = [p for n, p in model.named_parameters() if p.requires_grad and _is_head(n)]
    body = [p for n, p in model.named_parameters() if p.requires_grad and not _is_head(n)]
    opt = torch.optim.AdamW([{"params": body, "lr": lr}, {"params": head, "lr": head_lr or 10 * lr}],
                            weight_decay=0.01)
    best, best_state, history, since_best = math.inf, None, [], 0
    for epoch in range(epochs):
        model.train()
        order = list(train)
        rng.shuffle(order)
        for i, s in enumerate(order):
            ids = compress(s.prompt_ids, spec.max_input_tokens, spec.head_tokens)
            label = spec.label(s.n_tokens)
            target = torch.tensor([label], dtype=torch.float if spec.kind == "regression" else torch.long)
            loss = model(input_ids=torch.tensor([ids]), labels=target).loss / accumulate
            loss.backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(order):
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
            tick()
        model.eval()
        mae = evaluate(model, spec, val)["MAE"]
        history.append(mae)
        if mae < best:
            best, best_state, since_best = mae, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    model.load_state_dict(best_state)
    return {"val_mae_by_epoch": history, "best_val_mae": best, "lr": lr, "head_lr": head_lr or 10 * lr,
            "accumulate": accumulate}


def _is_head(name: str) -> bool:
    """The classification head: `score` in the SLM (also under a LoRA wrapper), `classifier` in BERT."""
    return ".score." in f".{name}" or name.startswith("classifier.") or ".classifier." in name


def predictions(model, spec: PredictorSpec, samples: list[Sample],
                budget: Callable[[int], int] | None = None) -> tuple[list[int], list[int], int]:
    """(distilled lengths, N_hat, how many inputs were compressed) over SAMPLES."""
    truth, pred, truncated = [], [], 0
    for s in samples:
        limit = spec.max_input_tokens if budget is None else min(spec.max_input_tokens, budget(len(s.prompt_ids)))
        ids = compress(s.prompt_ids, limit, spec.head_tokens)
        truncated += len(ids) < len(s.prompt_ids)
        truth.append(s.n_tokens)
        pred.append(predict_tokens(model, spec, ids))
    return truth, pred, truncated


def evaluate(model, spec: PredictorSpec, samples: list[Sample], budget: Callable[[int], int] | None = None) -> dict:
    """MAE, RMSE, R^2, Kendall's tau, the share within 50 tokens of N_hat against the distilled
    lengths (optionally with compressed input)."""
    truth, pred, truncated = predictions(model, spec, samples, budget)
    return {**length_metrics(truth, pred, spec.n_max), "n": len(samples), "truncated_share": truncated / len(samples)}


def length_metrics(truth: list[int], pred: list[float], n_max: int) -> dict:
    """MAE, RMSE, R^2; the share of answers that ran to the token cap N_MAX and of the
    variance they hold; and the same metrics without them. Capped answers (a target looping)
    are few but can hold most of the variance, which then decides R^2 alone."""
    below = [(t, p) for t, p in zip(truth, pred) if t < n_max]
    mean = statistics.fmean(truth)
    capped_sq = sum((t - mean) ** 2 for t in truth if t >= n_max)
    total_sq = sum((t - mean) ** 2 for t in truth)
    return {**_metrics(truth, pred), "capped_share": 1 - len(below) / len(truth),
            "capped_variance_share": capped_sq / total_sq if total_sq else 0.0,
            "below_cap": {**_metrics(*zip(*below)), "n": len(below)} if len(below) > 1 else {}}


def task_of(sample: Sample) -> str:
    """The task a distilled prompt came from (its id is <split>-<task>-...)."""
    return sample.id.split("-")[1]


def reference_predictors(train: list[Sample], test: list[Sample], n_max: int,
                         answer_tokens: dict[str, int] | None = None,
                         asked: dict[str, int] | None = None) -> dict[str, dict]:
    """What simple prompt features alone explain of the lengths, on the same test split:
    the task's mean training length, and a linear fit on the task and the prompt's length.
    Neither is a serving predictor (the node does not know a prompt's task); they bound
    from below what a predictor that reads the prompt should reach.

    With ANSWER_TOKENS (a prompt id's reference answer length, in tokens), a third: a linear
    fit on the task and the reference answer's length. It knows the right answer, so it is
    an oracle: how much of the target's lengths a predictor that reads the prompt perfectly
    (counts the items, reads "the next 3 lines") could explain; the rest is the target
    departing from the reference (answers that loop, code that runs past the lines asked).

    With ASKED (a prompt id's `tasks.asked_count`: the bullet points or lines its instruction
    asks for), a fourth: a fit on the task and, per task, that count. The ceiling of a
    predictor that reads the instruction perfectly but counts nothing in the document.
    """
    from sklearn.linear_model import LinearRegression

    names = sorted({task_of(s) for s in train})

    def features(samples: list[Sample], extra: Callable[[Sample], float], per_task: bool) -> np.ndarray:
        one_hot = [[task_of(s) == t for t in names] for s in samples]
        slopes = [[extra(s) * hot for hot in row] if per_task else [extra(s)] for s, row in zip(samples, one_hot)]
        return np.array([row + slope for row, slope in zip(one_hot, slopes)], float)

    def linear(fit_on: list[Sample], extra: Callable[[Sample], float], per_task: bool = False) -> list[float]:
        y = np.array([s.n_tokens for s in fit_on], float)
        model = LinearRegression().fit(features(fit_on, extra, per_task), y)
        return [float(min(n_max, max(1.0, v))) for v in model.predict(features(test, extra, per_task))]

    y = np.array([s.n_tokens for s in train], float)
    truth = [s.n_tokens for s in test]
    mean_of = {t: float(y[[task_of(s) == t for s in train]].mean()) for t in names}
    preds = {"task_mean": [mean_of.get(task_of(s), float(y.mean())) for s in test],
             "task_and_length": linear(train, lambda s: len(s.prompt_ids) / 1000)}
    if answer_tokens and all(s.id in answer_tokens for s in test):
        known = [s for s in train if s.id in answer_tokens]  # the free-form prompts have no reference
        preds["task_and_answer"] = linear(known, lambda s: answer_tokens[s.id] / 100)
    if asked and all(s.id in asked for s in test):
        known = [s for s in train if s.id in asked]
        preds["task_and_asked"] = linear(known, lambda s: asked[s.id], per_task=True)
    return {name: {**length_metrics(truth, pred, n_max), "n": len(test)} for name, pred in preds.items()}


def asked_counts(split: str, n_per_task: int, seed: int = 0, long: int = 0) -> dict[str, int]:
    """`tasks.asked_count` of each task-suite prompt, by prompt id (for `reference_predictors`)."""
    return {e.id: tasks.asked_count(e.prompt) for e in _suite(split, n_per_task, seed, long)}


def reference_answer_tokens(tokenizer, split: str, n_per_task: int, seed: int = 0, long: int = 0) -> dict[str, int]:
    """The token count of each task-suite prompt's reference answer (+1 for the end of turn),
    by prompt id, for the oracle reference of `reference_predictors`."""
    return {e.id: len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) + 1
            for e in _suite(split, n_per_task, seed, long)}


def _suite(split: str, n_per_task: int, seed: int, long: int = 0) -> list[tasks.Example]:
    """The task-suite examples behind `predictor_prompts`: the shipped test split, or N_PER_TASK
    generated ones of each task's own sizes (prompts of 128-2,048 tokens, summaries 1,000-3,000)
    and LONG more of each in the comparison's regime (`long_examples`)."""
    if split == "test":
        return tasks.load("test")
    return tasks.generate(split, n_per_task, seed) + (long_examples(split, long) if long else [])


def long_examples(split: str, per_task: int) -> list[tasks.Example]:
    """PER_TASK prompts of every task of 1,000-3,000 tokens as `make eval` draws them, and
    PER_TASK more asking for long answers as `make eval-long` does, from SPLIT's own sources.
    A predictor fit on prompts of mostly ~600 tokens under-read the evaluation's long lists
    (the probe on v9 read lists of 47-384 tokens as 18-69; docs/evaluation.md). Their seeds are
    the comparison's (ids <split>-<task>-1-<i> and -2-<i>), their split never the test split."""
    if split == "test":
        raise ValueError("the test split is the shipped one; long prompts train and validate only")
    return (tasks.generate(split, per_task, tasks.LONG_SEED, tasks.LONG_PROMPTS)
            + tasks.generate(split, per_task, tasks.LONG_ANSWER_SEED, tasks.LONG_PROMPTS,
                             tuple(tasks.LONG_ANSWERS), answers="long"))


def target_lengths(samples: list[Sample], answer_tokens: dict[str, int], n_max: int) -> dict[str, dict]:
    """Per task, does the target stop where its answer ends: the share of its answers that ran
    to the token cap N_MAX, and the Pearson correlation of its answer lengths with the
    reference answers' (ANSWER_TOKENS by prompt id). A target that loops or ignores "the next
    N lines" leaves a length predictor nothing to learn (issue 29 asks <= 1 % and >= 0.8)."""
    out = {}
    for task in sorted({task_of(s) for s in samples}):
        rows = [(s.n_tokens, answer_tokens[s.id]) for s in samples if task_of(s) == task and s.id in answer_tokens]
        if len(rows) < 2:
            continue
        target, reference = (np.array(c, float) for c in zip(*rows))
        corr = float(np.corrcoef(target, reference)[0, 1]) if target.std() and reference.std() else float("nan")
        out[task] = {"n": len(rows), "capped_share": float(np.mean(target >= n_max)),
                     "corr_with_reference": corr, "mean_tokens": float(target.mean()),
                     "reference_mean_tokens": float(reference.mean())}
    return out


def _metrics(truth, pred) -> dict:
    """MAE, RMSE, R^2 and what the length-prediction literature reports besides: Kendall's tau
    (does the predictor order prompts by length) and the share within 50 tokens."""
    from scipy.stats import kendalltau

    tau = kendalltau(truth, pred).statistic if len(set(pred)) > 1 else 0.0  # constant predictions order nothing
    return {"MAE": float(mean_absolute_error(truth, pred)), "RMSE": float(math.sqrt(mean_squared_error(truth, pred))),
            "R2": float(r2_score(truth, pred)), "kendall_tau": float(tau),
            "within_50_share": float(np.mean(np.abs(np.asarray(truth, float) - np.asarray(pred, float)) <= 50))}


def pessimism_k(truth: list[int], pred: list[float], cover: float = 0.9) -> float:
    """The smallest k (in steps of 0.1, at least 1) whose k x N_hat covers COVER of the answers:
    chosen on the validation split and stored with the predictor (PredictorSpec.pessimism_k)."""
    ratios = sorted(t / max(p, 1.0) for t, p in zip(truth, pred))
    needed = ratios[min(len(ratios) - 1, math.ceil(cover * len(ratios)) - 1)]
    return max(1.0, math.ceil(needed * 10 - 1e-9) / 10)


def profile_time(model, lengths: list[int], vocab: int) -> list[float]:
    """Fit a_p, b_p, c_p of the predictor's own forward time (median of 3)."""
    times = []
    for n in lengths:
        ids = torch.randint(0, min(vocab, 250), (1, n))
        model(input_ids=ids)  # warm
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(input_ids=ids)
            samples.append(time.perf_counter() - t0)
        times.append(statistics.median(samples))
    return list(fit_prefill(np.array(lengths, dtype=float), np.array(times)))  # same non-negative fit


class _BackboneStub:
    """A truncated backbone timed as the served predictor would run (its input compressed)."""

    def __init__(self, model, max_input_tokens: int, head_tokens: int) -> None:
        self.model, self.max_input, self.head = model.eval(), max_input_tokens, head_tokens

    def predict(self, ids: list[int]) -> int:
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([compress(ids, self.max_input, self.head)]))
        return 1


def measure_layers(engine: Engine, candidates: list[int], lengths: list[int], repeats: int = 2,
                   tick: Callable[[], None] = lambda: None) -> list[dict]:
    """For each layer count: the predictor's own time against the target's prefill, and how
    much it slows prefill when run beside it (TimeBill hides the prediction behind prefill)."""
    from timebill_ros.core.calibration import measure_prefill_contention, median_time

    spec = PredictorSpec("buckets", 384)
    pad = engine.loaded.tokenizer.pad_token_id
    vocab = engine.loaded.model.config.vocab_size
    rows = []
    for layers in candidates:
        stub = _BackboneStub(truncated_backbone(engine.loaded.path, layers, spec, pad), spec.max_input_tokens,
                             spec.head_tokens)
        ids = {n: torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in lengths}
        own = {n: median_time(lambda: stub.predict(ids[n]), repeats) for n in lengths}
        prefill = {n: median_time(lambda: engine.prefill(ids[n]), repeats) for n in lengths}
        slowdown = measure_prefill_contention(engine, stub, lengths, repeats)
        rows.append({"layers": layers, "predictor_s": own, "prefill_s": prefill,
                     "predictor_over_prefill": max(own[n] / prefill[n] for n in lengths),
                     "prefill_slowdown_beside": slowdown})
        tick()
    return rows
