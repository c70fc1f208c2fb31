"""The default model's training: curriculum data, its level logic, and a tiny resumable run."""
import json
import random
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from timebill_ros.train.data import LEVELS, conversation
from timebill_ros.train.default_model import Recipe, build_model, encode, next_level, set_local_window, train

CHAT = [level for level in LEVELS if not level.kv]  # the chat levels, after the key-value ones


def test_first_level_drills_hold_one_fact_and_ask_about_it():
    rng = random.Random(0)
    for _ in range(20):
        chat = conversation(rng, 500, CHAT[0])
        facts = chat[0]["content"]
        assert facts.split("Question:")[0].count(" is in the ") == 1
        for answer in [m["content"] for m in chat if m["role"] == "assistant"]:
            assert f"the{answer}." in facts or f"The{answer} is" in facts  # forward or reversed question


def test_recall_drills_restate_only_the_documents_facts():
    rng = random.Random(4)
    level = replace(CHAT[1], recall=1.0)
    for _ in range(20):
        user, answer = conversation(rng, 500, level)
        facts = {s.strip() + "." for s in user["content"].split("Document 1:\n")[1].split(".") if s.strip()}
        said = {s.strip() + "." for s in answer["content"].split(".") if s.strip()}
        assert said <= facts and len(said) >= 1
        assert not answer.get("retrieval")  # not counted as a first question


def test_every_retrieval_answer_is_flagged_once(tiny):
    rng = random.Random(1)
    chat = conversation(rng, 500, CHAT[3])
    ids, weights, first = encode(tiny.tokenizer, chat, 0.1)
    assert len(ids) == len(weights) == len(first)
    assert sum(first) == sum(1 for m in chat if m.get("retrieval"))
    assert all(weights[i] == 1.0 for i, f in enumerate(first) if f)


def test_code_and_list_answers_are_not_flagged(tiny):
    rng = random.Random(2)
    chats = [conversation(rng, 300, LEVELS[-1]) for _ in range(30)]
    plain = [c for c in chats if not any(m.get("retrieval") for m in c)]
    assert plain, "the last level mixes in code and list tasks"
    assert not any(any(encode(tiny.tokenizer, c, 0.1)[2]) for c in plain)


def test_batches_flag_only_each_chats_first_retrieval_answer(tiny):
    from timebill_ros.train.default_model import batch

    questions_only = replace(CHAT[2], recall=0.0)
    x, wt, first = batch(Recipe(tokens_per_step=2048), tiny.tokenizer, random.Random(3), questions_only)
    assert first.sum(dim=1).tolist() == [1] * x.shape[0]  # drills only: one first question each
    assert (wt[first] == 1.0).all()
    x, wt, first = batch(Recipe(tokens_per_step=2048), tiny.tokenizer, random.Random(3), CHAT[2])
    assert set(first.sum(dim=1).tolist()) == {0, 1}  # recall drills have no question


def test_local_window_hides_distant_tokens_from_layer_0_until_reset(tiny):
    recipe = Recipe(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, context=64)
    model = build_model(recipe, tiny.tokenizer).eval()
    a = torch.randint(5, 200, (1, 20))
    b = a.clone()
    b[0, 0] += 1  # differs only at position 0

    def last_logits_differ() -> bool:
        with torch.no_grad():
            return not torch.allclose(model(input_ids=a).logits[0, -1], model(input_ids=b).logits[0, -1])

    set_local_window(model, 8)
    assert model.config.layer_types == ["sliding_attention"]
    assert not last_logits_differ()  # position 19 sees positions 12..19 only
    set_local_window(model, 0)
    assert model.config.layer_types == ["full_attention"] and not model.config.use_sliding_window
    assert last_logits_differ()


def test_level_moves_up_only_on_accuracy_after_min_steps_and_ends_long():
    r = Recipe(steps=1000, min_level_steps=50, advance_at=0.9, long_from=0.8)
    assert next_level(r, 0, 10, 0.99, 10) == 0  # too early in the level
    assert next_level(r, 0, 60, 0.80, 60) == 0  # not accurate enough
    assert next_level(r, 0, 60, 0.95, 60) == 1
    assert next_level(r, len(LEVELS) - 1, 60, 0.95, 60) == len(LEVELS) - 1
    assert next_level(r, 1, 5, 0.0, 800) == len(LEVELS) - 1  # the long phase starts regardless


