"""How tests score a model on a text: a fixed text of about 250 tokens, log-likelihoods, perplexity."""

from __future__ import annotations

import numpy as np


PARITY_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Before his "
    "invention, books were copied by hand, a slow and costly process that kept written knowledge in the hands "
    "of a few monasteries, universities and wealthy patrons. Within fifty years of the first printed Bible, "
    "presses were running in more than two hundred cities across Europe, and millions of volumes had been "
    "produced. Printing lowered the price of books, standardized spelling and grammar, and allowed scientists "
    "to share exact copies of their tables and diagrams. Historians often argue that the Reformation, the "
    "Scientific Revolution and the rise of newspapers would have been impossible without it. Today, the same "
    "idea of reproducing text cheaply and accurately lives on in digital publishing, where a single file can "
    "be copied to millions of readers in seconds.\n\n"
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
)


def log_likelihoods(logits: np.ndarray, ids: list[int]) -> np.ndarray:
    """log p(ids[i + 1] | ids[: i + 1]) for every position but the last."""
    scores = logits[:-1].astype(np.float64)
    peak = scores.max(-1, keepdims=True)
    log_normalizer = np.log(np.exp(scores - peak).sum(-1)) + peak[:, 0]
    return scores[np.arange(len(scores)), ids[1:]] - log_normalizer


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    return float(np.exp(-log_likelihoods(logits, ids).mean()))
