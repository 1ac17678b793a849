"""A decode row's sampling candidates: what a graph built with them (the CUDA target) hands the
sampler instead of the whole vocabulary.

The graph reports each row's most likely tokens with their logits and the log of the softmax's
normalizer at the row's temperature, so greedy choice, top-k, and top-p, min_p or plain draws
whose mass lies among the candidates are exact without the row's logits leaving the device.
`full_logits` downloads the row when a request needs every logit (logprobs, penalties, bias) or
a draw lands beyond the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(eq=False)  # compared by identity: its arrays have no single truth value
class CandidateRow:
    ids: np.ndarray  # int64 (candidates,), most likely first
    logits: np.ndarray  # float32 (candidates,), their raw logits
    log_normalizer: float  # log(sum(exp(logits / temperature))) over the whole vocabulary
    temperature: float  # the temperature log_normalizer was computed at
    fetch: Callable[[], np.ndarray]  # the row's full logits (vocab,), downloaded on demand; until the runner's next step

    def full_logits(self) -> np.ndarray:
        return self.fetch()
