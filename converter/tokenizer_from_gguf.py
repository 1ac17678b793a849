"""Rebuilds a Hugging Face `tokenizer.json` from the vocabulary a GGUF file carries.

The `tokenizers` library does the work; this module only translates GGUF's description
(`tokenizer.ggml.*`) into its components. Two vocabulary kinds are understood:

- "gpt2": byte-level BPE with explicit merges. Pre-tokenizer patterns follow llama.cpp's table for
  `tokenizer.ggml.pre`, since that is what the file's author tested against.
- "llama": a SentencePiece BPE vocabulary (Llama 2, Gemma), built the way Hugging Face's own
  tokenizer.json files for those models are: a BPE model whose merges come from the piece scores.

Neither post-processor adds BOS: the service adds it itself (generation.json says
whether), so encoding here must never add tokens the text did not contain.
"""

from __future__ import annotations

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from converter.errors import ConversionError

# llama.cpp token types (gguf.TokenType), numbered as SentencePiece numbers its piece types.
_NORMAL = 1
_UNKNOWN = 2
_CONTROL = 3
_USER_DEFINED = 4

_SENTENCEPIECE_SPACE = "\u2581"

_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(use_regex: bool) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False), _byte_level(False)]
    )


_PRE_TOKENIZERS = {
    "default": lambda: _byte_level(True),
    "gpt-2": lambda: _byte_level(True),
    "gpt2": lambda: _byte_level(True),
    "smollm": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), _byte_level(True)]
    ),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_PATTERN),
    "llama3": lambda: _split_then_bytes(_LLAMA3_PATTERN),
    "qwen2": lambda: _split_then_bytes(_QWEN2_PATTERN),
}


def _vocabulary(fields: dict) -> tuple[list[str], list[int]]:
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    token_types: list[int] = list(fields.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    if len(token_types) != len(tokens):
        raise ConversionError(f"GGUF vocabulary has {len(tokens)} tokens but {len(token_types)} token types")
    if len(set(tokens)) != len(tokens):
        raise ConversionError("GGUF vocabulary has duplicate tokens; cannot build a BPE tokenizer")
    return tokens, token_types


def _add_control_and_user_defined(
    tokenizer: Tokenizer, tokens: list[str], token_types: list[int], user_defined_normalized: bool
) -> None:
    """Control tokens written in a prompt (chat markers) must come out as their single id."""
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(token, normalized=user_defined_normalized)
            for token, kind in zip(tokens, token_types, strict=True)
            if kind == _USER_DEFINED
        ]
    )


def _byte_level_bpe(fields: dict) -> Tokenizer:
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ConversionError(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(_PRE_TOKENIZERS))})"
        )
    tokens, token_types = _vocabulary(fields)
    merges = [tuple(merge.split(" ", 1)) for merge in fields.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    _add_control_and_user_defined(tokenizer, tokens, token_types, user_defined_normalized=False)
    return tokenizer


def _merges_from_scores(tokens: list[str], scores: list[float], token_types: list[int]) -> list[tuple[str, str]]:
    """SentencePiece BPE repeatedly joins the adjacent pair whose joined piece scores highest.

    A BPE model applies merges by rank instead, so every way of cutting a normal piece into two
    normal pieces becomes a merge, ranked by the joined piece's score (highest first; ties by id,
    then by where the cut falls, so the output is deterministic). Only normal pieces take part:
    SentencePiece never forms control, byte or user-defined pieces by joining, so literal text like
    "<0x41>" must not become the byte token either. (Unused pieces, which SentencePiece may form and
    split back at the end, are left out too.)
    """
    normal = {token: index for index, (token, kind) in enumerate(zip(tokens, token_types)) if kind == _NORMAL}
    merged_ids, cuts, lefts, rights = [], [], [], []
    for token, index in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                merged_ids.append(index)
                cuts.append(cut)
                lefts.append(left)
                rights.append(right)
    merged = np.array(merged_ids, dtype=np.int64)
    order = np.lexsort((np.array(cuts, dtype=np.int64), merged, -np.asarray(scores, dtype=np.float64)[merged]))
    return [(lefts[position], rights[position]) for position in order.tolist()]


def _unknown_token(fields: dict, tokens: list[str], token_types: list[int]) -> str | None:
    unknown_id = fields.get("tokenizer.ggml.unknown_token_id")
    if unknown_id is None:
        unknown_id = next((index for index, kind in enumerate(token_types) if kind == _UNKNOWN), None)
    return None if unknown_id is None else tokens[int(unknown_id)]


def _sentencepiece_bpe(fields: dict) -> Tokenizer:
    """SentencePiece text: spaces become "▁", characters outside the vocabulary become byte pieces.

    `tokenizer.ggml.pre` is ignored, as llama.cpp ignores it for this kind. User-defined pieces:
    SentencePiece matches them in the normalized text, while llama.cpp's converter stores them with
    "▁" written as a space and matches them in the raw text. Without a space prefix we restore "▁"
    and match after normalization, as SentencePiece does (a literal "▁▁" in the text then agrees too).
    With one we match raw text, as llama.cpp does: `tokenizers` cuts normalized added tokens at the
    wrong place once Prepend has shifted the text.
    """
    tokens, token_types = _vocabulary(fields)
    scores = list(fields.get("tokenizer.ggml.scores", []))
    if len(scores) != len(tokens):
        raise ConversionError(f"GGUF vocabulary has {len(tokens)} tokens but {len(scores)} scores")
    add_space_prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    match_user_defined_normalized = not add_space_prefix
    if match_user_defined_normalized:
        tokens = [
            token.replace(" ", _SENTENCEPIECE_SPACE) if kind == _USER_DEFINED else token
            for token, kind in zip(tokens, token_types, strict=True)
        ]
        if len(set(tokens)) != len(tokens):
            raise ConversionError("GGUF vocabulary has user-defined tokens that differ only in '▁' versus space")

    tokenizer = Tokenizer(
        models.BPE(
            vocab={token: index for index, token in enumerate(tokens)},
            merges=_merges_from_scores(tokens, scores, token_types),
            unk_token=_unknown_token(fields, tokens, token_types),
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prefix = [normalizers.Prepend(_SENTENCEPIECE_SPACE)] if add_space_prefix else []
    tokenizer.normalizer = normalizers.Sequence(prefix + [normalizers.Replace(" ", _SENTENCEPIECE_SPACE)])
    strip_prefix = [decoders.Strip(content=" ", left=1, right=0)] if add_space_prefix else []
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(_SENTENCEPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()] + strip_prefix
    )
    _add_control_and_user_defined(tokenizer, tokens, token_types, match_user_defined_normalized)
    return tokenizer


_BUILDERS = {"gpt2": _byte_level_bpe, "llama": _sentencepiece_bpe}


def tokenizer_json_from_gguf(fields: dict) -> str:
    """`fields` maps GGUF metadata keys to their Python values."""
    model_kind = fields.get("tokenizer.ggml.model")
    if model_kind not in _BUILDERS:
        raise ConversionError(
            f"GGUF tokenizer model {model_kind!r} is not supported "
            "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
        )
    return _BUILDERS[model_kind](fields).to_str()
