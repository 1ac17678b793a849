"""The generation options over HTTP on a real server: /v1/completions with echo and logprobs,
stop strings, n, logit_bias, ignore_eos, cached prefixes, and the queue's 429 and 503."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from service.engine.decode_loop import Generator, ModelShape
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from service.engine.sequence import log_softmax
from tests.support import ServiceProcess
from tests.test_api import QUESTION, SMOL, assert_error, chat, sse_payloads


def complete(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)


def greedy_answer(server, **extra) -> dict:
    return chat(server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=24, **extra).json()["choices"][0]


def test_completion_continues_a_text_prompt(api_server):
    choice = complete(api_server, seed=1, model=SMOL, prompt="The capital of France is", max_tokens=4, temperature=0).json()["choices"][0]
    assert "Paris" in choice["text"] and choice["finish_reason"] == "length"


def test_echo_with_logprobs_scores_every_prompt_token(api_server, smollm2_model_dir):
    text = "The quick brown fox jumps over the lazy dog."
    folder = ModelFolder.load(smollm2_model_dir)
    ids = folder.encode(text)
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    expected = log_softmax(Generator(session, ModelShape.from_config(folder.config), len(ids)).prompt_logits(ids))

    body = complete(api_server, seed=1, model=SMOL, prompt=text, echo=True, logprobs=2, max_tokens=0).json()
    logprobs = body["choices"][0]["logprobs"]

    wanted = [None] + [float(expected[position - 1, ids[position]]) for position in range(1, len(ids))]
    assert body["choices"][0]["text"] == text and logprobs["token_logprobs"][0] is None
    np.testing.assert_allclose(logprobs["token_logprobs"][1:], wanted[1:], atol=1e-3)
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:]) and body["usage"]["completion_tokens"] == 0


def test_completions_take_several_prompts_and_token_ids(api_server, smollm2_model_dir):
    ids = ModelFolder.load(smollm2_model_dir).encode("Hello")
    body = complete(api_server, seed=1, model=SMOL, prompt=[ids, ids], n=2, max_tokens=3, temperature=0).json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2, 3]
    assert len({choice["text"] for choice in body["choices"]}) == 1 and body["usage"]["prompt_tokens"] == 2 * len(ids)


def test_a_stop_string_ends_the_answer_and_is_never_sent(api_server):
    whole = greedy_answer(api_server)["message"]["content"]
    stop = "Paris"
    assert stop in whole

    stopped = greedy_answer(api_server, stop=[stop])
    streamed = chat(api_server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=24, stop=stop, stream=True)
    streamed_text = "".join(
        chunk["choices"][0]["delta"].get("content", "") for chunk in sse_payloads(streamed)[:-1] if chunk["choices"]
    )

    assert stopped["message"]["content"] == whole[: whole.index(stop)] == streamed_text
    assert stopped["finish_reason"] == "stop"


def test_n_choices_with_a_seed_are_reproducible(api_server):
    request = dict(model=SMOL, messages=QUESTION, temperature=1.0, seed=7, n=3, max_tokens=16)
    first = [choice["message"]["content"] for choice in chat(api_server, **request).json()["choices"]]
    second = [choice["message"]["content"] for choice in chat(api_server, **request).json()["choices"]]
    assert len(first) == 3 and first == second and len(set(first)) > 1


def test_logit_bias_bans_the_greedy_first_token(api_server, smollm2_model_dir):
    folder = ModelFolder.load(smollm2_model_dir)
    first = greedy_answer(api_server, logprobs=True)["logprobs"]["content"][0]["token"]
    banned = folder.tokenizer.token_to_id(folder.tokenizer.encode(first, add_special_tokens=False).tokens[0])

    biased = greedy_answer(api_server, logprobs=True, logit_bias={str(banned): -100})

    assert biased["logprobs"]["content"][0]["token"] != first


def test_chat_logprobs_are_log_probabilities_in_descending_alternatives(api_server):
    content = greedy_answer(api_server, logprobs=True, top_logprobs=3)["logprobs"]["content"]
    assert content and all(entry["logprob"] <= 0 for entry in content)
    assert all([top["logprob"] for top in entry["top_logprobs"]] == sorted([top["logprob"] for top in entry["top_logprobs"]], reverse=True) for entry in content)
    assert all(entry["top_logprobs"][0]["token"] == entry["token"] for entry in content)  # greedy picks the top one


def test_ignore_eos_generates_exactly_max_tokens(api_server):
    body = chat(api_server, seed=1, model=SMOL, messages=QUESTION, temperature=0, max_tokens=60, ignore_eos=True).json()
    assert body["usage"]["completion_tokens"] == 60 and body["choices"][0]["finish_reason"] == "length"


def test_a_repeated_conversation_reports_cached_prompt_tokens(api_server):
    first = chat(api_server, seed=1, model=SMOL, messages=QUESTION + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}], temperature=0, max_tokens=4)
    again = chat(api_server, seed=1, model=SMOL, messages=QUESTION + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "Why?"}], temperature=0, max_tokens=4)
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert again.json()["choices"] == first.json()["choices"]


@pytest.mark.parametrize(
    "override, param, code",
    [
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_parameter"),
        ({"max_tokens": 0}, "max_tokens", None),
        ({"prompt": ["a", 1]}, "prompt", None),
        ({"prompt": [10**9]}, "prompt", None),
        ({"prompt": []}, "prompt", None),
        ({"logprobs": 30}, "logprobs", None),
    ],
)
def test_bad_completion_requests_are_400s_naming_the_field(api_server, override, param, code):
    body = {"max_tokens": 16, "seed": 1, "model": "tiny", "prompt": "hello", **override}
    assert_error(complete(api_server, **body), 400, param=param, code=code)


@pytest.fixture(scope="module")
def one_slot_server(smollm2_model_dir, artifacts):
    """SmolLM2 with one slot, one waiting place and a 1 s queue timeout: a 300-token answer
    (several seconds on 2 cores) holds the slot long enough for the queue to fill and time out."""
    server = ServiceProcess(
        "--model", f"{SMOL}={smollm2_model_dir}", "--max-batch", "1", "--max-waiting", "1", "--queue-timeout", "1",
        log_path=artifacts / "one_slot_server.log",
    )
    yield server
    server.stop()


def _long_stream(server, started: threading.Event) -> None:
    body = {"seed": 1, "model": SMOL, "messages": QUESTION, "max_tokens": 300, "ignore_eos": True, "stream": True, "temperature": 0}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        for _ in response.iter_lines():
            started.set()


def test_a_full_queue_is_a_429_with_retry_after(one_slot_server):
    started = threading.Event()
    holder = threading.Thread(target=_long_stream, args=(one_slot_server, started))
    holder.start()
    started.wait(30)
    responses: list[httpx.Response] = []

    def ask() -> None:
        responses.append(chat(one_slot_server, seed=1, model=SMOL, messages=QUESTION, max_tokens=2))

    # The slot is busy for seconds and one request may wait: of three at once, some are refused.
    burst = [threading.Thread(target=ask) for _ in range(3)]
    for thread in burst:
        thread.start()
    for thread in burst + [holder]:
        thread.join(60)

    refused = [response for response in responses if response.status_code == 429]
    assert refused, [response.status_code for response in responses]
    assert_error(refused[0], 429, code="server_busy")
    assert refused[0].headers["retry-after"] == "1"


def test_a_request_that_cannot_get_a_slot_in_time_is_a_503(one_slot_server):
    started = threading.Event()
    holder = threading.Thread(target=_long_stream, args=(one_slot_server, started))
    holder.start()
    started.wait(30)
    waited = chat(one_slot_server, seed=1, model=SMOL, messages=QUESTION, max_tokens=2)
    holder.join(60)

    assert_error(waited, 503, code="queue_timeout")
    assert int(waited.headers["retry-after"]) > 0


def test_a_quiet_stream_gets_keep_alive_comments_and_stays_valid(smollm2_model_dir, artifacts):
    server = ServiceProcess(
        "--model", f"{SMOL}={smollm2_model_dir}", "--sse-keepalive", "0.02", log_path=artifacts / "keepalive_server.log"
    )
    try:
        long_question = [{"role": "user", "content": "Summarize: " + "The river town grew slowly. " * 120}]
        response = chat(server, seed=1, model=SMOL, messages=long_question, max_tokens=4, stream=True, temperature=0)
    finally:
        server.stop()
    blocks = [block for block in response.text.split("\n\n") if block.strip()]

    assert ": keep-alive" in blocks  # sent while the 700-token prompt was prefilling
    assert all(block == ": keep-alive" or block.startswith("data: ") for block in blocks) and blocks[-1] == "data: [DONE]"


def test_a_negative_seed_is_a_seed_like_any_other(api_server):
    request = dict(model=SMOL, messages=QUESTION, temperature=1.0, seed=-12345, max_tokens=12)
    first = chat(api_server, **request)
    second = chat(api_server, **request)
    assert first.status_code == 200 and first.json()["choices"] == second.json()["choices"]
