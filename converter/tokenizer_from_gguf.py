"""Rebuilds a Hugging Face `tokenizer.json` from the vocabulary a GGUF file carries.

The `tokenizers` library does the work; this module only translates GGUF's description
(`tokenizer.ggml.*`) into its components. Pre-tokenizer patterns follow llama.cpp's table for
`tokenizer.ggml.pre`, since that is what the file's author tested against.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from converter.errors import ConversionError

# llama.cpp token types (gguf.TokenType): 3 = control, 4 = user defined.
_CONTROL = 3
_USER_DEFINED = 4

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


def tokenizer_json_from_gguf(fields: dict) -> str:
    """`fields` maps GGUF metadata keys to their Python values."""
    model_kind = fields.get("tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise ConversionError(
            f"GGUF tokenizer model {model_kind!r} is not supported yet (supported: 'gpt2' byte-level BPE)"
        )
    pre = fields.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise ConversionError(
            f"GGUF pre-tokenizer {pre!r} is not supported (supported: {', '.join(sorted(_PRE_TOKENIZERS))})"
        )
    tokens: list[str] = list(fields["tokenizer.ggml.tokens"])
    token_types: list[int] = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    if len(token_types) != len(tokens):
        raise ConversionError(f"GGUF vocabulary has {len(tokens)} tokens but {len(token_types)} token types")
    merges = [tuple(merge.split(" ", 1)) for merge in fields.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConversionError("GGUF vocabulary has duplicate tokens; cannot build a BPE tokenizer")

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token, kind in zip(tokens, token_types, strict=True) if kind == _CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(token, normalized=False) for token, kind in zip(tokens, token_types, strict=True) if kind == _USER_DEFINED]
    )
    return tokenizer.to_str()
