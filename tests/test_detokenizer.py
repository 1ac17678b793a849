"""Detokenizer: streamed pieces of real tokenizers add up to the decoded text and never split a character."""

from __future__ import annotations

import pytest

from converter.cache import cached_conversion
from service.engine.detokenizer import Detokenizer
from service.engine.model_folder import ModelFolder
from tests.support import REPO

TEXTS = {
    "emoji": "Party 🎉 time! Family: 👨‍👩‍👧‍👦, flag 🇫🇷, wave 👋🏽, heart ❤️.",
    "rare-characters-by-bytes": "Rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀 🫠 ꙮ 🧑🏾‍🚀",
    "cjk": "日本語の文章です。中文句子，还有한국어 문장도 있어요.",
    "accented": "Crème brûlée, naïve façade, Ångström, São Paulo, Dvořák, e\u0301 combining.",
    "code": 'def main():\n    for i in range(3):\n\tif i:\n\t\tprint(f"{i}\\t!")\n    return 0\n',
    "spacing": "a  b   c    d\n\n\nnext\r\n  indented   trailing   \n",
    "leading-space": " starts with a space",
}


@pytest.fixture(scope="module", params=["SmolLM2", "Gemma3"])
def model_folder(request) -> ModelFolder:
    if request.param == "SmolLM2":
        path = request.getfixturevalue("smollm2_model_dir")
    else:
        path = cached_conversion(request.getfixturevalue("gemma3_gguf_path"), REPO / "models")
    return ModelFolder.load(path)


def stream(model_folder: ModelFolder, text: str) -> tuple[list[int], list[str]]:
    """The text's token ids and the pieces a Detokenizer streams for them, one per id."""
    ids = model_folder.tokenizer.encode(text, add_special_tokens=False).ids
    detokenizer = Detokenizer(model_folder.tokenizer)
    return ids, [detokenizer.add(token_id) for token_id in ids]


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_streamed_pieces_add_up_to_the_decoded_ids(model_folder, text):
    ids, pieces = stream(model_folder, text)

    assert "".join(pieces) == model_folder.tokenizer.decode(ids)


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_streamed_pieces_add_up_to_the_original_text(model_folder, text):
    _, pieces = stream(model_folder, text)

    assert "".join(pieces) == text


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_no_piece_holds_a_broken_character(model_folder, text):
    """A piece that split a UTF-8 sequence would carry U+FFFD or a lone surrogate."""
    _, pieces = stream(model_folder, text)

    broken = [piece for piece in pieces if "\ufffd" in piece or any("\ud800" <= character <= "\udfff" for character in piece)]

    assert broken == []
