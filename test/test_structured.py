"""Structured answers (core.structured): every answer parses and validates, a bad schema is
refused with the compiler's message, N_W comes from the schema when it bounds the answer."""
import json
import time

import jsonschema
import pytest

from timebill_ros.core.engine import Engine, EngineConfig
from timebill_ros.core.jobs import CancelToken, Request, Sampling, Status
from timebill_ros.core.predictor import FixedLengthPredictor
from timebill_ros.core.structured import Compiler, ConstraintError, Unbounded, longest_answer_bytes
from timebill_ros.core.timing import TimingModel
from timebill_ros.core.validation import Goal, InvalidGoal, Limits, build_request

PICK_AND_PLACE = {
    "type": "object",
    "properties": {"action": {"enum": ["pick", "place", "move"]},
                   "object": {"type": "string", "maxLength": 12},
                   "place": {"enum": ["sink", "shelf", "table"]}},
    "required": ["action", "object", "place"], "additionalProperties": False,
}
WAYPOINTS = {
    "type": "object",
    "properties": {"waypoints": {"type": "array", "maxItems": 3,
                                 "items": {"type": "integer", "minimum": -50, "maximum": 50}},
                   "fast": {"type": "boolean"}},
    "required": ["waypoints", "fast"], "additionalProperties": False,
}
STATUS = {"enum": ["ok", "blocked", "lost"]}
TIMING = TimingModel(a=1e-9, b=1e-5, c=1e-3, p=1e-7, q=1e-3)


@pytest.fixture(scope="module")
def compiler(tiny):
    return Compiler(tiny.tokenizer, int(tiny.model.config.vocab_size))


@pytest.fixture(scope="module")
def engine(tiny):
    e = Engine(tiny, TIMING, FixedLengthPredictor(8), EngineConfig(snapkv_window=16, event_period=0.0))
    yield e
    e.close()


def test_the_longest_answer_of_a_bounded_schema():
    assert longest_answer_bytes(STATUS) == len('"blocked"')
    assert longest_answer_bytes({"type": "integer", "minimum": -50, "maximum": 7}) == 3
    # {"waypoints": [-50, -50, -50], "fast": false}
    assert longest_answer_bytes(WAYPOINTS) == len('{"waypoints": [-50, -50, -50], "fast": false}')
    for unbounded in ({"type": "string"}, {"type": "array", "items": STATUS}, {"type": "object"},
                      {"type": "number"}):
        with pytest.raises(Unbounded):
            longest_answer_bytes(unbounded)


@pytest.mark.parametrize("schema", [PICK_AND_PLACE, WAYPOINTS, STATUS], ids=["enums", "bounded-array", "enum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_structured_answer_parses_and_validates(engine, compiler, schema, seed):
    constraint = compiler.compile(json.dumps(schema))
    events = []
    request = Request([(7 * i + seed) % 250 for i in range(40)], budget=60.0, max_new_tokens=256,
                      constraint=constraint, sampling=Sampling(temperature=1.0, seed=seed))
    result = engine.run(request, CancelToken(), events.append)
    assert result.status is Status.SUCCEEDED, result.reason
    jsonschema.validate(json.loads(result.text), schema)
    # N_W is the schema's longest answer in tokens, and the feedback says so.
    planned = next(e for e in events if e.phase == "planned")
    assert planned.worst_case_source == "schema"
    assert planned.worst_case_tokens == constraint.longest_tokens <= 256
    assert len(result.token_ids) <= constraint.longest_tokens


def test_a_bad_schema_or_grammar_is_refused_with_the_compilers_message(compiler):
    def build(**fields):
        return build_request(Goal(prompt="hi", budget=1.0, **fields), Limits(), lambda m: [1, 2, 3], 0.0,
                             compiler.compile)

    with pytest.raises(InvalidGoal, match="json_schema does not compile: .*strin"):
        build(json_schema='{"type": "object", "properties": {"a": {"type": "strin"}}}')
    with pytest.raises(InvalidGoal, match="json_schema does not compile"):
        build(json_schema="{not json")
    with pytest.raises(InvalidGoal, match="grammar does not compile"):
        build(grammar="root ::= (")
    with pytest.raises(InvalidGoal, match="not both"):
        build(json_schema=json.dumps(STATUS), grammar="regex:[a-z]+")
    with pytest.raises(ConstraintError):
        compiler.compile(json_schema="[1, 2]")
    request, _ = build(grammar='root ::= "yes" | "no"')
    assert request.constraint is not None and request.constraint.source == "grammar"


def test_an_unbounded_schema_plans_with_the_predictor_and_a_killed_answer_returns_no_json(engine, compiler):
    constraint = compiler.compile(json.dumps({"type": "object", "properties": {"note": {"type": "string"}},
                                              "required": ["note"], "additionalProperties": False}))
    assert constraint.longest_tokens is None
    events, token = [], CancelToken()
    token.arm_deadline(time.monotonic() + 0.05, "killed")

    def slow_down(event):  # each feedback takes a while: the deadline passes mid-answer
        events.append(event)
        time.sleep(0.02)

    result = engine.run(Request(list(range(1, 40)), budget=60.0, max_new_tokens=200, constraint=constraint),
                        token, slow_down)
    assert next(e for e in events if e.phase == "planned").worst_case_source == "predictor"
    assert result.status is Status.KILLED_AT_DEADLINE and result.text == "" and result.token_ids == []
