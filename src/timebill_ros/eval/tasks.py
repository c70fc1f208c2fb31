"""An offline, LongBench-style task suite, generated deterministically from a seed and
from text on this machine (the Python standard library's source and docstrings).

Four tasks, each with its LongBench metric:
- `qa`: retrieval QA over several documents with distractor facts (QA F1);
- `code`: complete the next line(s) of real stdlib Python source (edit similarity);
- `list`: list every item of a kind found in a log, in order (ROUGE-L); the answer
  length follows the number of items, from a few tokens to a few hundred;
- `summary`: summarize the first N sections of a report in N bullet points, each the
  section's title and its lead sentence (ROUGE-L; LongBench's summaries, made extractive so
  a reference exists offline); N from 1 to 12 is in the prompt, so the answer's length
  follows it, ~20 to ~350 tokens.
Prompt lengths are spread from about 128 to 2048 tokens, summaries' from 1,000 to 3,000
(LongBench's documents are long: eviction has something to buy there). Splits are disjoint: each
split draws from its own share of the stdlib files and filler sentences (by hash)
and from its own random stream.
"""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import math
import random
import re
import sysconfig
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from timebill_ros.eval.vocab import FACT_FRAME, ITEM_FRAMES, KINDS, OBJECTS, PLACES, QUESTION_FRAME

SPLITS = ("train", "validation", "test")
TASKS = ("qa", "code", "list", "summary")
CHARS_PER_TOKEN = 4.0  # measured with the default tokenizer: prose 4.0-4.3, code 3.5 (scaled below)
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "tasks"
QA_INSTRUCTION = "Read the documents and answer the question with one word.\n\n"  # training reuses it verbatim


@dataclass
class Example:
    """One prompt with its reference answer."""

    id: str
    task: str  # qa | code | list | summary
    split: str
    prompt: str
    answer: str
    target_tokens: int  # the prompt length it was sized for

    def to_json(self) -> str:
        """One JSONL line."""
        return json.dumps(asdict(self), ensure_ascii=False)


def split_of(name: str) -> str:
    """Assign a source (file or sentence) to a split by a stable hash: 80/10/10."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def stdlib_files() -> list[Path]:
    """The standard library's Python files, in a stable order (no tests, no site-packages)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py"))
             if "test" not in p.parts[-2:][0] and "site-packages" not in p.parts and not p.name.startswith("test")]
    return files


@lru_cache(maxsize=None)
def sentences(split: str) -> tuple[str, ...]:
    """Plain English sentences from stdlib docstrings, this split's share."""
    found: set[str] = set()
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                doc = ast.get_docstring(node)
                if doc:
                    found.update(_clean_sentences(doc))
    return tuple(sorted(s for s in found if split_of(s) == split))


def _clean_sentences(doc: str) -> Iterator[str]:
    for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
        if (6 <= len(s.split()) <= 30 and s[0].isupper() and s.endswith(".") and s.isascii()
                and not re.search(r"[<>{}\[\]=_|\\]|\.\.|::", s)):
            yield s


@lru_cache(maxsize=None)
def code_files(split: str) -> tuple[Path, ...]:
    """This split's share of stdlib files, for the code task."""
    return tuple(p for p in stdlib_files() if split_of(p.name + p.parent.name) == split)


def filler(rng: random.Random, pool: tuple[str, ...], n_chars: int) -> list[str]:
    """Random sentences from POOL adding up to about N_CHARS."""
    out, total = [], 0
    while total < n_chars:
        s = rng.choice(pool)
        out.append(s)
        total += len(s) + 1
    return out


