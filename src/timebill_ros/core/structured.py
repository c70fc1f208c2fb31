"""Structured answers: JSON-schema or grammar constrained decoding, with a worst case that
comes from the schema.

The constraint is compiled once per goal by llguidance (chosen over xgrammar: no triton /
TVM dependency on a CPU robot, and its mask cost is measured in bench/structured_bench.py).
Every step, the tokens the grammar does not allow get -inf before the token is chosen, so
the answer always parses; once the grammar is complete the answer ends (no EOS step needed).

A schema with bounded strings, enums, bounded arrays and closed objects has a longest
answer: `longest_answer_bytes` bounds it in bytes (a token is at least one byte), so N_W =
min(that + 1, max_new_tokens) is a true bound on the response length, not k x N_hat. The
per-step mask cost is measured at compile time on a walk through the grammar and added to
each planned decode step.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import torch

# Bytes one character of a JSON string can take in the compact form the compiler emits: a
# \uXXXX escape is 6 (UTF-8 needs at most 4).
MAX_BYTES_PER_CHAR = 6
SEPARATORS = (", ", ": ")  # the compact JSON the constraint allows (no free whitespace)
COST_WALK_STEPS = 24


class ConstraintError(ValueError):
    """A schema or grammar that does not compile; the message is the compiler's."""


class Unbounded(Exception):
    """The schema admits answers of any length."""


def grammar_text(json_schema: str, grammar: str) -> str:
    """The llguidance grammar of a goal's JSON schema or grammar (regex: "regex:" prefix; GBNF,
    llama.cpp's format: recognised by '::='; else Lark); ConstraintError names what is wrong."""
    from llguidance import LLMatcher
    from llguidance.gbnf_to_lark import gbnf_to_lark

    if json_schema and grammar:
        raise ConstraintError("set json_schema or grammar, not both")
    try:
        if json_schema:
            schema = json.loads(json_schema)
            if not isinstance(schema, dict):
                raise ConstraintError("json_schema must be a JSON object")
            return LLMatcher.grammar_from_json_schema(
                schema, defaults={"whitespace_flexible": False, "item_separator": SEPARATORS[0],
                                  "key_separator": SEPARATORS[1]})
        if grammar.startswith("regex:"):
            return LLMatcher.grammar_from_regex(grammar.removeprefix("regex:"))
        if "::=" in grammar:
            return LLMatcher.grammar_from_lark(gbnf_to_lark(grammar))
        return LLMatcher.grammar_from_lark(grammar)
    except ConstraintError:
        raise
    except Exception as exc:  # noqa: BLE001 - the grammar converters raise their own types; any is the goal's
        raise ConstraintError(f"{'json_schema' if json_schema else 'grammar'} does not compile: {exc}") from None


@dataclass
class Constraint:
    """One goal's compiled grammar: masks logits, follows the chosen tokens."""

    matcher: object  # llguidance.LLMatcher
    vocab: int
    longest_tokens: int | None  # a bound on the answer's tokens (EOS included), None when unbounded
    step_cost: float = 0.0  # seconds the mask adds to a decode step (measured at compile)
    source: str = "json_schema"

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """LOGITS [1, V] with every token the grammar does not allow at -inf."""
        allowed = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        refused = torch.ones(logits.shape[-1], dtype=torch.bool)  # ids past the tokenizer's: never
        n = min(allowed.numel(), logits.shape[-1])
        refused[:n] = allowed[:n] == 0
        return logits.masked_fill(refused, float("-inf"))

    def consume(self, token: int) -> None:
        """Follow the chosen token (it was allowed by the mask)."""
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is done: nothing but EOS may follow."""
        return self.matcher.is_stopped()

    @property
    def accepted(self) -> bool:
        """What was generated so far is a whole answer of the grammar."""
        return self.matcher.is_accepting()


class Compiler:
    """Compiles goals' constraints for one tokenizer (its llguidance form is built once, ~0.4 s for SmolLM2)."""

    def __init__(self, tokenizer, vocab: int, ll_tokenizer=None) -> None:
        self.ll_tokenizer = ll_tokenizer or llguidance_tokenizer(tokenizer)
        self.vocab = vocab

    def compile(self, json_schema: str = "", grammar: str = "") -> Constraint:
        """The constraint of a goal; ConstraintError with the compiler's message when it does not compile."""
        from llguidance import LLMatcher

        text = grammar_text(json_schema, grammar)
        error = LLMatcher.validate_grammar(text, self.ll_tokenizer)
        if error and not error.startswith("WARNING"):
            raise ConstraintError(f"{'json_schema' if json_schema else 'grammar'} does not compile: {error}")
        matcher = LLMatcher(self.ll_tokenizer, text, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{'json_schema' if json_schema else 'grammar'} does not compile: "
                                  f"{matcher.get_error()}")
        longest = None
        if json_schema:
            try:
                longest = longest_answer_bytes(json.loads(json_schema)) + 1  # + EOS
            except Unbounded:
                longest = None
        constraint = Constraint(matcher, self.vocab, longest, source="json_schema" if json_schema else "grammar")
        constraint.step_cost = measure_step_cost(constraint)
        return constraint


