"""How a conversion reports what it is doing: stage messages and a bar over long loops.

Library callers (tests, the service's registry) get the silent base class; the CLI prints
stages with elapsed time and draws tqdm bars on a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

Item = TypeVar("Item")


class Progress:
    """Silent: the default for library calls."""

    def stage(self, message: str) -> None:
        """A new step has started."""

    def track(self, items: Iterable[Item], description: str, total: int | None = None) -> Iterator[Item]:
        """Yields `items`, reporting how far through them the conversion is."""
        yield from items


class ConsoleProgress(Progress):
    """Stages as `[  12.3s] message` lines and tqdm bars, both on stderr."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def stage(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def track(self, items: Iterable[Item], description: str, total: int | None = None) -> Iterator[Item]:
        from tqdm import tqdm

        yield from tqdm(items, desc=description, total=total, unit="layer", file=sys.stderr, leave=False, disable=None)
