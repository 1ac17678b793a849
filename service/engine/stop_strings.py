"""Stop strings over streamed text: found across piece boundaries, never emitted.

A stop can arrive split over several tokens, so text that could still grow into a stop is held
back until the next piece settles it; everything else is emitted as soon as it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        # An empty stop would match before any text, which no client means.
        self.stops = tuple(stop for stop in stops if stop)
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        """Text that is safe to emit now, and whether a stop string was reached (then the text is everything before the earliest stop, and later feeds must not be called)."""
        if self.stopped:
            raise RuntimeError("a stop string was already reached; the matcher takes no more text")
        if not self.stops:
            return text, False
        pending = self.held + text
        # Held text never contains a whole stop, and emitted text never starts one, so the
        # earliest stop in `pending` is the earliest in the whole stream.
        starts = [start for start in (pending.find(stop) for stop in self.stops) if start >= 0]
        if starts:
            self.stopped = True
            self.held = ""
            return pending[: min(starts)], True
        keep = self._partial_stop_length(pending)
        self.held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        """At the end of generation: the text still held back (a partial stop that never completed)."""
        held, self.held = self.held, ""
        return held

    def _partial_stop_length(self, text: str) -> int:
        """The length of the longest end of `text` that begins some stop: the least that must wait."""
        longest = min(len(text), max(len(stop) for stop in self.stops) - 1)
        for length in range(longest, 0, -1):
            ending = text[-length:]
            if any(stop.startswith(ending) for stop in self.stops):
                return length
        return 0
