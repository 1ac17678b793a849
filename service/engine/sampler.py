"""Chooses the next token from logits with the OpenAI sampling surface.

Order: logit_bias -> repetition_penalty -> presence/frequency -> (greedy if temperature == 0)
-> temperature -> top_k -> top_p -> min_p -> draw. It runs once per generated token per
stream over vocabularies of up to 262144, so every step is a linear pass at most: the caller's
logits are copied only when a bias or penalty changes them, penalties touch only the tokens
seen so far, and no step sorts the whole vocabulary (unless all of it ties).

A graph built with sampling candidates (the CUDA target) hands over a CandidateRow instead of
logits: the sampler then draws from the candidates whenever they decide the draw exactly, and
downloads the row's logits only when they do not, or when the request needs every logit
(logprobs, bias, penalties).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from service.engine.candidates import CandidateRow

MAX_TOP_LOGPROBS = 20

# Nucleus sampling sorts only the tokens that can be in the nucleus; when those are more than
# this (a flat distribution), it buckets them by weight and sorts only the bucket at its edge.
_NUCLEUS_SORT_LIMIT = 1024
_NUCLEUS_BUCKETS = 1024

# top_k and top_logprobs look for a floor among every this-many logits before partitioning.
_SAMPLE_STRIDE = 32

# Drawing from the whole vocabulary sums blocks of it first, so the running sum is over blocks
# and one block rather than over every token.
_DRAW_BLOCK = 1024


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0  # keeps tokens with p >= min_p * p_max, as vLLM and llama.cpp do
    seed: int | None = None  # the same seed and the same logits give the same tokens
    presence_penalty: float = 0.0  # OpenAI: minus this once for each token generated so far
    frequency_penalty: float = 0.0  # OpenAI: minus this times how often a token was generated so far
    repetition_penalty: float = 1.0  # HF/vLLM/llama.cpp: divides positive, multiplies negative logits of prompt and generated tokens
    logit_bias: Mapping[int, float] = field(default_factory=dict)  # added to the raw logits first (OpenAI: -100..100)
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20, needs logprobs

    def __post_init__(self) -> None:
        problems = []
        if not self.temperature >= 0:
            problems.append(f"temperature must be 0 or more, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            problems.append(f"top_p must be between 0 and 1, got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be between 0 and 1, got {self.min_p}")
        if not self.repetition_penalty > 0:
            problems.append(f"repetition_penalty must be more than 0, got {self.repetition_penalty}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            problems.append(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            problems.append("top_logprobs needs logprobs to be true")
        if any(int(token_id) < 0 for token_id in self.logit_bias):
            problems.append("logit_bias token ids must be 0 or more")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class SampledToken:
    token_id: int
    logprob: float | None  # log-softmax of the raw logits (before bias, penalties, temperature); None unless asked
    top_logprobs: tuple[tuple[int, float], ...]  # the most likely tokens of the raw distribution, most likely first


class _TokenCounts:
    """Distinct token ids and how often each occurred, grown one token at a time."""

    def __init__(self, token_ids: Sequence[int] = ()) -> None:
        ids, counts = np.unique(np.asarray(token_ids, dtype=np.int64), return_counts=True)
        capacity = max(64, 2 * ids.size)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._counts = np.zeros(capacity, dtype=np.float32)
        self._ids[: ids.size] = ids
        self._counts[: ids.size] = counts
        self._slots = {token_id: slot for slot, token_id in enumerate(ids.tolist())}
        self.size = ids.size

    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self.size]

    @property
    def counts(self) -> np.ndarray:
        return self._counts[: self.size]

    def add(self, token_id: int) -> None:
        slot = self._slots.get(token_id)
        if slot is None:
            if self.size == self._ids.size:
                self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
            slot = self._slots[token_id] = self.size
            self._ids[slot] = token_id
            self.size += 1
        self._counts[slot] += 1


class Sampler:
    """One stream's sampler: its random generator and the tokens the penalties look at."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int] = ()) -> None:
        self.params = params
        # Any integer a client sends is a valid seed (numpy wants a non-negative one).
        self.random = np.random.default_rng(None if params.seed is None else params.seed % 2**64)
        self._bias_ids = np.array([int(token_id) for token_id in params.logit_bias], dtype=np.int64)
        self._bias_values = np.array(list(params.logit_bias.values()), dtype=np.float32)
        self._seen = _TokenCounts(prompt_ids) if params.repetition_penalty != 1.0 else None
        self._generated = _TokenCounts() if params.presence_penalty or params.frequency_penalty else None
        # Reused across calls: fresh vocabulary-sized arrays each token cost page faults.
        self._scores: np.ndarray | None = None
        self._weights: np.ndarray | None = None
        self._masked: np.ndarray | None = None
        # A plain draw that fell beyond the candidates: (candidate ids, the draw's target in
        # probability) for _draw_beyond_candidates, which walks on through the other tokens.
        self._tail_target: tuple[np.ndarray, float] | None = None

    @property
    def needs_every_logit(self) -> bool:
        """Whether choosing a token reads the whole row: log-probabilities, bias and penalties do."""
        return self.params.logprobs or bool(self._bias_ids.size) or self._seen is not None or self._generated is not None

    def __call__(self, logits: np.ndarray | CandidateRow, allowed: np.ndarray | None = None) -> SampledToken:
        """Chooses the next token from one row of float32 logits (vocab,) or its candidates, and
        remembers it for the penalties. `allowed` (vocab,) booleans, from a grammar, keeps the
        choice among those tokens (after bias and penalties, before temperature)."""
        if isinstance(logits, CandidateRow):
            token_id = None if self.needs_every_logit or allowed is not None else self._from_candidates(logits)
            if token_id is None:
                logits = logits.full_logits()
                token_id = self._draw_beyond_candidates(logits) if self._tail_target else self._choose(logits, allowed)
        else:
            token_id = self._choose(logits, allowed)
        if self._seen is not None:
            self._seen.add(token_id)
        if self._generated is not None:
            self._generated.add(token_id)
        return self._sampled(logits, token_id)

    def _choose(self, logits: np.ndarray, allowed: np.ndarray | None = None) -> int:
        scores = self._adjusted(logits)
        if allowed is not None:
            self._masked = _scratch(self._masked, scores)
            self._masked.fill(-np.inf)
            np.copyto(self._masked, scores, where=allowed)
            scores = self._masked
        if self.params.temperature == 0 or self.params.top_k == 1:
            return int(np.argmax(scores))
        return self._draw(scores)

    def _from_candidates(self, row: CandidateRow) -> int | None:
        """The token drawn from the candidates, or None when they cannot decide it exactly (the
        caller then reads the whole row). Same filters as _draw: top_k, then top_p, then min_p."""
        params = self.params
        if params.temperature == 0 or params.top_k == 1:
            return int(row.ids[0])
        count = row.ids.size
        if params.top_k > count or row.temperature != params.temperature:
            return None
        if params.top_k:  # the kept tokens are all candidates: renormalize among them
            weights = np.exp((row.logits[: params.top_k] - row.logits[0]) / params.temperature, dtype=np.float64)
            probabilities = weights / weights.sum()
        else:
            probabilities = np.exp(row.logits.astype(np.float64) / params.temperature - row.log_normalizer)
        kept = probabilities.size
        if params.top_p < 1.0:
            cumulative = np.cumsum(probabilities)
            if cumulative[-1] < params.top_p and not params.top_k:
                return None  # the nucleus reaches beyond the candidates
            kept = min(int(np.searchsorted(cumulative, params.top_p, side="left")) + 1, kept)
        if params.min_p > 0.0:
            floor = params.min_p * probabilities[0]
            if not params.top_k and kept == count and probabilities[-1] >= floor:
                return None  # tokens beyond the candidates may reach the floor
            kept = min(kept, int(np.count_nonzero(probabilities >= floor)))
        if params.top_k or kept < count or params.top_p < 1.0 or params.min_p > 0.0:
            return int(row.ids[self._draw_index(probabilities[:kept])])
        # A plain draw over the whole vocabulary: the candidates cover the first part of it.
        target = self.random.random()
        cumulative = np.cumsum(probabilities)
        if target < cumulative[-1]:
            return int(row.ids[_index_at(cumulative, target)])
        self._tail_target = (row.ids, target - float(cumulative[-1]))
        return None

    def _draw_beyond_candidates(self, logits: np.ndarray) -> int:
        """Finishes a plain draw whose target passed the candidates' mass: the same target walks
        on through the other tokens in id order, so the draw stays exact."""
        candidate_ids, remaining = self._tail_target
        self._tail_target = None
        scaled = logits.astype(np.float64) / self.params.temperature
        peak = scaled.max()
        weights = np.exp(scaled - peak)
        weights /= weights.sum()
        weights[candidate_ids] = 0.0
        cumulative = np.cumsum(weights)
        if remaining >= cumulative[-1]:  # rounding at the very end of the distribution
            return int(np.flatnonzero(weights)[-1]) if cumulative[-1] > 0 else int(candidate_ids[-1])
        return _index_at(cumulative, remaining)

    def _adjusted(self, logits: np.ndarray) -> np.ndarray:
        """The logits after bias and penalties; the caller's own array when nothing changes them."""
        params = self.params
        repeated = self._seen is not None and self._seen.size > 0
        generated = self._generated is not None and self._generated.size > 0
        if not (self._bias_ids.size or repeated or generated):
            return logits
        if self._bias_ids.size and self._bias_ids.max() >= logits.size:
            raise ValueError(f"logit_bias names token {int(self._bias_ids.max())}, outside the vocabulary of {logits.size}")
        self._scores = _scratch(self._scores, logits)
        scores = self._scores
        np.copyto(scores, logits)
        if self._bias_ids.size:
            scores[self._bias_ids] += self._bias_values
        if repeated:
            ids = self._seen.ids
            values = scores[ids]
            penalty = params.repetition_penalty
            scores[ids] = np.where(values > 0, values / penalty, values * penalty)
        if generated:
            ids, counts = self._generated.ids, self._generated.counts
            scores[ids] -= counts * params.frequency_penalty + params.presence_penalty
        return scores

    def _draw(self, scores: np.ndarray) -> int:
        params = self.params
        if 0 < params.top_k < scores.size:
            candidates = _largest(scores, params.top_k)
            chosen = weights = scores[candidates]
        else:
            candidates, chosen = None, scores
            weights = self._weights = _scratch(self._weights, scores)
        # Weights relative to the most likely candidate, p / p_max, which is also what min_p compares.
        np.subtract(chosen, chosen.max(), out=weights)
        weights *= 1.0 / params.temperature
        np.exp(weights, out=weights)
        kept = None
        if params.top_p < 1.0:
            kept = _nucleus(weights, params.top_p)
        if params.min_p > 0.0:
            kept = np.flatnonzero(weights >= params.min_p) if kept is None else kept[weights[kept] >= params.min_p]
        index = self._draw_index(weights) if kept is None else int(kept[self._draw_index(weights[kept])])
        return index if candidates is None else int(candidates[index])

    def _draw_index(self, weights: np.ndarray) -> int:
        """An index drawn with probability proportional to its weight."""
        if weights.size <= _DRAW_BLOCK:
            cumulative = np.cumsum(weights, dtype=np.float64)
            return _index_at(cumulative, self.random.random() * cumulative[-1])
        block_starts = np.arange(0, weights.size, _DRAW_BLOCK)
        block_cumulative = np.cumsum(np.add.reduceat(weights, block_starts), dtype=np.float64)
        target = self.random.random() * block_cumulative[-1]
        block = _index_at(block_cumulative, target)
        start = block * _DRAW_BLOCK
        within = np.cumsum(weights[start : start + _DRAW_BLOCK], dtype=np.float64)
        before = block_cumulative[block - 1] if block else 0.0
        return start + _index_at(within, target - before)

    def _sampled(self, logits: np.ndarray, token_id: int) -> SampledToken:
        params = self.params
        if not params.logprobs:
            return SampledToken(token_id, None, ())
        peak = float(logits.max())
        self._weights = _scratch(self._weights, logits)
        shifted = self._weights
        np.subtract(logits, peak, out=shifted)
        np.exp(shifted, out=shifted)
        log_total = peak + math.log(float(shifted.sum()))
        top: tuple[tuple[int, float], ...] = ()
        if params.top_logprobs:
            count = min(params.top_logprobs, logits.size)
            best = _largest(logits, count)
            best = best[np.lexsort((best, -logits[best]))]
            top = tuple((int(token), float(logits[token]) - log_total) for token in best)
        return SampledToken(token_id, float(logits[token_id]) - log_total, top)


