"""Grammars hold while decoding: every sampled answer follows its JSON schema, regex or Lark grammar."""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import pytest

from service.engine.constraints import Grammar, GrammarError, compile_grammar
from service.engine.engine import Engine, Failed, Finished, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.sampler import SamplingParams

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "pets": {"type": "array", "items": {"type": "string", "enum": ["cat", "dog", "fish"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "pets", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def engine(smollm2_engine) -> Engine:
    return smollm2_engine


@pytest.fixture(scope="module")
def folder(engine) -> ModelFolder:
    return engine.folder


def _compiled(folder: ModelFolder, grammar: Grammar):
    return compile_grammar(grammar, folder.grammar_tokenizer, folder.config["vocab_size"])


async def _run(engine: Engine, request: GenerationRequest) -> tuple[str, Finished | Failed]:
    text = []
    async for event in engine.submit(request).events():
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, (Finished, Failed)):
            return "".join(text) + (event.text if isinstance(event, Finished) else ""), event
    raise AssertionError("the stream ended without Finished or Failed")


def _answers(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[str, Finished | Failed]]:
    async def all_of_them():
        return await asyncio.gather(*(_run(engine, request) for request in requests))

    return asyncio.run(all_of_them())


@pytest.mark.slow
def test_twenty_sampled_answers_all_follow_the_json_schema(folder, engine):
    prompt = folder.encode("Describe a person as JSON:")
    grammar = _compiled(folder, Grammar("json_schema", PERSON))
    requests = [
        GenerationRequest(prompt, 200, SamplingParams(temperature=1.0, seed=seed), grammar=grammar) for seed in range(20)
    ]

    answers = _answers(engine, requests)

    for text, end in answers:
        assert isinstance(end, Finished) and end.finish_reason == "stop", (text, end)
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.slow
def test_any_json_object_and_a_regular_expression_hold(folder, engine):
    prompt = folder.encode("My phone number is")
    phone = _compiled(folder, Grammar("regex", r"\(\d{3}\) \d{3}-\d{4}"))
    anything = _compiled(folder, Grammar("json_object"))
    requests = [GenerationRequest(prompt, 40, SamplingParams(temperature=1.0, seed=seed), grammar=phone) for seed in range(4)]
    ask = folder.encode_chat([{"role": "user", "content": "Give me a JSON object with a person's name and age."}])
    requests.append(GenerationRequest(ask, 160, SamplingParams(temperature=0), grammar=anything))

    answers = _answers(engine, requests)

    for text, _ in answers[:4]:
        assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", text), text
    for text, end in answers[4:]:
        assert end.finish_reason == "stop" and isinstance(json.loads(text), dict), text


@pytest.mark.slow
def test_a_lark_grammar_holds_and_unconstrained_neighbours_are_untouched(folder, engine):
    prompt = folder.encode("Answer yes or no: is the sky blue?")
    answer = _compiled(folder, Grammar("lark", 'start: ("yes" | "no") "."'))
    free = GenerationRequest(prompt, 12, SamplingParams(temperature=0), ignore_eos=True)
    alone = _answers(engine, [free])[0][0]

    (constrained, end), (beside, _) = _answers(engine, [GenerationRequest(prompt, 12, SamplingParams(temperature=0), grammar=answer), free])

    assert constrained in ("yes.", "no.") and end.finish_reason == "stop"
    assert beside == alone


def test_a_broken_grammar_is_refused_before_it_runs(folder):
    with pytest.raises(GrammarError, match="regex"):
        _compiled(folder, Grammar("regex", "[a-z"))
    with pytest.raises(GrammarError):
        _compiled(folder, Grammar("lark", "start: undefined_rule"))