def test_tiny_training_run_resumes_and_exports_a_loadable_model(tmp_path):
    recipe = Recipe(vocab_size=300, tokenizer_conversations=20, hidden=32, layers=1, heads=2, kv_heads=1,
                    intermediate=64, context=512, steps=4, tokens_per_step=256, warmup=1, min_level_steps=1)
    work, out = tmp_path / "work", tmp_path / "model"
    train(recipe, work, out, threads=1, max_minutes=None, eval_every=1000)
    metrics = (work / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 4
    state = torch.load(work / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and "progress" in state
    with (work / "metrics.jsonl").open("a") as log:  # as if a run died between checkpoints
        log.write('{"step": 5, "loss": 1.0}\n')
    train(Recipe(**{**recipe.__dict__, "steps": 6}), work, out, threads=1, eval_every=1000)
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # resumed at 4, not restarted; the lost step 5 done once
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert set(model.config.layer_types) == {"full_attention"}  # trained at level 0 (local), ships full
    assert tok.eos_token == "<|im_end|>" and tok.chat_template


def test_probe_reads_a_checkpoint_and_splits_by_question_kind(tmp_path):
    from timebill_ros.train.probe import drill_accuracy, load_checkpoint

    recipe = Recipe(vocab_size=300, tokenizer_conversations=20, hidden=32, layers=1, heads=2, kv_heads=1,
                    intermediate=64, context=512, steps=2, tokens_per_step=256, warmup=1)
    train(recipe, tmp_path / "work", tmp_path / "model", threads=1, eval_every=1000)
    model, tokenizer, step = load_checkpoint(tmp_path / "work")
    assert step == 2
    result = drill_accuracy(model, tokenizer, facts=(1, 3), drills=6)
    assert set(result) == {"1 facts", "3 facts"}
    assert {"forward first", "reverse first"} & set(result["3 facts"])
    assert all(0.0 <= v <= 1.0 for kinds in result.values() for v in kinds.values())


def test_the_target_loss_counts_answer_tokens_only_and_weights_the_end_of_turn(tiny):
    from timebill_ros.train.target import answer_loss

    ids = torch.randint(5, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    start = 8  # 4 answer tokens, the last one the end of turn
    with torch.no_grad():
        logits = tiny.model(input_ids=ids).logits[0, start - 1:-1].float()
        each = torch.nn.functional.cross_entropy(logits, ids[0, start:], reduction="none")
        plain, weighted = answer_loss(tiny.model, ids, start), answer_loss(tiny.model, ids, start, 1, 5.0)
    assert plain == pytest.approx(each.mean().item(), rel=1e-5)
    assert weighted == pytest.approx(((each[:-1].sum() + 5.0 * each[-1]) / 8.0).item(), rel=1e-5)
    with torch.no_grad():  # the second answer token ends a line: weighted 3x besides the end
        lines = answer_loss(tiny.model, ids, start, 1, 5.0, [1], 3.0)
    assert lines == pytest.approx(((each[0] + 3.0 * each[1] + each[2] + 5.0 * each[3]) / 10.0).item(), rel=1e-5)


def test_line_ends_are_the_newlines_with_a_line_after_them(tiny):
    from timebill_ros.train.target import line_ends

    tok = tiny.tokenizer
    ids = tok("3| a = 1\n2| b = 2\n1| c", add_special_tokens=False)["input_ids"]
    ends = line_ends(tok, ids)
    assert len(ends) == 2 and all(tok.decode(ids[:i + 1]).endswith("\n") for i in ends)


def test_the_recipes_code_lines_set_what_training_asks_and_leave_the_splits_alone():
    import random

    from timebill_ros.eval import tasks
    from timebill_ros.train.target import TargetRecipe, sample_example

    recipe = TargetRecipe(task_weights=(0.0, 1.0, 0.0, 0.0), task_max_prompt_tokens=(0, 512, 0, 0), code_lines=(8,))
    rng = random.Random(0)
    asked = {tasks.asked_count(sample_example(recipe, rng).prompt) for _ in range(3)}
    assert asked == {8}
    _, answer = tasks.code_example(random.Random(0), "test", 400)  # the splits' draw: tasks.CODE_LINES
    assert answer.split("|", 1)[0] in {str(n) for n in tasks.CODE_LINES}
