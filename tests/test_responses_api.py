"""POST /v1/responses through the official openai client's `client.responses`: instructions and
input, the stream of typed events, and previous_response_id continuing the stored conversation
(prompted with exactly that history, also when an older response is continued)."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

SMOL = "SmolLM2-135M-Instruct"
BOUNDED = {"max_output_tokens": 16, "temperature": 0, "extra_body": {"seed": 0}}


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=f"{api_server.url}/v1", api_key="unused")


def prompt_tokens(client, api_server, messages: list[dict]) -> int:
    return client.post(f"{api_server.url}/tokenize", body={"model": SMOL} | {"messages": messages}, cast_to=object)["count"]  # not a generation


def test_instructions_and_input_answer_as_a_chat_completion_does(client):
    response = client.responses.create(model=SMOL, instructions="Be brief.", input="What is the capital of France?", **BOUNDED)
    chat = client.chat.completions.create(
        model=SMOL, max_tokens=16, temperature=0, seed=0,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
    )

    assert response.output_text == chat.choices[0].message.content and "Paris" in response.output_text
    assert response.usage.input_tokens == chat.usage.prompt_tokens and response.status in ("completed", "incomplete")


def test_the_stream_is_the_whole_response_in_typed_events(client):
    whole = client.responses.create(model=SMOL, input="Name three colours.", **BOUNDED)
    events = list(client.responses.create(model=SMOL, input="Name three colours.", stream=True, **BOUNDED))

    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == whole.output_text
    assert [event.sequence_number for event in events] == list(range(len(events)))


def test_previous_response_id_continues_the_stored_conversation(client, api_server):
    first = client.responses.create(model=SMOL, input="My name is Ada.", **BOUNDED)
    second = client.responses.create(model=SMOL, input="What is my name?", previous_response_id=first.id, **BOUNDED)
    third = client.responses.create(model=SMOL, input="Say it again.", previous_response_id=second.id, **BOUNDED)

    history = [
        {"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert second.usage.input_tokens == prompt_tokens(client, api_server, history)
    history += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "Say it again."}]
    assert third.usage.input_tokens == prompt_tokens(client, api_server, history)


def test_continuing_an_older_response_branches_without_changing_history(client, api_server):
    first = client.responses.create(model=SMOL, input="Pick a number.", **BOUNDED)
    client.responses.create(model=SMOL, input="Double it.", previous_response_id=first.id, **BOUNDED)
    branch = client.responses.create(model=SMOL, input="Halve it.", previous_response_id=first.id, **BOUNDED)
    after_branch = client.responses.create(model=SMOL, input="And again.", previous_response_id=branch.id, **BOUNDED)

    history = [
        {"role": "user", "content": "Pick a number."}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Halve it."}, {"role": "assistant", "content": branch.output_text},
        {"role": "user", "content": "And again."},
    ]
    assert after_branch.usage.input_tokens == prompt_tokens(client, api_server, history)


def test_an_unstored_response_cannot_be_continued(client):
    unstored = client.responses.create(model=SMOL, input="Hi.", store=False, **BOUNDED)

    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=SMOL, input="Again.", previous_response_id=unstored.id, **BOUNDED)
    assert unstored.store is False and missing.value.body["code"] == "previous_response_not_found"


def test_a_parameter_the_service_does_not_implement_is_refused_by_name(api_server):
    body = {"model": SMOL, "input": "Hi.", "max_output_tokens": 4, "tools": [{"type": "web_search"}]}
    response = httpx.post(f"{api_server.url}/v1/responses", json=body)

    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