def _scratch(buffer: np.ndarray | None, like: np.ndarray) -> np.ndarray:
    """A buffer shaped like `like`, reused when it already fits."""
    if buffer is None or buffer.shape != like.shape or buffer.dtype != like.dtype:
        return np.empty_like(like)
    return buffer


def _largest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest values, in no particular order.

    The count-th largest of every few values is a floor that at least `count` values reach, so
    only the few values above it are partitioned rather than the whole vocabulary.
    """
    if values.size < 2 * _SAMPLE_STRIDE * count:
        return np.argpartition(values, -count)[-count:]
    floor = np.partition(values[::_SAMPLE_STRIDE], -count)[-count]
    above = np.flatnonzero(values >= floor)
    return above[np.argpartition(values[above], -count)[-count:]]


def _index_at(cumulative: np.ndarray, target: float) -> int:
    """Where `target` falls in a running sum; rounding past the end lands on the last weighted index."""
    index = int(np.searchsorted(cumulative, target, side="right"))
    return min(index, int(np.searchsorted(cumulative, cumulative[-1], side="left")))


def _nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest set of most likely weights whose share of the total reaches top_p.

    Tokens each below (1 - top_p) * total / n together hold less than 1 - top_p, so the nucleus
    lies among the rest: usually a handful of tokens found in one pass, sorted directly.
    """
    total = float(weights.sum())
    needed = top_p * total
    floor = max((1.0 - top_p) * total / weights.size, float(np.finfo(weights.dtype).tiny))
    candidates = np.flatnonzero(weights >= floor)
    certain = candidates[:0]
    if candidates.size > _NUCLEUS_SORT_LIMIT:
        certain, candidates, needed = _split_at_nucleus_edge(weights, candidates, needed)
    order = candidates[np.argsort(-weights[candidates], kind="stable")]
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    keep = int(np.searchsorted(cumulative, needed, side="left")) + 1
    return np.concatenate([certain, order[:keep]])


def _split_at_nucleus_edge(weights: np.ndarray, candidates: np.ndarray, needed: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The candidates surely in the nucleus, those in the bucket where it ends, and the mass still needed from them.

    Buckets of log-weight keep the order of the weights, so of a flat distribution's many
    candidates only the one bucket where the running mass crosses `needed` has to be sorted.
    """
    candidate_weights = weights[candidates]
    log_weights = np.log(candidate_weights)
    span = -float(log_weights.min()) or 1.0
    buckets = ((log_weights + span) * (_NUCLEUS_BUCKETS / span)).astype(np.intp)
    np.minimum(buckets, _NUCLEUS_BUCKETS - 1, out=buckets)
    mass_from_top = np.cumsum(np.bincount(buckets, weights=candidate_weights, minlength=_NUCLEUS_BUCKETS)[::-1])
    crossed = min(int(np.searchsorted(mass_from_top, needed, side="left")), _NUCLEUS_BUCKETS - 1)
    edge = _NUCLEUS_BUCKETS - 1 - crossed
    above = float(mass_from_top[crossed - 1]) if crossed else 0.0
    return candidates[buckets > edge], candidates[buckets == edge], needed - above
