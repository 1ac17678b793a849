"""Tool calls: written and read back in one format, enforced while decoding, split out of streams."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from service.engine.constraints import compile_grammar
from service.engine.engine import Engine, Finished, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.sampler import SamplingParams
from service.serving.tool_calls import CallStream, Tool, call_grammar, parse_calls, prompt_messages, tools_system_prompt, written_call

WEATHER = Tool(
    "get_weather",
    "The weather now in a city",
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["C", "F"]}},
     "required": ["city", "unit"], "additionalProperties": False},
)
ADD = Tool("add", "Adds two integers", {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]})


def test_a_written_call_reads_back_as_the_same_call():
    text = "Let me check.\n" + written_call("add", '{"a": 1, "b": 2}') + "\n" + written_call("get_weather", '{"city": "Oslo", "unit": "C"}')

    content, calls = parse_calls(text)

    assert content == "Let me check."
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Oslo", "unit": "C"})]
    assert len({call.id for call in calls}) == 2 and all(call.id.startswith("call_") for call in calls)


def test_text_without_a_valid_call_stays_text():
    assert parse_calls("No tools needed: 2 + 2 = 4.") == ("No tools needed: 2 + 2 = 4.", [])
    assert parse_calls("<tool_call>\nnot json\n</tool_call>") == ("<tool_call>\nnot json\n</tool_call>", [])


def test_a_stream_holds_back_what_may_open_a_call_and_hands_calls_over_whole():
    text = "Sure <tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}}) + "\n</tool_call> <tool"
    stream, sent, calls = CallStream(), [], []
    for index in range(0, len(text), 3):  # three characters at a time, tags split anywhere
        piece, finished = stream.feed(text[index : index + 3])
        sent.append(piece)
        calls += finished

    assert "".join(sent) == "Sure  " and stream.flush() == "<tool"
    assert [(call.name, call.arguments) for call in calls] == [("add", '{"a": 2, "b": 3}')]


@pytest.fixture(scope="module")
def engine(smollm2_engine) -> Engine:
    return smollm2_engine


@pytest.fixture(scope="module")
def folder(engine) -> ModelFolder:
    return engine.folder


def _answers(engine: Engine, requests: list[GenerationRequest]) -> list[tuple[str, Finished]]:
    async def one(request):
        text = []
        async for event in engine.submit(request).events():
            if isinstance(event, TextDelta):
                text.append(event.text)
            elif isinstance(event, Finished):
                return "".join(text) + event.text, event
        raise AssertionError("no Finished event")

    async def all_of_them():
        return await asyncio.gather(*(one(request) for request in requests))

    return asyncio.run(all_of_them())


def _prompt(folder: ModelFolder, question: str) -> list[int]:
    system = tools_system_prompt([WEATHER, ADD])
    return folder.encode_chat([{"role": "system", "content": system}, {"role": "user", "content": question}])


@pytest.mark.slow
def test_required_tool_choice_always_gives_valid_calls(folder, engine):
    grammar = compile_grammar(call_grammar([WEATHER, ADD], required=True, parallel=True), folder.grammar_tokenizer, folder.config["vocab_size"])
    prompt = _prompt(folder, "What is the weather in Paris, in Celsius?")
    requests = [GenerationRequest(prompt, 120, SamplingParams(temperature=1.0, seed=seed), grammar=grammar) for seed in range(12)]

    for text, end in _answers(engine, requests):
        content, calls = parse_calls(text)
        assert end.finish_reason == "stop" and content is None and calls, text
        for call in calls:
            schema = {"get_weather": WEATHER, "add": ADD}[call.name].parameters
            jsonschema.validate(json.loads(call.arguments), schema)


@pytest.mark.slow
def test_a_named_tool_is_the_one_called(folder, engine):
    grammar = compile_grammar(call_grammar([ADD], required=True, parallel=False), folder.grammar_tokenizer, folder.config["vocab_size"])
    prompt = _prompt(folder, "What is the weather in Paris?")

    (text, end), = _answers(engine, [GenerationRequest(prompt, 80, SamplingParams(temperature=0.8, seed=3), grammar=grammar)])

    _, calls = parse_calls(text)
    assert end.finish_reason == "stop" and [call.name for call in calls] == ["add"], text
    jsonschema.validate(json.loads(calls[0].arguments), ADD.parameters)


@pytest.mark.slow
def test_auto_tool_choice_gives_text_or_valid_calls(folder, engine):
    grammar = compile_grammar(call_grammar([WEATHER, ADD], required=False, parallel=True), folder.grammar_tokenizer, folder.config["vocab_size"])
    prompt = _prompt(folder, "What is the weather in Rome, in Celsius?")
    requests = [GenerationRequest(prompt, 120, SamplingParams(temperature=1.0, seed=seed), grammar=grammar) for seed in range(8)]

    for text, _ in _answers(engine, requests):
        _, calls = parse_calls(text)
        assert "<tool_call>" not in text or calls, text
        for call in calls:
            jsonschema.validate(json.loads(call.arguments), {"get_weather": WEATHER, "add": ADD}[call.name].parameters)


def test_a_conversation_with_calls_and_results_renders_for_a_template_without_tools(folder):
    messages = [
        {"role": "user", "content": "Add 2 and 3, then 4 and 5."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
            {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 4, "b": 5}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
        {"role": "tool", "tool_call_id": "call_2", "content": "9"},
    ]

    prompt = folder.chat_template.render(prompt_messages(messages, [ADD], folder.chat_template.knows_tools))

    assert not folder.chat_template.knows_tools
    assert '"name": "add"' in prompt.split("<|im_start|>user")[0]  # the tools, in the system prompt
    assert written_call("add", '{"a": 2, "b": 3}') in prompt and written_call("add", '{"a": 4, "b": 5}') in prompt
    assert prompt.count("<|im_start|>user") == 2 and "<tool_response>\n5\n</tool_response>\n<tool_response>\n9\n</tool_response>" in prompt


def test_a_template_that_knows_tools_gets_them_itself():
    from service.engine.chat_template import ChatTemplate

    template = ChatTemplate("{% for tool in tools %}[{{ tool.function.name }}]{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}")

    rendered = template.render(prompt_messages([{"role": "user", "content": "hi"}], [ADD], template.knows_tools), tools=[ADD.as_openai()])

    assert template.knows_tools and rendered == "[add]hi"
