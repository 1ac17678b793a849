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


def tokenizer_call(client: OpenAI, api_server, path: str, **fields) -> dict:
    """POST /tokenize or /detokenize for SmolLM2 through the client (nothing is generated)."""
    return client.post(f"{api_server.url}{path}", body={"model": SMOL} | fields, cast_to=object)


def test_a_conversation_counts_what_chat_usage_counts(client, api_server):
    tokenized = tokenizer_call(client, api_server, "/tokenize", messages=MESSAGES)
    answer = client.chat.completions.create(model=SMOL, messages=MESSAGES, max_tokens=1, seed=0, temperature=0)

    assert tokenized["count"] == len(tokenized["tokens"]) == answer.usage.prompt_tokens
    assert tokenized["max_model_len"] == 1024  # the server's --max-context


def test_a_text_comes_back_from_its_ids(client, api_server):
    text = "Hello, wörld! 你好 🙂 <|im_end|>"
    tokenized = tokenizer_call(client, api_server, "/tokenize", prompt=text, add_special_tokens=False)
    detokenized = tokenizer_call(client, api_server, "/detokenize", tokens=tokenized["tokens"])

    assert detokenized == {"prompt": text}


def test_the_generation_prompt_is_left_out_on_request(client, api_server):
    def count(add_generation_prompt: bool) -> int:
        return tokenizer_call(client, api_server, "/tokenize", messages=MESSAGES, add_generation_prompt=add_generation_prompt)["count"]

    assert count(False) < count(True)


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        ("/tokenize", {"prompt": "x", "messages": MESSAGES}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "add_bos": True}, "add_bos"),
        ("/detokenize", {"tokens": [1, 49152]}, "tokens"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(api_server, path, fields, param):
    response = httpx.post(f"{api_server.url}{path}", json={"model": SMOL} | fields)

    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_an_unknown_model_is_a_404(client, api_server):
    with pytest.raises(openai.NotFoundError):
        client.post(f"{api_server.url}/tokenize", body={"model": "nope"} | {"prompt": "x"}, cast_to=object)
