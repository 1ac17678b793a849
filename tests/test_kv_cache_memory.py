"""KV memory follows the tokens held, not slots x capacity."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine.kv_cache import SlotCache
from service.engine.process_memory import resident_bytes

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _resident_mib() -> int:
    return resident_bytes() // (1024 * 1024)


@pytest.mark.skipif(
    not THP_MODE.is_file() or "[madvise]" not in THP_MODE.read_text(),
    reason="numpy's huge-page hint only matters when transparent huge pages are in madvise mode",
)
def test_a_cache_holding_few_tokens_stays_small():
    before = _resident_mib()
    # SmolLM2's shape: 30 layers of 3 KV heads of 64, 8 slots of 4096 tokens (1.4 GiB if committed).
    cache = SlotCache(layers=30, kv_heads=3, head_dim=64, capacity=4096, slots=8)
    for array in cache._arrays.values():  # what GroupQueryAttention writes for 180 tokens a slot
        array[:, :, :180] = 1.0

    grown = _resident_mib() - before

    assert grown < 200, f"resident memory grew by {grown} MiB for 180 tokens in each of 8 slots"
