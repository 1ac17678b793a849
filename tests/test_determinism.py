"""Same seed, same answer: a seeded request's tokens and log-probabilities do not depend on
whether its prompt's prefix came from the prefix cache, nor on what else shares the batch. Checked
on the engine with int8 activations (whose decode rows batch) and float activations (whose rows the
engine runs one at a time), then over SSE and the WebSocket on a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.engine import Admitted, Engine, EngineLimits, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement
from service.engine.sampler import SamplingParams
from tests.support import REPO
from tests.test_websocket import ENDINGS, LONG, open_socket, receive, send, wait_until_streaming

SEEDED = SamplingParams(temperature=1.0, seed=1234, logprobs=True)
STORY = "Tell me a story about a dragon named Elena."
SMOL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module", params=["int8", "fp32"], ids=lambda activations: f"{activations} activations")
def folder(request, smollm2_gguf) -> ModelFolder:
    return ModelFolder.load(cached_conversion(smollm2_gguf, REPO / "models", ConversionOptions(activations=request.param)))


def chat_prompt(folder: ModelFolder, *turns: str) -> list[int]:
    roles = ["user", "assistant"]
    return folder.encode(folder.chat_template.render([{"role": roles[index % 2], "content": text} for index, text in enumerate(turns)]))


def make_engine(folder: ModelFolder) -> Engine:
    return Engine(folder, choose_placement("cpu"), capacity=512, threads=2, limits=EngineLimits(slots=4))


async def answer(engine: Engine, request: GenerationRequest) -> tuple[int, list[tuple[int, float]]]:
    """(prompt tokens reused from the cache, each generated token with its log-probability)."""
    reused, tokens = -1, []
    async for event in engine.submit(request).events():
        if isinstance(event, Admitted):
            reused = event.reused_tokens
        elif isinstance(event, TextDelta):
            tokens.append((event.token.token_id, event.token.logprob))
    return reused, tokens


async def answer_beside(engine: Engine, request: GenerationRequest, others: list[GenerationRequest]) -> list[tuple[int, float]]:
    """The request's tokens once every one of `others` has a slot and is decoding."""
    tickets = [engine.submit(other) for other in others]
    for ticket in tickets:
        while not isinstance(await ticket.next_event(), TextDelta):
            pass
    return (await answer(engine, request))[1]


def fresh_answer(folder: ModelFolder, request: GenerationRequest) -> list[tuple[int, float]]:
    engine = make_engine(folder)
    try:
        reused, tokens = asyncio.run(answer(engine, request))
    finally:
        engine.close()
    assert reused == 0
    return tokens


def same_prompt(folder, first_tokens):
    return chat_prompt(folder, STORY)


def one_token_more(folder, first_tokens):
    # Its prompt but the last token is the cached prompt whole: one token is left to prefill.
    return chat_prompt(folder, STORY) + folder.tokenizer.encode("Once", add_special_tokens=False).ids[:1]


def follow_up_turn(folder, first_tokens):
    return chat_prompt(folder, STORY, folder.tokenizer.decode([token for token, _ in first_tokens]), "Make it shorter.")


@pytest.mark.parametrize("second_prompt", [same_prompt, one_token_more, follow_up_turn])
def test_a_seeded_request_gives_the_same_tokens_whether_its_prefix_was_cached_or_not(folder, second_prompt):
    engine = make_engine(folder)
    try:
        _, first_tokens = asyncio.run(answer(engine, GenerationRequest(chat_prompt(folder, STORY), 24, SEEDED)))
        request = GenerationRequest(second_prompt(folder, first_tokens), 24, SEEDED)
        reused, tokens = asyncio.run(answer(engine, request))
    finally:
        engine.close()

    assert reused > 0
    assert tokens == fresh_answer(folder, request)


def test_a_seeded_request_gives_the_same_tokens_alone_and_beside_other_sequences(folder):
    # 129 tokens: one more than a prompt chunk takes while other sequences decode.
    prompt = folder.encode("The history of the city goes back many centuries, and its streets remember every one of them. " * 8)[:129]
    request = GenerationRequest(prompt, 24, SEEDED)
    others = [GenerationRequest(chat_prompt(folder, question), 64, SEEDED, ignore_eos=True) for question in ("Name three colours.", "What is 12 times 12?", "Write a haiku.")]
    engine = make_engine(folder)
    try:
        beside = asyncio.run(answer_beside(engine, request, others))
    finally:
        engine.close()

    assert max(engine.batch_sizes) == 4  # ours decoded in a batch of four
    assert beside == fresh_answer(folder, request)


# Over the API: the server's model, with a seed, log-probabilities and a prompt no other test sends.


def uncached_tokens(usage: dict) -> int:
    """Prompt tokens computed for the request rather than taken from the prefix cache."""
    return usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]


