"""This process's resident memory, and handing freed heap memory back to the operating system.

The registry measures what loading a model really takes as the growth of resident memory, since
file sizes say little: ONNX Runtime repacks weights for its kernels and maps `model.onnx.data`
rather than reading it. Loading also leaves memory freed but held: glibc keeps the heap a
tokenizer was parsed in (193 MiB of Gemma 3's 290) until `malloc_trim` gives it back, so the
registry trims before it measures, and after an engine is freed.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

_STATM = Path("/proc/self/statm")


def resident_bytes() -> int | None:
    """Bytes of this process in RAM (/proc/self/statm: resident pages x page size); None where
    there is no /proc (macOS), so a caller can say it did not measure rather than guess."""
    try:
        resident_pages = int(_STATM.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> bool:
    """Gives the heap memory freed since the last trim back to the operating system; False where
    the C library has no malloc_trim (musl, macOS), whose allocators return memory their own way."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    try:  # the symbols already loaded into this process, the C library's among them
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