def make_qa(rng: random.Random, split: str, target: int, questions: int = 1) -> tuple[str, list[tuple[str, str]]]:
    """Documents with facts and distractors; returns (documents text, [(question, answer)])."""
    pool = sentences(split)
    n_docs = rng.randint(2, 6)
    n_facts = max(questions, rng.randint(3, 12))
    objects = rng.sample(OBJECTS, n_facts)
    facts = [(o, rng.choice(PLACES)) for o in objects]
    budget = max(200, int(target * CHARS_PER_TOKEN) - 200)
    docs: list[list[str]] = [filler(rng, pool, budget // n_docs) for _ in range(n_docs)]
    for obj, place in facts:
        doc = rng.choice(docs)
        doc.insert(rng.randint(0, len(doc)), FACT_FRAME.format(object=obj, place=place))
    text = "\n\n".join(f"Document {i + 1}:\n" + " ".join(d) for i, d in enumerate(docs))
    asked = rng.sample(facts, questions)
    return text, [(QUESTION_FRAME.format(object=o), p) for o, p in asked]


def qa_example(rng: random.Random, split: str, target: int) -> tuple[str, str]:
    """One retrieval-QA prompt and its answer."""
    text, [(question, answer)] = make_qa(rng, split, target)
    prompt = f"{QA_INSTRUCTION}{text}\n\nQuestion: {question}"
    return prompt, answer


def counted_down(lines: list[str]) -> str:
    """LINES as "<lines left>| <line>", counting down to 1: "3| a", "2| b", "1| c"."""
    return "\n".join(f"{len(lines) - i}| {line}".rstrip() for i, line in enumerate(lines))


def code_instruction(n_next: int) -> str:
    """What a code prompt asks for, before and after the excerpt (asked_count reads it)."""
    if n_next == 1:
        return 'Complete the next line of this Python code. Write it as "1| <line>".'
    return (f"Complete the next {n_next} lines of this Python code. Label them {n_next} down to 1, "
            f'from "{n_next}| <line>" to "1| <line>".')


CODE_LINES = (1, 1, 1, 2, 3, 5, 8)  # lines asked for, drawn uniformly from these (the shipped splits')


def code_example(rng: random.Random, split: str, target: int,
                 line_counts: tuple[int, ...] = CODE_LINES) -> tuple[str, str]:
    """An excerpt of real Python source and its next line(s), each labelled with the lines left.

    Why the countdown: asked for "the next N lines", targets v3 and v4 wrote about one line
    whatever N was (length correlation 0.28-0.29 with the reference). v5 and v6 saw the file's
    line numbers and were asked for "lines 58-62": stopping was then a comparison of the number
    just written with one in the instruction, and they did not learn it either (v5 stopped after
    ~1 line, v6 wherever, 0.19). Counting down, the first label copies N from the instruction,
    each next one is one less, and the stop always comes after the line labelled 1: a constant,
    not a comparison. Scored without the labels (metrics.code_similarity)."""
    while True:
        path = rng.choice(code_files(split))
        lines = [ln.rstrip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        n_next = rng.choice(line_counts)
        if len(lines) < 20 + n_next:
            continue
        budget = int(target * CHARS_PER_TOKEN * 0.87)  # code tokenizes denser than prose
        end = rng.randint(1, max(1, len(lines) - n_next))
        start, size = end, 0
        while start > 0 and size < budget:
            start -= 1
            size += len(lines[start]) + 1
        answer_lines = lines[end:end + n_next]
        if size >= budget * 0.5 and sum(len(a.strip()) for a in answer_lines) >= 4 and lines[end].strip():
            break
    return restated(code_instruction(n_next), "\n".join(lines[start:end])), counted_down(answer_lines)


@lru_cache(maxsize=None)
def neutral_sentences(split: str) -> tuple[str, ...]:
    """Sentences that mention no listed item, so a list answer is exactly the inserted items."""
    words = {w for items in KINDS.values() for w in items}
    return tuple(s for s in sentences(split) if not words & set(re.findall(r"[a-z]+", s.lower())))


def restated(instruction: str, document: str) -> str:
    """INSTRUCTION, the DOCUMENT, then INSTRUCTION again (LongBench's templates for its document
    tasks do the same: "... Now, write a one-page summary of the report.").

    Why twice: SnapKV ranks the cache by what the prompt's last 32 tokens attend to. With the
    instruction only at the top, that window is the end of the log or report, which has no
    reason to attend to the first sections or the items asked for, and the eviction dropped
    them. Measured on the v3 target (4 prompts a task of 1,000-3,000 tokens, alpha 0 / 0.5 /
    0.9): summary ROUGE-L 0.84 / 0.28 / 0.10 with the instruction at the top, 0.74 / 0.59 / 0.34
    restated; list 0.68 / 0.52 / 0.24 against 0.67 / 0.58 / 0.45; evicted list and summary
    answers that lost their stop and ran to the cap: 3 of 16 against 1 of 16.

    Code is restated too (LongBench's code template ends "Next line of code:"): with the count
    of lines only at the top, the v3 target wrote about one line whatever was asked, and an
    eviction keeps the last 32 tokens' view, not the count. The v1-v3 adapters never saw it
    (on v3, restating broke the continuation); v4 is trained on it. QA already ends with
    what its answer depends on (the question)."""
    return f"{instruction}\n\n{document}\n\n{instruction}"


LIST_ITEMS = (1, 2, 3, 5, 8, 12, 20, 30, 45, 60)  # items of the asked kind, drawn uniformly from these


def list_example(rng: random.Random, split: str, target: int,
                 item_counts: tuple[int, ...] = LIST_ITEMS) -> tuple[str, str]:
    """A log mentioning items of several kinds; the answer lists one kind's items in order."""
    pool = neutral_sentences(split)
    kind = rng.choice(sorted(KINDS))
    budget = max(200, int(target * CHARS_PER_TOKEN) - 150)
    log = filler(rng, pool, budget)
    n_items = min(len(log), rng.choice(item_counts))
    slots = sorted(rng.sample(range(len(log)), n_items))
    items = []
    for slot in slots:
        item = rng.choice(KINDS[kind])
        items.append(item)
        log[slot] = rng.choice(ITEM_FRAMES).format(item=item) + " " + log[slot]
    for _ in range(rng.randint(1, 6)):  # distractors of other kinds
        other = rng.choice([k for k in KINDS if k != kind])
        i = rng.randrange(len(log))
        log[i] = rng.choice(ITEM_FRAMES).format(item=rng.choice(KINDS[other])) + " " + log[i]
    instruction = f"Read the log and list every {kind} it mentions, in order, separated by commas."
    return restated(instruction, " ".join(log)), ", ".join(items)


SUMMARY_POINTS = tuple(range(1, 13))  # bullet points asked for


def summary_example(rng: random.Random, split: str, target: int,
                    point_counts: tuple[int, ...] = SUMMARY_POINTS) -> tuple[str, str]:
    """A report of titled sections; the answer summarizes its first N in N bullet points,
    each "- <title>: <the section's first sentence>" (N drawn from POINT_COUNTS)."""
    pool = sentences(split)
    budget = max(400, int(target * CHARS_PER_TOKEN) - 250)
    n_sections = rng.randint(SUMMARY_POINTS[-1], SUMMARY_POINTS[-1] + 8)
    # A short report has fewer sections: each holds at least two sentences (~40 tokens).
    n_sections = max(2, min(n_sections, budget // 320))
    # The POINT_COUNTS a report this long holds; a short one falls back to all that fit.
    n_points = rng.choice([n for n in point_counts if n < n_sections] or [n for n in SUMMARY_POINTS if n < n_sections])
    titles = [f"{name.capitalize()} {rng.choice(SECTION_WORDS)}" for name in rng.sample(OBJECTS, n_sections)]
    bodies = [filler(rng, pool, budget // n_sections) for _ in titles]
    report = "\n\n".join(f"## {title}\n" + " ".join(body) for title, body in zip(titles, bodies))
    points = "one bullet point" if n_points == 1 else f"{n_points} bullet points"
    first = "section" if n_points == 1 else f"{n_points} sections"
    instruction = (f"Summarize the first {first} of this report in {points}, one per section: the section's "
                   f"title, a colon and its first sentence.")
    answer = "\n".join(f"- {title}: {body[0]}" for title, body in zip(titles[:n_points], bodies))
    return restated(instruction, report), answer


_ASKED = re.compile(r"^(?:Summarize the first (?:(\d+) sections|section)|Complete the next (?:(\d+) lines|line))")


def asked_count(prompt: str) -> int:
    """How many units the instruction itself asks for: bullet points of a summary, lines of
    code; 0 where it names none (QA, lists: their length is in the document, not the
    instruction). What a length predictor that reads the instruction perfectly would know."""
    match = _ASKED.match(prompt)
    if not match:
        return 0
    return int(match.group(1) or match.group(2) or 1)


SECTION_WORDS = ("checks", "notes", "status", "review", "plan", "log", "findings", "update")
MAKERS = {"qa": qa_example, "code": code_example, "list": list_example, "summary": summary_example}
# Prompt tokens per task (log-uniform): LongBench's summaries read long documents.
TARGET_RANGE = {"summary": (1000, 3000)}
DEFAULT_RANGE = (128, 2048)


def target_length(rng: random.Random, task: str = "qa", length_range: tuple[int, int] | None = None) -> int:
    """A prompt length for TASK, log-uniform over LENGTH_RANGE or the task's own (128..2048
    tokens, summaries 1,000..3,000)."""
    low, high = length_range or TARGET_RANGE.get(task, DEFAULT_RANGE)
    return int(round(2 ** rng.uniform(math.log2(low), math.log2(high))))


MAX_DRAWS = 20  # prompts drawn for one example before generate gives up on ACCEPT
# `answers="long"`: the upper part of each task's own counts (what the targets were trained on),
# so decode is a larger share of a goal's time (issue 29 asks for levels where it is at least
# half of vanilla's; on v9 it came to 36-59 %, docs/evaluation.md). QA's answer is one word
# whatever is asked: it has no long form.
LONG_ANSWERS: dict[str, dict[str, tuple[int, ...]]] = {
    "code": {"line_counts": (5, 8)},
    "list": {"item_counts": (20, 30, 45, 60)},
    "summary": {"point_counts": tuple(range(6, 13))},
}
ANSWERS = ("any", "long")


def generate(split: str, n_per_task: int, seed: int = 0, length_range: tuple[int, int] | None = None,
             task_names: tuple[str, ...] = TASKS, accept: Callable[[str], bool] | None = None,
             answers: str = "any") -> list[Example]:
    """N_PER_TASK examples of every task for SPLIT, deterministic in (split, seed, ACCEPT);
    prompts sized within LENGTH_RANGE (tokens) when given, else each task's own range; ANSWERS
    "long" asks only for the long answers of LONG_ANSWERS (ValueError for QA, which has none).

    Sizes are estimated from characters (prose lands within 0.9-1.15x of the target, code
    0.5-2.1x): ACCEPT (a prompt -> bool, e.g. its real token count is in range) redraws a
    prompt it refuses."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if answers not in ANSWERS:
        raise ValueError(f"unknown answers {answers!r}; use one of {ANSWERS}")
    if answers == "long" and (short := [t for t in task_names if t not in LONG_ANSWERS]):
        raise ValueError(f"task(s) {short} have no long answers; long ones: {sorted(LONG_ANSWERS)}")
    out = []
    for task in task_names:
        rng = random.Random(f"{split}:{task}:{seed}")
        counts = LONG_ANSWERS[task] if answers == "long" else {}
        for i in range(n_per_task):
            for _ in range(MAX_DRAWS):
                target = target_length(rng, task, length_range)
                prompt, answer = MAKERS[task](rng, split, target, **counts)
                if accept is None or accept(prompt):
                    break
            else:
                raise ValueError(f"no {task} prompt of {MAX_DRAWS} drawn for {split} was accepted "
                                 f"(length range {length_range})")
            out.append(Example(f"{split}-{task}-{seed}-{i}", task, split, prompt, answer, target))
    return out



def save(examples: list[Example], path: Path) -> Path:
    """Write examples as gzipped JSONL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for ex in examples:
            f.write(ex.to_json() + "\n")
    return path


def load(split: str, path: Path | None = None) -> list[Example]:
    """The shipped examples of SPLIT (or those at PATH)."""
    path = path or SHIPPED / f"{split}.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [Example(**json.loads(line)) for line in f]


def first_per_task(examples: list[Example], per_task: int, task_names: tuple[str, ...] = TASKS) -> list[Example]:
    """The first PER_TASK of EXAMPLES of each task in TASK_NAMES, task by task."""
    return [e for t in task_names for e in [x for x in examples if x.task == t][:per_task]]


# The evaluation's long prompts (issue 29): eviction only buys decode time once the cache is
# long (decode step 1.08x faster at alpha 0.9 after 512 prompt tokens, 1.44x after 2,048).
LONG_PROMPTS = (1000, 3000)
LONG_SEED = 1  # ids <split>-<task>-1-<i>: never those of the shipped split (seed 0)
LONG_ANSWER_SEED = 2  # ids <split>-<task>-2-<i>: the long-answer prompts, apart from both


def evaluation_examples(per_task: int, task_names: tuple[str, ...] = TASKS,
                        prompt_tokens: tuple[int, int] | None = LONG_PROMPTS,
                        accept: Callable[[str], bool] | None = None, answers: str = "any",
                        split: str = "test") -> list[Example]:
    """The comparison's prompts: PER_TASK of each task from SPLIT's sources (the validation
    split's to tune a setting on, the test split's to report), sized within PROMPT_TOKENS
    (ACCEPT redraws those it refuses: see generate), with ANSWERS "any" or "long" (generate);
    None takes the first PER_TASK of the shipped SPLIT instead."""
    if prompt_tokens is None:
        if answers != "any":
            raise ValueError("the shipped splits have answers of every length; long answers need prompt_tokens")
        return first_per_task(load(split), per_task, task_names)
    seed = LONG_ANSWER_SEED if answers == "long" else LONG_SEED
    return generate(split, per_task, seed, prompt_tokens, task_names, accept, answers)
