"""The task suite: deterministic, disjoint splits, lengths and answers that vary; metrics."""
import json
import platform

import pytest

from timebill_ros.eval import metrics, tasks


@pytest.fixture(scope="module")
def small():
    return tasks.generate("validation", 6, seed=3)


def test_generation_is_deterministic(small):
    again = tasks.generate("validation", 6, seed=3)
    assert [e.prompt for e in again] == [e.prompt for e in small]
    assert [e.answer for e in again] == [e.answer for e in small]


def test_splits_draw_on_disjoint_sources():
    for a, b in [("train", "test"), ("validation", "test"), ("train", "validation")]:
        assert not set(tasks.sentences(a)) & set(tasks.sentences(b))
        assert not set(tasks.code_files(a)) & set(tasks.code_files(b))


def test_every_task_is_present_with_varied_lengths_and_answers(small):
    assert {e.task for e in small} == set(tasks.TASKS)
    assert len({e.target_tokens for e in small}) > 10
    assert all(tasks.TARGET_RANGE.get(e.task, tasks.DEFAULT_RANGE)[0] <= e.target_tokens
               <= tasks.TARGET_RANGE.get(e.task, tasks.DEFAULT_RANGE)[1] for e in small)
    answers = [len(e.answer) for e in small if e.task == "list"]
    assert max(answers) > 3 * min(answers)  # answer length follows the prompt


def test_qa_answer_is_in_the_context_once_as_a_fact(small):
    for e in (e for e in small if e.task == "qa"):
        obj = e.prompt.rsplit("Where is the ", 1)[1].rstrip("?")
        assert f"The {obj} is in the {e.answer}." in e.prompt


def test_list_answer_lists_the_inserted_items_in_order(small):
    for e in (e for e in small if e.task == "list"):
        kind = e.prompt.split("list every ", 1)[1].split(" ", 1)[0]
        assert kind in tasks.KINDS
        items = e.answer.split(", ")
        positions, start = [], 0
        for item in items:  # each item appears after the previous one
            start = e.prompt.index(item, start)
            positions.append(start)
        assert positions == sorted(positions)


def test_a_summary_has_the_bullet_points_asked_for_each_a_title_and_its_lead_sentence(small):
    summaries = [e for e in small if e.task == "summary"]
    assert summaries
    for e in summaries:
        asked = e.prompt.split("Summarize the first ", 1)[1].split(" ", 1)[0]
        n = 1 if asked == "section" else int(asked)
        bullets = e.answer.split("\n")
        assert len(bullets) == n and all(b.startswith("- ") for b in bullets)
        for bullet in bullets:  # "- <title>: <lead>", the lead opening that title's section
            title, lead = bullet[2:].split(": ", 1)
            assert f"## {title}\n{lead}" in e.prompt
        assert e.prompt.count("## ") > n  # a section past the last one asked for: the answer must stop


def test_answer_lengths_span_ten_times_within_every_task_but_qa():
    examples = tasks.load("test")
    for task in set(tasks.TASKS) - {"qa"}:
        lengths = [len(e.answer) for e in examples if e.task == task]
        assert max(lengths) >= 10 * min(lengths), task


def test_shipped_splits_load_and_match_the_generator():
    shipped = tasks.load("test")
    assert {e.task for e in shipped} == set(tasks.TASKS) and all(e.split == "test" for e in shipped)
    n = sum(e.task == "qa" for e in shipped)
    manifest = json.loads((tasks.SHIPPED / "manifest.json").read_text())
    if manifest["python"] != platform.python_version():
        pytest.skip(f"splits were made on Python {manifest['python']}; its standard library may differ")
    regenerated = tasks.generate("test", n, manifest["seed"])
    stale = "shipped splits are stale: timebill make-tasks"
    assert [e.prompt for e in regenerated] == [e.prompt for e in shipped], stale
    assert [e.answer for e in regenerated] == [e.answer for e in shipped]


def test_the_evaluations_long_prompts_come_from_the_test_sources_at_the_lengths_asked():
    long = tasks.evaluation_examples(3, ("qa", "list"))
    assert [e.task for e in long] == ["qa"] * 3 + ["list"] * 3 and all(e.split == "test" for e in long)
    assert all(1000 <= e.target_tokens <= 3000 for e in long)
    assert not {e.id for e in long} & {e.id for e in tasks.load("test")}  # never a shipped test prompt's id
    assert [e.prompt for e in long] == [e.prompt for e in tasks.evaluation_examples(3, ("qa", "list"))]
    assert tasks.evaluation_examples(2, ("code",), None) == tasks.first_per_task(tasks.load("test"), 2, ("code",))


