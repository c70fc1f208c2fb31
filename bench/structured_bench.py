"""Structured answers on the real model: the mask's cost per decode step, compile time per
schema, and a robot-command task (20 prompts -> pick-and-place JSON) with validity,
exact-match accuracy and WCET coverage when N_W comes from the schema.

The mask's cost is measured on the steps the structured goals really took: each answer's
tokens are replayed through a fresh constraint (mask, then consume) and set against the
decode step of the same goal (its decode time over its steps). Prints JSON
(results/bench/structured.json).
"""
from __future__ import annotations

import json
import random
import statistics
import time

import jsonschema
from common import calibrated_engine, parser, write

from timebill_ros.core.jobs import CancelToken, Request
from timebill_ros.core.model import encode_prompt
from timebill_ros.core.structured import Compiler

OBJECTS = ["cup", "plate", "bowl", "spoon", "bottle", "apple", "book", "box"]
PLACES = ["sink", "shelf", "table", "drawer", "counter", "bin"]
COMMAND = {
    "type": "object",
    "properties": {"action": {"enum": ["pick_and_place"]}, "object": {"enum": OBJECTS},
                   "from": {"enum": PLACES}, "to": {"enum": PLACES}},
    "required": ["action", "object", "from", "to"], "additionalProperties": False,
}
SCHEMAS = {
    "command": COMMAND,
    "waypoints": {"type": "object", "properties": {
        "waypoints": {"type": "array", "maxItems": 8, "items": {"type": "integer", "minimum": -100, "maximum": 100}},
        "speed": {"enum": ["slow", "normal", "fast"]}}, "required": ["waypoints", "speed"],
        "additionalProperties": False},
    "status": {"enum": ["ok", "blocked", "lost", "charging"]},
    "note": {"type": "object", "properties": {"note": {"type": "string", "maxLength": 40}},
             "required": ["note"], "additionalProperties": False},
}
SYSTEM = ("You turn a robot operator's sentence into a JSON command with the keys action, object, from and to. "
          "action is always pick_and_place; from is where the object is now, to is where it must go.")


def robot_prompts(count: int, seed: int = 0) -> list[tuple[str, dict]]:
    """COUNT operator sentences about a scene, each with its reference command."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        obj, src, dst = rng.choice(OBJECTS), *rng.sample(PLACES, 2)
        other = rng.choice([o for o in OBJECTS if o != obj])
        scene = f"The {obj} is in the {src}. The {other} is on the {rng.choice(PLACES)}."
        sentence = f"{scene} Put the {obj} on the {dst}."
        out.append((sentence, {"action": "pick_and_place", "object": obj, "from": src, "to": dst}))
    return out


def mask_seconds(compiler: Compiler, schema: dict, tokens: list[int], eos: set[int]) -> list[float]:
    """Seconds of mask + consume for each of TOKENS, replayed through a fresh constraint."""
    import torch

    constraint = compiler.compile(json.dumps(schema))
    logits = torch.zeros(1, compiler.vocab)
    out = []
    for token in tokens:
        t0 = time.perf_counter()
        constraint.mask(logits)
        if token not in eos:
            constraint.consume(token)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = parser(__doc__)
    p.set_defaults(model="builtin:smollm2")
    p.add_argument("--prompts", type=int, default=20)
    args = p.parse_args()
    engine, cal = calibrated_engine(args)
    loaded = engine.loaded
    t0 = time.perf_counter()
    compiler = Compiler(loaded.tokenizer, int(loaded.model.config.vocab_size))
    tokenizer_s = time.perf_counter() - t0
    compile_s = {}
    for name, schema in SCHEMAS.items():
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            c = compiler.compile(json.dumps(schema))
            times.append(time.perf_counter() - t0)
        compile_s[name] = {"median_s": statistics.median(times), "longest_tokens": c.longest_tokens,
                           "planned_step_cost_s": c.step_cost}
    goals = []
    prompts = robot_prompts(4 if args.quick else args.prompts)
    for sentence, reference in prompts:
        ids = encode_prompt(loaded.tokenizer, messages=[{"role": "system", "content": SYSTEM},
                                                        {"role": "user", "content": sentence}])
        constraint = compiler.compile(json.dumps(COMMAND))
        events = []
        result = engine.run(Request(ids, budget=30.0, max_new_tokens=64, constraint=constraint), CancelToken(),
                            events.append)
        planned = next(e for e in events if e.phase == "planned")
        answer = json.loads(result.text)
        jsonschema.validate(answer, COMMAND)
        steps = max(1, len(result.token_ids) - 1)
        masks = mask_seconds(compiler, COMMAND, result.token_ids, loaded.eos_token_ids)
        goals.append({"prompt": sentence, "reference": reference, "answer": answer, "exact": answer == reference,
                      "status": result.status.name, "tokens": len(result.token_ids), "prompt_tokens": len(ids),
                      "n_w": planned.worst_case_tokens, "n_w_source": planned.worst_case_source,
                      "first_wcet_s": planned.wcet, "total_s": result.timings.total,
                      "covered": result.timings.total <= planned.wcet,
                      "decode_step_s": result.timings.decode / steps, "mask_step_s": statistics.median(masks)})
    # The mask against a decode step at 512 cached tokens (the yardstick).
    step_512 = cal.timing.decode_step(512)
    mask_median = statistics.median(g["mask_step_s"] for g in goals)
    write("structured", {
        "model": args.model, "library": "llguidance", "tokenizer_build_s": tokenizer_s, "compile": compile_s,
        "prompts": len(goals), "valid_pct": 100.0,  # every answer was validated above (jsonschema raises)
        "exact_match_pct": 100.0 * statistics.fmean(g["exact"] for g in goals),
        "wcet_coverage_pct": 100.0 * statistics.fmean(g["covered"] for g in goals),
        "n_w_from_schema": sum(g["n_w_source"] == "schema" for g in goals),
        "mask_step_s_median": mask_median, "decode_step_s_at_512": step_512,
        "mask_share_of_step_at_512_pct": 100.0 * mask_median / step_512,
        "goals": goals,
    })


if __name__ == "__main__":
    main()
