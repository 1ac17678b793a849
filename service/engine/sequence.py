"""One generation request inside the engine: what it asked for, where it is, what it has said.

A sequence owns its sampler (penalties remember its tokens), its streaming detokenizer and its
stop-string matcher, and turns each sampled token into the events its client receives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.engine.constraints import CompiledGrammar, GrammarError
from service.engine.detokenizer import Detokenizer
from service.engine.sampler import SampledToken, Sampler, SamplingParams
from service.engine.stop_strings import StopMatcher

WAITING = "waiting"
PREFILLING = "prefilling"
DECODING = "decoding"
DONE = "done"


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep going past end-of-sequence tokens (fixed-length benchmarks)
    # Score the prompt too (`echo` with `logprobs`): how many alternatives per prompt position;
    # None leaves the prompt unscored.
    prompt_logprobs: int | None = None
    # A grammar the generated tokens must follow (service.engine.constraints); None: any tokens.
    grammar: CompiledGrammar | None = None


@dataclass(frozen=True)
class Admitted:
    """The request has a slot; `reused_tokens` of its prompt came from the prefix cache."""

    reused_tokens: int
    queue_seconds: float


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class PromptScores:
    """Log-probabilities of the prompt's tokens (the first has none), sent before any text."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class TextDelta:
    text: str  # may be empty: a character or a possible stop string is still incomplete
    token: TokenLogprob


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    time_to_first_token: float
    seconds: float
    queue_seconds: float
    text: str = ""  # held-back text released at the end (never part of a stop string)


@dataclass(frozen=True)
class Failed:
    message: str
    code: str = "server_error"  # "queue_timeout" when no slot freed up in time


Event = Admitted | PromptScores | TextDelta | Finished | Failed


def log_softmax(logits: np.ndarray) -> np.ndarray:
    scores = logits.astype(np.float64)
    peak = scores.max(axis=-1, keepdims=True)
    return scores - peak - np.log(np.exp(scores - peak).sum(axis=-1, keepdims=True))


def prompt_scores(prompt_ids: list[int], logits: np.ndarray, alternatives: int) -> PromptScores:
    """Each prompt token's log-probability given the tokens before it, from all-position logits."""
    tokens = [TokenLogprob(prompt_ids[0], None)]
    for position in range(1, len(prompt_ids)):
        row = log_softmax(logits[position - 1])
        token = prompt_ids[position]
        top = ()
        if alternatives:
            best = np.argpartition(row, -alternatives)[-alternatives:]
            best = best[np.argsort(-row[best], kind="stable")]
            top = tuple((int(index), float(row[index])) for index in best)
        tokens.append(TokenLogprob(token, float(row[token]), top))
    return PromptScores(tuple(tokens))


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    emit: Callable[[Event], None]
    detokenizer: Detokenizer
    stop_ids: frozenset[int]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)
    state: str = WAITING
    slot: int = -1
    cached: int = 0  # tokens of this sequence in its slot's cache
    reused: int = 0  # of those, taken from an earlier sequence's cache
    pending: int | None = None  # the last sampled token, not yet in the cache
    generated: int = 0
    outputs: list[int] = field(default_factory=list)  # sampled token ids, stop tokens excluded
    prompt_logits: list[np.ndarray] = field(default_factory=list)  # per prefill chunk, when scoring
    admitted_at: float = 0.0
    first_token_at: float | None = None

    def __post_init__(self) -> None:
        self.sampler = Sampler(self.request.sampling, self.request.prompt_ids)
        self.stops = StopMatcher(self.request.stop)
        self.grammar = self.request.grammar.start() if self.request.grammar is not None else None

    def cached_tokens(self) -> list[int]:
        """The token ids whose keys and values this sequence has put in its slot, in order."""
        return (self.request.prompt_ids + self.outputs)[: self.cached]

    def admit(self, slot: int, reused: int) -> None:
        self.slot, self.cached, self.reused = slot, reused, reused
        self.state = PREFILLING
        self.admitted_at = time.perf_counter()
        self.emit(Admitted(reused, self.admitted_at - self.submitted))

    def take(self, logits: np.ndarray, capacity: int) -> bool:
        """Samples the next token from `logits` and tells the client; True when finished."""
        try:
            allowed = self.grammar.allowed() if self.grammar is not None else None
            sampled: SampledToken = self.sampler(logits, allowed)
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            if sampled.token_id in self.stop_ids and not self.request.ignore_eos:
                return self.finish("stop")
            if self.grammar is not None:
                self.grammar.take(sampled.token_id)
        except GrammarError as error:  # this sequence's grammar failed; the others go on
            self.state = DONE
            self.emit(Failed(str(error), code="grammar_failed"))
            return True
        self.generated += 1
        self.outputs.append(sampled.token_id)
        text, stopped = self.stops.feed(self.detokenizer.add(sampled.token_id))
        self.emit(TextDelta(text, TokenLogprob(sampled.token_id, sampled.logprob, sampled.top_logprobs)))
        if stopped:
            return self.finish("stop", release=False)
        if self.grammar is not None and self.grammar.finished:
            return self.finish("stop")
        if self.generated >= self.request.max_new_tokens or self.cached >= capacity:
            return self.finish("length")
        self.pending = sampled.token_id
        self.state = DECODING
        return False

    def finish(self, reason: str, release: bool = True) -> bool:
        now = time.perf_counter()
        self.state = DONE
        self.pending = None
        self.emit(
            Finished(
                reason,
                len(self.request.prompt_ids),
                self.generated,
                self.reused,
                (self.first_token_at or now) - self.submitted,
                now - self.submitted,
                self.admitted_at - self.submitted if self.admitted_at else now - self.submitted,
                self.stops.flush() if release else "",
            )
        )
        return True