def test_a_prompt_the_caller_refuses_is_redrawn_and_a_refusal_of_all_is_an_error():
    def even(prompt: str) -> bool:  # refuses about half of all prompts
        return len(prompt) % 2 == 0

    free = tasks.evaluation_examples(6, ("code",))
    assert not all(even(e.prompt) for e in free)
    sized = tasks.evaluation_examples(6, ("code",), accept=even)
    assert len(sized) == 6 and all(even(e.prompt) for e in sized)
    assert [e.id for e in sized] == [e.id for e in free]  # ids stay dense: the bags pair goals by them
    assert sized == tasks.evaluation_examples(6, ("code",), accept=even)
    with pytest.raises(ValueError, match="no code prompt of 20 drawn"):
        tasks.evaluation_examples(1, ("code",), accept=lambda prompt: False)


def test_metrics_follow_longbench():
    assert metrics.qa_f1("The Garage.", "garage") == 1.0
    assert metrics.qa_f1("kitchen", "garage") == 0.0
    assert metrics.qa_f1("garage kitchen", "garage") == pytest.approx(2 / 3)
    assert metrics.rouge_l("hammer, saw, drill", "hammer, saw, drill") == 1.0
    assert 0 < metrics.rouge_l("hammer, drill", "hammer, saw, drill") < 1
    assert metrics.edit_similarity("return x", "return x") == 1.0
    assert metrics.edit_similarity("return y", "return x") == pytest.approx(7 / 8)
    # Code is scored on the code: the line numbers the prompt asks in are no part of the score.
    assert metrics.score("code", "58| return y\n59|     pass", "58| return x\n59|     pass") == pytest.approx(
        metrics.edit_similarity("return y\n    pass", "return x\n    pass"))
    assert metrics.score("code", "12| x = 1", "x = 1") == 1.0


def test_code_answers_count_their_lines_down_to_one_as_the_prompt_asks():
    import random

    for seed in range(6):
        prompt, answer = tasks.code_example(random.Random(seed), "test", 400)
        asked = tasks.asked_count(prompt)
        labels = [int(line.split("|", 1)[0]) for line in answer.split("\n")]
        assert labels == list(range(asked, 0, -1))  # one line per line asked, the last one labelled 1
        instruction = tasks.code_instruction(asked)
        assert prompt.startswith(instruction) and prompt.endswith(instruction)  # asked before and after
        assert f"{asked}| <line>" in instruction


def test_eval_quality_runs_in_the_dtype_asked_for(tiny_model_dir, tmp_path):
    """The command behind the model cards; --dtype / --quantization let the node's weights be
    chosen by quality."""
    import subprocess

    out = tmp_path / "q.json"
    run = subprocess.run(["timebill", "eval-quality", "--model", str(tiny_model_dir), "--limit", "1",
                          "--alphas", "0,0.5", "--threads", "1", "--dtype", "bfloat16", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    data = json.loads(out.read_text())
    # the node's quantization by default
    assert data["dtype"] == "bfloat16+auto-decode" and data["examples"] == len(tasks.TASKS)
    assert set(data["scores"]) == set(tasks.TASKS) and all(len(row) == 3 for row in data["scores"].values())


def test_long_answers_ask_only_for_the_upper_counts_and_leave_the_default_draws_alone():
    long = tasks.generate("test", 6, 2, (1000, 3000), ("code", "list", "summary"), answers="long")
    asked = {t: [tasks.asked_count(e.prompt) or len(e.answer.split(", ")) for e in long if e.task == t]
             for t in ("code", "list", "summary")}
    assert set(asked["code"]) <= {5, 8} and all(6 <= n <= 12 for n in asked["summary"])
    assert all(n >= 20 for n in asked["list"])  # 20-60 items (fewer only if the log were shorter)
    # The default draws are the shipped ones: asking for "any" is the old call.
    assert [e.prompt for e in tasks.generate("test", 2, 1, (1000, 3000))] == \
        [e.prompt for e in tasks.generate("test", 2, 1, (1000, 3000), answers="any")]
    with pytest.raises(ValueError, match="no long answers"):
        tasks.generate("test", 1, 2, (1000, 3000), ("qa", "code"), answers="long")
    with pytest.raises(ValueError, match="unknown answers"):
        tasks.evaluation_examples(1, ("code",), answers="longer")
