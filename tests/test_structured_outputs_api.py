"""Structured outputs and tool calls through the API, with the official openai SDK and LangChain:
the default model's answers follow the schema, and tool choices return valid calls."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import httpx
import jsonschema
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from websockets.sync.client import connect

MODEL = "SmolLM2-135M-Instruct"


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    role: Literal["engineer", "teacher", "artist"]
    hobbies: list[Annotated[str, StringConstraints(max_length=20)]] = Field(max_length=3)
    address: Address


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    },
}
SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in (WEATHER, ADD)}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris right now, in celsius?"}]


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=f"{api_server.url}/v1", api_key="unused", timeout=300)


def _valid_calls(calls) -> list[tuple[str, dict]]:
    found = []
    for call in calls:
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        assert call.id.startswith("call_") and call.type == "function"
        found.append((call.function.name, arguments))
    return found


@pytest.mark.slow
def test_the_sdks_parse_returns_a_validated_object_for_twenty_sampled_answers(client):
    for seed in range(20):
        completion = client.chat.completions.parse(
            model=MODEL, messages=[{"role": "user", "content": "Invent a person."}], response_format=Person,
            temperature=1.0, seed=seed, max_tokens=200,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person), choice.message.content


def test_json_object_gives_a_json_object(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object with a person's name and age."}],
        response_format={"type": "json_object"}, temperature=0, seed=1, max_tokens=160,
    )

    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}], ids=["required", "named"])
def test_a_forced_tool_choice_returns_valid_calls_whole_and_streamed(client, tool_choice):
    arguments = dict(model=MODEL, messages=QUESTION, tools=[WEATHER, ADD], tool_choice=tool_choice, temperature=0.8, seed=5, max_tokens=120)

    whole = client.chat.completions.create(**arguments)
    streamed = {}
    finish = None
    for chunk in client.chat.completions.create(**arguments, stream=True):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                streamed[call.index] = call
            finish = choice.finish_reason or finish

    message = whole.choices[0].message
    called = _valid_calls(message.tool_calls)
    assert whole.choices[0].finish_reason == "tool_calls" and message.content is None and called
    assert finish == "tool_calls" and _valid_calls([streamed[index] for index in sorted(streamed)]) == called
    if isinstance(tool_choice, dict):
        assert {name for name, _ in called} == {"add"}


def test_auto_gives_text_or_valid_calls_and_none_leaves_the_tools_out(client):
    auto = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER, ADD], tool_choice="auto", temperature=1.0, seed=2, max_tokens=120)
    none = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER, ADD], tool_choice="none", temperature=0, seed=2, max_tokens=16)
    plain = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, seed=2, max_tokens=16)

    message = auto.choices[0].message
    assert (message.tool_calls and _valid_calls(message.tool_calls)) or "<tool_call>" not in (message.content or "")
    assert none.choices[0].message.tool_calls is None and none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools were described


def test_a_conversation_continues_after_a_tool_result(client):
    first = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required", temperature=0, seed=3, max_tokens=80)
    call = first.choices[0].message.tool_calls[0]
    history = [*QUESTION, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]

    answer = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], temperature=0, seed=3, max_tokens=40)

    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_forced_tool_call_streams_over_the_websocket(api_server):
    request = {"type": "chat.completion", "id": "tools-1", "model": MODEL, "messages": QUESTION, "tools": [WEATHER],
               "tool_choice": "required", "temperature": 0, "seed": 4, "max_tokens": 80}
    calls, done = [], None
    with connect(api_server.url.replace("http://", "ws://", 1) + "/v1/ws", open_timeout=30) as socket:
        socket.send(json.dumps(request))
        while done is None:
            message = json.loads(socket.recv(timeout=120))
            if message["type"] == "chat.completion.chunk":
                calls += message["chunk"]["choices"][0]["delta"].get("tool_calls", [])
            elif message["type"] in ("done", "error"):
                done = message

    assert done["type"] == "done" and done["finish_reasons"] == ["tool_calls"]
    assert calls and {call["function"]["name"] for call in calls} == {"get_weather"}
    for call in calls:
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["get_weather"])


def test_nulls_the_sdk_sends_are_taken(api_server):
    body = {"model": MODEL, "messages": QUESTION, "n": None, "stream": None, "logprobs": None, "max_tokens": 4, "seed": 1}

    response = httpx.post(f"{api_server.url}/v1/chat/completions", json=body, timeout=120)

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "extra, param, code",
    [
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"made_up_option": 1}, "made_up_option", None),
        ({"response_format": {"type": "bogus"}}, "response_format.type", None),
        ({"tools": "notalist"}, "tools", None),
        ({"tool_choice": "required"}, "tool_choice", None),
        ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "missing"}}}, "tool_choice", None),
        ({"guided_regex": "[a-z"}, "guided_regex", "invalid_grammar"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex", None),
    ],
    ids=["audio", "functions", "unknown", "bogus-format", "tools-not-a-list", "choice-without-tools", "unknown-tool", "broken-regex", "two-constraints"],
)
def test_what_cannot_be_honoured_is_refused_by_name(api_server, extra, param, code):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "seed": 1, **extra}

    response = httpx.post(f"{api_server.url}/v1/chat/completions", json=body, timeout=60)

    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == param, response.text
    if code is not None:
        assert error["code"] == code


@pytest.mark.slow
def test_langchain_binds_tools_and_structures_output(api_server):
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(model=MODEL, base_url=f"{api_server.url}/v1", api_key="unused", temperature=0, seed=6, max_tokens=160)

    called = model.bind_tools([WEATHER], tool_choice="required").invoke("What is the weather in Oslo?")
    person = model.with_structured_output(Person, method="json_schema").invoke("Invent a person.")

    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(called.tool_calls[0]["args"], SCHEMAS["get_weather"])
    assert isinstance(person, Person)
