"""Turns a stream of token ids into text pieces that never split a UTF-8 character.

tokenizers' DecodeStream holds back bytes until they form whole characters and keeps the
spacing of byte-level and SentencePiece vocabularies right across token boundaries.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class Detokenizer:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stream = DecodeStream(skip_special_tokens=skip_special_tokens)

    def add(self, token_id: int) -> str:
        """The text this token completes; empty while a character is still incomplete."""
        return self.stream.step(self.tokenizer, token_id) or ""
