"""LongBench's metrics, on well-kept libraries (rouge-score, rapidfuzz).

- QA F1: LongBench's `qa_f1_score`: token-level F1 after lower-casing and removing
  punctuation and articles.
- ROUGE-L: F-measure of the longest common subsequence (LongBench's `rouge_score`),
  computed with Google's rouge-score.
- Edit similarity: LongBench's `code_sim_score` is fuzz.ratio / 100 (normalised
  Levenshtein) on the first non-comment line; our code answers may span several lines,
  so the whole answer is compared, without the line numbers the prompt shows.
"""
from __future__ import annotations

import re
import string
from collections import Counter

from rapidfuzz import fuzz
from rouge_score import rouge_scorer

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, fold white space (LongBench)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_f1(prediction: str, reference: str) -> float:
    """Token F1 of normalised answers."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure."""
    if not prediction.strip() or not reference.strip():
        return float(prediction.strip() == reference.strip())
    return _ROUGE.score(reference, prediction)["rougeL"].fmeasure


def edit_similarity(prediction: str, reference: str) -> float:
    """Normalised Levenshtein similarity in [0, 1]."""
    return fuzz.ratio(prediction.strip("\n"), reference.strip("\n")) / 100.0


_LINE_NUMBER = re.compile(r"^\d+\| ?", re.M)


def code_similarity(prediction: str, reference: str) -> float:
    """Edit similarity of the code itself: the "<number>| " the code task numbers its lines
    with (tasks.code_example) is dropped from both, so a right number earns nothing."""
    return edit_similarity(_LINE_NUMBER.sub("", prediction), _LINE_NUMBER.sub("", reference))


METRIC_OF_TASK = {"qa": qa_f1, "code": code_similarity, "list": rouge_l, "summary": rouge_l}


def score(task: str, prediction: str, reference: str) -> float:
    """The task's LongBench metric."""
    return METRIC_OF_TASK[task](prediction, reference)
