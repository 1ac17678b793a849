"""Chooses the next token from logits: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Nucleus sampling looks at the most likely candidates first and sorts the whole
# vocabulary only when they do not reach top_p.
_NUCLEUS_CANDIDATES = 256


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None


class Sampler:
    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.random = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        params = self.params
        if params.temperature == 0 or params.top_k == 1:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / params.temperature
        candidates = np.arange(scores.size)
        if 0 < params.top_k < scores.size:
            candidates = np.argpartition(scores, -params.top_k)[-params.top_k :]
        if params.top_p < 1.0:
            candidates = self._nucleus(scores, candidates, params.top_p)
        chosen = scores[candidates]
        probabilities = np.exp(chosen - chosen.max())
        probabilities /= probabilities.sum()
        return int(candidates[self.random.choice(candidates.size, p=probabilities)])

    @staticmethod
    def _nucleus(scores: np.ndarray, candidates: np.ndarray, top_p: float) -> np.ndarray:
        """The smallest set of most likely candidates whose probability reaches top_p."""
        candidate_scores = scores[candidates]
        peak = candidate_scores.max()
        total = np.exp(candidate_scores - peak).sum()
        if candidates.size > _NUCLEUS_CANDIDATES:
            head = np.argpartition(candidate_scores, -_NUCLEUS_CANDIDATES)[-_NUCLEUS_CANDIDATES:]
            if np.exp(candidate_scores[head] - peak).sum() / total >= top_p:
                candidates, candidate_scores = candidates[head], candidate_scores[head]
        order = np.argsort(-candidate_scores, kind="stable")
        cumulative = np.cumsum(np.exp(candidate_scores[order] - peak)) / total
        keep = int(np.searchsorted(cumulative, top_p)) + 1
        return candidates[order[:keep]]
