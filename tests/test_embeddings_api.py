"""POST /v1/embeddings through the official openai client: floats and base64 agree, vectors have
the model's hidden size and unit length, an input embeds the same alone, in a list or as its
token ids, and what the service cannot honour is refused by name."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

SMOL = "SmolLM2-135M-Instruct"
TEXTS = ["The capital of France is Paris.", "Quarterly revenue rose by five percent."]


@pytest.fixture(scope="module")
def client(api_server) -> OpenAI:
    return OpenAI(base_url=f"{api_server.url}/v1", api_key="unused")


def test_floats_and_base64_give_the_same_unit_vectors(client):
    floats = client.embeddings.create(model=SMOL, input=TEXTS, encoding_format="float")
    # Without encoding_format the client asks for base64 and decodes it itself.
    decoded = client.embeddings.create(model=SMOL, input=TEXTS)

    vectors = np.array([item.embedding for item in floats.data])
    assert vectors.shape == (2, 576)  # SmolLM2's hidden size
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors.astype(np.float32), np.array([item.embedding for item in decoded.data], dtype=np.float32))
    assert [item.index for item in floats.data] == [0, 1] and floats.model == SMOL


def test_an_input_embeds_the_same_alone_in_a_list_or_as_token_ids(client, api_server):
    ids = client.post(f"{api_server.url}/tokenize", body={"model": SMOL} | {"prompt": TEXTS[1]}, cast_to=object)["tokens"]  # not a generation

    alone = client.embeddings.create(model=SMOL, input=TEXTS[1], encoding_format="float")
    listed = client.embeddings.create(model=SMOL, input=TEXTS, encoding_format="float")
    from_ids = client.embeddings.create(model=SMOL, input=[ids], encoding_format="float")

    assert alone.data[0].embedding == listed.data[1].embedding == from_ids.data[0].embedding
    assert alone.usage.prompt_tokens == alone.usage.total_tokens == len(ids)


def test_other_dimensions_are_refused_rather_than_ignored(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=SMOL, input="hi", dimensions=64)

    assert refused.value.body["code"] == "unsupported_parameter" and refused.value.body["param"] == "dimensions"


@pytest.mark.parametrize(
    ("body", "param"),
    [({"model": SMOL, "input": ""}, "input"), ({"model": SMOL, "input": [1, "a"]}, "input"), ({"model": SMOL, "input": "x", "encoding_format": "hex"}, "encoding_format")],
)
def test_a_bad_input_is_a_400_naming_the_field(api_server, body, param):
    response = httpx.post(f"{api_server.url}/v1/embeddings", json=body)

    assert response.status_code == 400 and response.json()["error"]["param"] == param
