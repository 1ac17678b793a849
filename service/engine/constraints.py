"""Output constraints: a JSON schema, any JSON object, a regular expression or a Lark grammar that
a sequence's tokens must follow, enforced while it decodes.

llguidance does the work (the Rust engine llama.cpp and vLLM also use): it builds a token mask
from the grammar and the model's vocabulary in about 60 µs per step on SmolLM2's 49,152 tokens,
dropping the GIL meanwhile, so the mask for a sequence's next token is computed on a thread while
the model runs. xgrammar needs torch for its masks (not a runtime dependency here), and
outlines-core compiles a regex index per schema up front.

A Grammar is what a request asks for; compile() checks it against the model once, before the
request is queued (a broken schema or regex is the client's error). Each sequence then gets its
own GrammarState, which holds llguidance's matcher.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import llguidance
import numpy as np

GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "lark")

# JSON as `json.dumps` writes it, one space after "," and ":" and no other whitespace: a small
# model given free whitespace at temperature 1 wandered into newlines until max_tokens ran out.
# A schema's own "x-guidance" options override this.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Masks for the next steps of all constrained sequences; llguidance drops the GIL while it works.
_MASKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-mask")


class GrammarError(ValueError):
    """A grammar that cannot constrain this model, with llguidance's explanation."""


@dataclass(frozen=True)
class Grammar:
    kind: str  # GRAMMAR_KINDS
    source: str | dict | None = None  # the schema (a dict), the pattern or the Lark text; None for json_object

    def llguidance_text(self) -> str:
        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults=_JSON_LAYOUT)
        if self.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_LAYOUT)
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        raise GrammarError(f"grammar kind {self.kind!r} is not one of {', '.join(GRAMMAR_KINDS)}")


@dataclass(frozen=True)
class CompiledGrammar:
    """A grammar checked against one model's vocabulary: what a request carries to the engine."""

    text: str
    tokenizer: llguidance.LLTokenizer
    vocab_size: int

    def start(self) -> GrammarState:
        return GrammarState(self)


def grammar_tokenizer(tokenizer_json: str, vocab_size: int, stop_token_ids: list[int]) -> llguidance.LLTokenizer:
    """llguidance's view of a model's vocabulary (about 0.2 s to build: build it once per model)."""
    return llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=stop_token_ids or None)


def compile_grammar(grammar: Grammar, tokenizer: llguidance.LLTokenizer, vocab_size: int) -> CompiledGrammar:
    """The grammar ready for the engine; raises GrammarError saying what is wrong with it."""
    try:
        text = grammar.llguidance_text()
    except (ValueError, TypeError) as error:
        raise GrammarError(f"invalid {grammar.kind.replace('_', ' ')}: {error}") from error
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, tokenizer)
    if failed:
        raise GrammarError(f"invalid {grammar.kind.replace('_', ' ')}: {' '.join(messages)}")
    return CompiledGrammar(text, tokenizer, vocab_size)


class GrammarState:
    """One sequence's place in its grammar: the tokens allowed next, and the tokens taken so far."""

    def __init__(self, grammar: CompiledGrammar) -> None:
        self._vocab_size = grammar.vocab_size
        self._matcher = llguidance.LLMatcher(grammar.tokenizer, grammar.text)
        self.finished = False  # the grammar allows nothing more: the sequence should end
        # The matcher is busy on the mask thread until this is done: touch it only after result().
        self._next: Future | None = _MASKS.submit(self._mask)

    def _mask(self) -> np.ndarray:
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little").astype(bool)
        if allowed.size < self._vocab_size:  # ids past the tokenizer's vocabulary are never allowed
            allowed = np.pad(allowed, (0, self._vocab_size - allowed.size))
        return allowed[: self._vocab_size]

    def allowed(self) -> np.ndarray:
        """Which token ids may come next, (vocab,) booleans: waits for the mask being computed."""
        mask = self._next.result()
        if self._matcher.is_error():
            raise GrammarError(f"the grammar failed: {self._matcher.get_error()}")
        if not mask.any():
            raise GrammarError("the grammar allows no token here")
        return mask

    def take(self, token_id: int) -> None:
        """Moves past a sampled token and starts computing the next mask."""
        if not self._matcher.consume_token(token_id):
            raise GrammarError(f"the grammar does not allow token {token_id}: {self._matcher.get_error()}")
        self.finished = self._matcher.is_stopped()
        self._next = None if self.finished else _MASKS.submit(self._mask)