def llguidance_tokenizer(tokenizer):
    """TOKENIZER in llguidance's form: one native call that holds the GIL 0.2-0.3 s for SmolLM2's
    49k tokens (measured), so a node makes it before it serves. ImportError / ValueError when
    llguidance is missing or the tokenizer is not a fast one."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)


def structured_compiler(loaded, ll_tokenizer=None) -> Compiler | None:
    """The compiler of LOADED's tokenizer (LL_TOKENIZER: its llguidance form, made already), or
    None when llguidance is missing or the tokenizer is not a fast one (structured goals are
    then REJECTED with the reason)."""
    try:
        return Compiler(loaded.tokenizer, int(loaded.model.config.vocab_size), ll_tokenizer)
    except (ImportError, ValueError):
        return None


def measure_step_cost(constraint: Constraint, steps: int = COST_WALK_STEPS) -> float:
    """The 90th percentile of the mask's time over a walk of up to STEPS allowed tokens (each
    step takes the lowest allowed id), then back to the start: the per-step cost the plan adds
    (the largest would be a scheduling hiccup of the host as often as the grammar)."""
    logits = torch.zeros(1, constraint.vocab)
    times, walked = [], 0
    for _ in range(steps):
        t0 = time.perf_counter()
        masked = constraint.mask(logits)
        times.append(time.perf_counter() - t0)
        if constraint.complete:
            break
        allowed = torch.nonzero(torch.isfinite(masked[0])).flatten()
        if not allowed.numel():
            break
        constraint.consume(int(allowed[0]))
        walked += 1
    constraint.matcher.rollback(walked)
    return sorted(times)[int(0.9 * (len(times) - 1))]


def longest_answer_bytes(schema: dict, defs: dict | None = None) -> int:
    """Bytes of the longest compact JSON text SCHEMA admits; Unbounded when there is none
    (a string without maxLength, an array without maxItems, an open object, a number without
    bounds...)."""
    defs = schema.get("$defs", schema.get("definitions", {})) if defs is None else defs
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return longest_answer_bytes(defs[name], defs)
    if "const" in schema:
        return len(json.dumps(schema["const"], separators=(",", ":"), ensure_ascii=False).encode())
    if "enum" in schema:
        return max(len(json.dumps(v, separators=SEPARATORS, ensure_ascii=False).encode()) for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return max(longest_answer_bytes(s, defs) for s in schema[key])
    kind = schema.get("type")
    if isinstance(kind, list):
        return max(longest_answer_bytes({**schema, "type": k}, defs) for k in kind)
    return _BY_TYPE.get(kind, _unbounded)(schema, defs)


def _unbounded(schema: dict, defs: dict) -> int:
    raise Unbounded(f"no length bound for {schema}")


def _string(schema: dict, defs: dict) -> int:
    if "maxLength" not in schema:
        raise Unbounded("a string without maxLength")
    return 2 + MAX_BYTES_PER_CHAR * int(schema["maxLength"])


def _integer(schema: dict, defs: dict) -> int:
    if "minimum" not in schema or "maximum" not in schema:
        raise Unbounded("an integer without minimum and maximum")
    return max(len(str(int(schema["minimum"]))), len(str(int(schema["maximum"]))))


def _array(schema: dict, defs: dict) -> int:
    if "maxItems" not in schema:
        raise Unbounded("an array without maxItems")
    items = int(schema["maxItems"])
    item = longest_answer_bytes(schema.get("items", {}), defs) if items else 0
    return 2 + items * item + max(0, items - 1) * len(SEPARATORS[0])


def _object(schema: dict, defs: dict) -> int:
    if schema.get("additionalProperties", True) is not False:
        raise Unbounded("an object without additionalProperties: false")
    props = schema.get("properties", {})
    members = [len(json.dumps(k, ensure_ascii=False).encode()) + len(SEPARATORS[1]) + longest_answer_bytes(v, defs)
               for k, v in props.items()]
    return 2 + sum(members) + max(0, len(members) - 1) * len(SEPARATORS[0])


_BY_TYPE: dict[str, Callable[[dict, dict], int]] = {
    "string": _string, "integer": _integer, "array": _array, "object": _object,
    "boolean": lambda s, d: 5, "null": lambda s, d: 4,
}
