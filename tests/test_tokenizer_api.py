"""POST /tokenize and /detokenize through the official openai client: the ids a chat prompt
really takes (usage agrees), a text back from its ids, and clear 400s."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

SMOL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=f"{api_server.url}/v1", api_key="unused")


def test_a_conversation_counts_what_chat_usage_counts(client, api_server):
    tokenized = client.post(f"{api_server.url}/tokenize", body={"model": SMOL, "messages": MESSAGES}, cast_to=object)
    answer = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=1, seed=0, temperature=0)

    assert tokenized["count"] == len(tokenized["tokens"]) == answer.usage.prompt_tokens
    assert tokenized["max_model_len"] == 1024  # the server's --max-context


def test_a_text_comes_back_from_its_ids(client, api_server):
    text = "Hello, wörld! 你好 🙂 <|im_end|>"
    tokenized = client.post(f"{api_server.url}/tokenize", body={"model": SMOL, "prompt": text, "add_special_tokens": False}, cast_to=object)
    detokenized = client.post(f"{api_server.url}/detokenize", body={"model": SMOL, "tokens": tokenized["tokens"]}, cast_to=object)

    assert detokenized == {"prompt": text}


def test_the_generation_prompt_is_left_out_on_request(client, api_server):
    def count(add_generation_prompt: bool) -> int:
        body = {"model": SMOL, "messages": MESSAGES, "add_generation_prompt": add_generation_prompt}
        return client.post(f"{api_server.url}/tokenize", body=body, cast_to=object)["count"]

    assert count(False) < count(True)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"model": SMOL, "prompt": "x", "messages": MESSAGES}, "prompt"),
        ("/tokenize", {"model": SMOL}, "prompt"),
        ("/tokenize", {"model": SMOL, "prompt": "x", "add_bos": True}, "add_bos"),
        ("/detokenize", {"model": SMOL, "tokens": [1, 49152]}, "tokens"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(api_server, path, body, param):
    response = httpx.post(f"{api_server.url}{path}", json=body)

    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_an_unknown_model_is_a_404(client, api_server):
    with pytest.raises(openai.NotFoundError):
        client.post(f"{api_server.url}/tokenize", body={"model": "nope", "prompt": "x"}, cast_to=object)
