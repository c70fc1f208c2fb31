"""The binding probe (`timebill probe-binding`): its data, its answer-only loss, a tiny run."""
import math
import random

import pytest
import torch
from click.testing import CliRunner

from timebill_ros.eval.vocab import OBJECTS, PLACES
from timebill_ros.train.binding import FRAMES, Probe, run
from timebill_ros.train.data import LEVELS, encode_pieces, kv_recall
from timebill_ros.train.default_model import Recipe, batch, build_model, loss_of, train_tokenizer

TINY = Recipe(vocab_size=300, tokenizer_conversations=20, hidden=32, layers=1, heads=2, kv_heads=1,
              intermediate=64, context=512, tokens_per_step=256, warmup=1)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TINY)


@pytest.mark.parametrize("frame", sorted(FRAMES))
def test_each_recalled_place_is_scored_once_and_belongs_to_its_key(tokenizer, frame):
    fact_frame, _ = FRAMES[frame]
    rng = random.Random(3)
    for _ in range(10):
        ids, flags = encode_pieces(tokenizer, kv_recall(rng, frame, (2, 5)))
        facts = tokenizer.decode(ids).split("Recall:")[0]
        scored = [i for i, f in enumerate(flags) if f]
        assert 2 <= len(scored) <= 5
        for i in scored:
            statement = tokenizer.decode(ids[:i]).rsplit(".", 1)[-1]  # the recall so far, up to the place
            key = next(o for o in OBJECTS if f" {o} " in statement + " ")
            place = next(p for p in PLACES if tokenizer.decode(ids[i:]).startswith(f" {p}."))
            assert fact_frame.format(o=key, p=place) in facts


@pytest.mark.parametrize("level", [LEVELS[0], next(lv for lv in LEVELS if not lv.kv)], ids=["kv", "chat"])
def test_loss_with_the_lm_head_on_weighted_tokens_only_equals_the_full_loss(tokenizer, level):
    model = build_model(TINY, tokenizer).eval()
    x, weights, flags = batch(TINY, tokenizer, random.Random(0), level)
    loss, accuracy = loss_of(model, x, weights, flags)
    logits = model(input_ids=x).logits[:, :-1]  # the full LM head, for comparison
    target, w, f = x[:, 1:], weights[:, 1:], flags[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    assert torch.allclose(loss, (ce * w).sum() / w.sum(), atol=1e-5)
    assert accuracy == (logits[f].argmax(-1) == target[f]).float().mean().item()
    if level.kv:  # answer-only: the values are exactly the weighted tokens
        assert torch.equal(w > 0, f) and f.sum() >= 2


def test_bad_probe_settings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown frame"):
        Probe(frame="nope")
    with pytest.raises(ValueError, match="min <= max"):
        Probe(facts=(5, 2))


def test_a_tiny_probe_reports_every_n_steps(tokenizer):
    reports = list(run(TINY, Probe(steps=7, every=3, facts=(2, 2)), tokenizer))
    assert [r["step"] for r in reports] == [3, 6, 7]  # and the last step, whatever EVERY is
    assert all(r["answers"] >= 2 and 0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["answer_ce"]) for r in reports)


def test_cli_frames_are_the_modules_frames():
    from timebill_ros.cli.main import cli

    frame_option = next(p for p in cli.commands["probe-binding"].params if p.name == "frame")
    assert set(frame_option.type.choices) == set(FRAMES)
    bad = CliRunner().invoke(cli, ["probe-binding", "--facts", "5", "2", "--steps", "1"])
    assert bad.exit_code != 0 and "min <= max" in bad.output
