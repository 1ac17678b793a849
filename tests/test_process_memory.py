"""The process's resident memory is read as the kernel counts it, and freed heap memory goes back
to the system when asked."""

from __future__ import annotations

import pytest

from service.engine.process_memory import release_free_memory, resident_bytes

MIB = 1024 * 1024


def test_resident_memory_grows_by_what_is_written():
    before = resident_bytes()
    written = b"\x01" * (64 * MIB)

    grown = resident_bytes() - before

    assert len(written) == 64 * MIB and grown >= 60 * MIB, f"resident memory grew by {grown / MIB:.1f} MiB for 64 MiB written"


def test_freed_heap_memory_goes_back_to_the_system():
    if not release_free_memory():
        pytest.skip("this C library has no malloc_trim")
    # 100 KB blocks come from the heap (glibc maps only blocks of 128 KiB and more on their own);
    # keeping every tenth pins the heap, so the freed ones between stay resident until a trim.
    blocks = [b"\x01" * 100_000 for _ in range(2000)]
    kept = blocks[::10]
    del blocks
    freed = resident_bytes()

    release_free_memory()

    given_back = freed - resident_bytes()
    assert len(kept) == 200 and given_back > 100 * MIB, f"a trim gave back {given_back / MIB:.1f} MiB of about 170 MiB freed"