def sse_answer(server, messages: list[dict]) -> tuple[int, list[tuple[str, float]]]:
    """(uncached prompt tokens, each streamed token with its log-probability) of one SSE stream."""
    body = dict(model=SMOL, messages=messages, temperature=1.0, seed=1234, max_tokens=16, logprobs=True, stream=True,
                stream_options={"include_usage": True})
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        payloads = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    tokens = [(entry["token"], entry["logprob"]) for payload in payloads for choice in payload["choices"]
              for entry in (choice.get("logprobs") or {}).get("content") or []]
    return uncached_tokens(payloads[-1]["usage"]), tokens


def socket_answer(socket, request_id: str, messages: list[dict]) -> tuple[int, list[tuple[str, float]]]:
    """(uncached prompt tokens, each token with its log-probability) of one request on a socket."""
    send(socket, type="chat.completion", id=request_id, model=SMOL, messages=messages, temperature=1.0, seed=1234,
         max_tokens=16, logprobs=True)
    events = []
    while not events or events[-1]["type"] not in ENDINGS:  # other streams' events are skipped
        event = receive(socket)
        if event.get("id") == request_id:
            events.append(event)
    tokens = [(entry["token"], entry["logprob"]) for event in events if event["type"] == "chat.completion.chunk"
              for choice in event["chunk"]["choices"] for entry in (choice.get("logprobs") or {}).get("content") or []]
    return uncached_tokens(events[-1]["usage"]), tokens


def start_other_streams(socket, count: int = 3) -> list[str]:
    """Long streams on the same model, generating until cancelled."""
    ids = [f"other-{index}" for index in range(count)]
    for request_id in ids:
        send(socket, type="chat.completion", id=request_id, **LONG)
    wait_until_streaming(socket, ids)
    return ids


def stop_streams(socket, ids: list[str]) -> None:
    for request_id in ids:
        send(socket, type="cancel", id=request_id)
    while ids:
        event = receive(socket)
        if event.get("id") in ids and event["type"] in ENDINGS:
            ids.remove(event["id"])


def test_a_seeded_sse_stream_gives_the_same_tokens_with_and_without_the_cached_prefix(api_server):
    messages = [{"role": "user", "content": "Tell me a story about a dragon named Elena (SSE)."}]

    answers = [sse_answer(api_server, messages) for _ in range(3)]

    # The first computes the part of its prompt no other test sent; the others only its last token.
    assert answers[0][0] > 1 and [answers[1][0], answers[2][0]] == [1, 1]
    assert answers[1][1] == answers[0][1] and answers[2][1] == answers[0][1]


def test_a_seeded_sse_stream_gives_the_same_tokens_alone_and_beside_other_streams(api_server):
    messages = [{"role": "user", "content": "Tell me a story about a wizard named Ada (SSE)."}]
    alone = sse_answer(api_server, messages)[1]

    with open_socket(api_server, max_queue=None) as socket:  # the others' chunks wait unread meanwhile
        others = start_other_streams(socket)
        beside = sse_answer(api_server, messages)[1]
        stop_streams(socket, others)

    assert beside == alone


def test_a_seeded_socket_request_gives_the_same_tokens_with_and_without_the_cached_prefix(api_server):
    messages = [{"role": "user", "content": "Tell me a story about a dragon named Elena (socket)."}]

    with open_socket(api_server) as socket:
        answers = [socket_answer(socket, f"again-{index}", messages) for index in range(3)]

    # The first computes the part of its prompt no other test sent; the others only its last token.
    assert answers[0][0] > 1 and [answers[1][0], answers[2][0]] == [1, 1]
    assert answers[1][1] == answers[0][1] and answers[2][1] == answers[0][1]


def test_a_seeded_socket_request_gives_the_same_tokens_alone_and_beside_other_streams(api_server):
    messages = [{"role": "user", "content": "Tell me a story about a wizard named Ada (socket)."}]

    with open_socket(api_server) as socket:
        alone = socket_answer(socket, "alone", messages)[1]
        others = start_other_streams(socket)
        beside = socket_answer(socket, "beside", messages)[1]
        stop_streams(socket, others)

    assert beside == alone


def test_requests_without_a_seed_still_share_decode_steps(folder):
    prompt = folder.encode("The history of the city goes back many centuries, and its streets remember every one of them. " * 8)[:129]
    request = GenerationRequest(prompt, 24, SEEDED)
    greedy = SamplingParams(temperature=0)  # no seed: reproducibility across batches is not asked for
    others = [GenerationRequest(chat_prompt(folder, question), 64, greedy, ignore_eos=True) for question in ("Name three colours.", "What is 12 times 12?", "Write a haiku.")]
    engine = make_engine(folder)
    try:
        beside = asyncio.run(answer_beside(engine, request, others))
    finally:
        engine.close()

    assert beside == fresh_answer(folder, request)
    # Only the seeded request's rows ran alone, and only where rows depend on each other.
    assert engine.rows_decoded_alone == (0 if engine._fewest_rows else len(beside))
