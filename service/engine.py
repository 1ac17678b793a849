"""Runs generation requests for one model on a worker thread and streams events to asyncio.

ONNX Runtime releases the GIL while it computes, so the event loop keeps serving other clients
while a request decodes. Requests run one after another in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from service.detokenizer import Detokenizer
from service.dynamic_generator import DynamicCacheGenerator
from service.generator import DecodeLoop, Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import Placement, create_session
from service.sampler import Sampler, SamplingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_id: int


@dataclass(frozen=True)
class Finished:
    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float
    seconds: float


@dataclass(frozen=True)
class Failed:
    message: str


Event = TextDelta | Finished | Failed


@dataclass
class _Job:
    request: GenerationRequest
    emit: Callable[[Event], None]
    cancelled: threading.Event


def decode_loop_for(folder: ModelFolder, session, capacity: int, device: str) -> DecodeLoop:
    """The decode loop that fits the folder's graph interface."""
    if folder.graph_interface == "optimum":
        return DynamicCacheGenerator(session, capacity, device)
    return Generator(session, ModelShape.from_config(folder.config), capacity, device)


class Engine:
    def __init__(self, folder: ModelFolder, placement: Placement, capacity: int, threads: int | None = None) -> None:
        self.folder = folder
        self.placement = placement
        session = create_session(folder.path / "model.onnx", placement, threads)
        self.generator = decode_loop_for(folder, session, capacity, placement.device)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"engine:{folder.model_id}", daemon=True)
        self._worker.start()

    @property
    def capacity(self) -> int:
        return self.generator.capacity

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Events for one request; leaving the iterator early cancels the generation."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = _Job(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event), threading.Event())
        self._jobs.put(job)
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            job.cancelled.set()

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join(timeout=30)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                self._run(job)
            except Exception as error:  # reported to the one request, the worker lives on
                log.exception("generation failed")
                job.emit(Failed(f"generation failed: {error}"))

    def _run(self, job: _Job) -> None:
        request = job.request
        started = time.perf_counter()
        first_token_at = None
        detokenizer = Detokenizer(self.folder.tokenizer)
        produced = 0
        tokens = self.generator.generate(
            request.prompt_ids,
            request.max_new_tokens,
            Sampler(request.sampling),
            self.folder.stop_token_ids,
            job.cancelled.is_set,
        )
        for token in tokens:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            produced += 1
            job.emit(TextDelta(detokenizer.add(token), token))
        if job.cancelled.is_set():
            reason = "cancelled"
        elif produced >= request.max_new_tokens or self.generator.cache.length >= self.capacity:
            reason = "length"
        else:
            reason = "stop"
        finished_at = time.perf_counter()
        job.emit(
            Finished(
                reason,
                len(request.prompt_ids),
                produced,
                (first_token_at or finished_at) - started,
                finished_at - started,
            )
        )
