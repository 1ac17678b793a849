"""Carries events from an engine's worker thread to the event loops of the requests they belong to.

Waking an event loop from another thread writes to its self-pipe, a system call that releases the
GIL: the loop's thread takes the GIL at once and runs its share of the streaming (asyncio queues,
the route, HTTP framing), while the worker waits to get the GIL back before its next ONNX Runtime
run. Measured on 2 cores, that wait grew with the loop's work per token and cost 8% of the decode
rate at 0.3 ms of it. The worker instead leaves its events here, which takes no system call that
gives up the GIL, and goes on; this thread wakes the loops once the worker is inside ONNX Runtime
(which computes without the GIL), so the loops' work overlaps the next step instead of delaying it.
Events keep their order: one thread delivers them all, first in, first out.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


def _deliver(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


class EventCourier:
    def __init__(self, name: str) -> None:
        self._pending: deque[tuple[asyncio.AbstractEventLoop, asyncio.Queue, object]] = deque()
        self._posted = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def post(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, event: object) -> None:
        """Queues `event` for `queue`, which belongs to `loop`. Any thread."""
        self._pending.append((loop, queue, event))
        if not self._posted.is_set():  # one wake-up covers everything posted until the thread runs
            self._posted.set()

    def close(self) -> None:
        """Delivers what was posted before, then stops the thread."""
        self._closing = True
        self._posted.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._posted.wait()
            self._posted.clear()
            closing = self._closing  # read before draining: whatever was posted before close() goes out
            batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
            while self._pending:
                loop, queue, event = self._pending.popleft()
                batches.setdefault(loop, []).append((queue, event))
            for loop, items in batches.items():
                try:
                    loop.call_soon_threadsafe(_deliver, items)
                except RuntimeError:  # that loop is closed: nobody is listening any more
                    pass
            if closing:
                return
