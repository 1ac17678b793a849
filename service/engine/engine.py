"""Runs one model's generation requests with continuous batching on a worker thread.

The worker repeats one step: admit waiting requests into free sequence slots (reusing a cached
prefix when an idle slot holds one), run one prompt chunk for one new sequence, then one decode
step for every sequence that is generating. New requests therefore join the running batch at
step boundaries, a long prompt delays running streams by one chunk at most, and a cancelled
request leaves its slot at the next step. ONNX Runtime releases the GIL while it computes, so
the event loop keeps serving clients meanwhile.

A decode step runs one row for every slot up to the highest busy one, so sequences live in the
lowest slots: a new one takes the lowest free slot (its reusable prefix copied in), and a sequence
above a slot that frees up moves down. Moves exchange cache contents, so they lose no cached
prefix (see _choose_slot for which cache is given up).

A sampled token never depends on how its prompt was computed. The kernels round differently for a
prompt chunk than for a decode row (GroupQueryAttention takes another path for a single query), so
a prompt's tokens but the last are prefilled in chunks of at least two, and its last token runs
as a decode row, like every generated token; a cached prefix is reused only as far as a prefill
computed it. A decode row's result must not depend on the other rows either: where the graph's
kernels make it depend (float activations on CPU take another path for one row than for
several), rows run one at a time.

Requests wait in a bounded queue: a full queue refuses new ones at once (EngineBusy), and one
that gets no slot within `queue_timeout` seconds fails with code "queue_timeout".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from service.engine.batch_runner import BatchRunner, ModelShape, SerialRunner
from service.engine.candidates import CandidateRow
from service.engine.decode_loop import PREFILL_CHUNK
from service.engine.detokenizer import Detokenizer
from service.engine.embedder import Embedder
from service.engine.event_courier import EventCourier
from service.engine.model_folder import ModelFolder
from service.engine.optimum_decode_loop import DynamicCacheGenerator
from service.engine.runtime import Placement, create_session
from service.engine.sequence import (
    DECODING,
    DONE,
    PREFILLING,
    Admitted,
    Event,
    Failed,
    Finished,
    GenerationRequest,
    PromptScores,
    Sequence,
    TextDelta,
    prompt_scores,
)

__all__ = ["Admitted", "Engine", "EngineBusy", "Event", "Failed", "Finished", "GenerationRequest", "PromptScores", "TextDelta"]

log = logging.getLogger(__name__)

# Prompt tokens per graph run while other sequences are decoding (PREFILL_CHUNK otherwise), so
# their next token is never more than one small chunk away.
INTERLEAVED_PREFILL_CHUNK = 128


class EngineBusy(Exception):
    """The waiting queue is full."""


@dataclass
class EngineLimits:
    slots: int = 8  # sequences decoded together
    max_waiting: int = 64  # requests queued beyond the slots
    queue_timeout: float = 60.0  # seconds a request may wait for a slot


@dataclass
class _Slot:
    tokens: list[int]  # what its cache holds, for prefix reuse once it is idle
    prompt_length: int = 0  # of those, how many were the prompt (the rest were generated)
    prefilled: int = 0  # of those, how many a prefill computed: only these may stand in for a new prompt's
    last_used: float = 0.0
    sequence: Sequence | None = None


class Ticket:
    """A submitted request: its events as an async iterator; leaving it early cancels the request."""

    def __init__(self, sequence: Sequence, events: asyncio.Queue[Event]) -> None:
        self.sequence = sequence
        self._events = events

    async def next_event(self) -> Event:
        return await self._events.get()

    def cancel(self) -> None:
        self.sequence.cancelled.set()

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                event = await self._events.get()
                yield event
                if isinstance(event, (Finished, Failed)):
                    return
        finally:
            self.cancel()


class Engine:
    def __init__(
        self,
        folder: ModelFolder,
        placement: Placement,
        capacity: int,
        threads: int | None = None,
        limits: EngineLimits = EngineLimits(),
    ) -> None:
        self.folder = folder
        self.placement = placement
        self.limits = limits
        session = create_session(folder.path / "model.onnx", placement, threads)
        if folder.graph_interface == "optimum":
            self.runner = SerialRunner(DynamicCacheGenerator(session, capacity, placement.device))
        else:
            shape = ModelShape.from_config(folder.config)
            self.runner = BatchRunner(session, shape, capacity, limits.slots, placement.device)
        self._slots = [_Slot([]) for _ in range(self.runner.slots)]
        # The fewest rows a decode step runs, so that no row's bits depend on the others; None: one
        # row at a time (see _fewest_independent_rows).
        self._fewest_rows = self._fewest_independent_rows()
        self._rows_alone = self._fewest_rows is None
        if self._rows_alone:
            log.info("%s: a decode row's logits depend on the other rows here, so rows run one at a time", folder.model_id)
        elif self._fewest_rows > 1:
            log.info("%s: a lone decode row is computed differently here, so decode steps run at least %d rows", folder.model_id, self._fewest_rows)
        self._waiting: deque[Sequence] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self._accepting = True
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.prefix_hit_tokens = 0
        self.batch_sizes: Counter[int] = Counter()  # decode steps by sequences decoded, for /metrics
        self.idle_rows = 0  # rows decode steps ran for slots with nothing to decode, for /metrics
        self.rows_decoded_alone = 0  # tokens of seeded requests decoded one row at a time (see _decode)
        self._cache_moves: list[tuple[Callable, tuple]] = []  # see _run_cache_moves
        self._courier = EventCourier(f"events:{folder.model_id}")
        self._worker = threading.Thread(target=self._work, name=f"engine:{folder.model_id}", daemon=True)
        self._worker.start()

    @property
    def capacity(self) -> int:
        return self.runner.capacity

    @cached_property
    def embedder(self) -> Embedder | None:
        """Embeddings on this model's session, made on first use; None where the graph gives no
        hidden states (converted before converter 0.7.0, or by optimum)."""
        if not isinstance(self.runner, BatchRunner) or not Embedder.supports(self.runner.session):
            return None
        return Embedder(self.runner.session, ModelShape.from_config(self.folder.config), self.placement.device)

    @property
    def running(self) -> int:
        return sum(slot.sequence is not None for slot in self._slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, request: GenerationRequest) -> Ticket:
        """Queues a request; raises EngineBusy when the queue is full. Call from the event loop."""
        if not request.prompt_ids:
            raise ValueError("the prompt is empty")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            self._courier.post(loop, events, event)

        sequence = Sequence(
            request,
            emit,
            Detokenizer(self.folder.tokenizer),
            frozenset(self.folder.stop_token_ids),
        )
        with self._condition:
            if not self._accepting:
                raise EngineBusy("the model is being unloaded")
            # Requests not yet moved into a free slot do not count against the waiting room.
            free = sum(slot.sequence is None for slot in self._slots)
            if len(self._waiting) >= self.limits.max_waiting + free:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting for {self.runner.slots} slots")
            self._waiting.append(sequence)
            self._condition.notify()
        return Ticket(sequence, events)

    def close(self, drain_seconds: float = 0.0) -> None:
        """Stops the worker. With `drain_seconds`, requests already accepted may finish first;
        whatever is left then fails with code "model_unloaded"."""
        with self._condition:
            self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while (self.running or self._waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._worker.join(timeout=30)
        self._courier.close()

    # The worker thread from here on.

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._closing and not self._waiting and not self.running:
                    self._condition.wait()
                if self._closing:
                    break
                self._admit()
            try:
                self._run_cache_moves()
                self._step()
            except Exception as error:  # reported to the requests in flight; the worker lives on
                log.exception("generation step failed")
                for slot in self._slots:
                    if slot.sequence is not None:
                        slot.sequence.emit(Failed(f"generation failed: {error}"))
                        self._release(slot, keep_cache=False)
        for sequence in list(self._waiting):
            sequence.emit(Failed("the model was unloaded", code="model_unloaded"))
        for slot in self._slots:
            if slot.sequence is not None:
                slot.sequence.emit(Failed("the model was unloaded", code="model_unloaded"))

    def _admit(self) -> None:
        """Moves waiting requests into free slots; fails those that waited too long."""
        now = time.perf_counter()
        while self._waiting:
            sequence = self._waiting[0]
            if sequence.cancelled.is_set():
                self._waiting.popleft()
                continue
            free = [index for index, slot in enumerate(self._slots) if slot.sequence is None]
            if not free:
                break
            self._waiting.popleft()
            index, reused = self._choose_slot(free, sequence.request)
            self._slots[index].sequence = sequence
            sequence.admit(index, reused)
        for sequence in [waiting for waiting in self._waiting if now - waiting.submitted > self.limits.queue_timeout]:
            self._waiting.remove(sequence)
            sequence.emit(
                Failed(f"no generation slot freed up within {self.limits.queue_timeout:g} s", code="queue_timeout")
            )

    def _choose_slot(self, free: list[int], request: GenerationRequest) -> tuple[int, int]:
        """The free slot a new sequence takes, and how many of its prompt tokens are cached there.

        The longest cached prefix among the idle slots is reused. Where slots can move, the
        sequence always takes the lowest free slot (adding no decode row): the reused prefix is
        copied there, and that slot's own cache moves into the slot given up. The slot given up
        is the reused one when the new prompt runs through that cache's prompt (a follow-up
        turn, or the same prompt again: only an answer is lost), else the least recently used
        other one. So a prompt that shares only a system prompt with a cached conversation
        copies those tokens and leaves the conversation cached for its next turn.
        """
        self.prefix_queries += 1
        hit, reused = self._longest_cached_prefix(free, request)
        if hit is not None:
            self.prefix_hits += 1
            self.prefix_hit_tokens += reused

        def least_recently_used(indices: list[int]) -> int:
            return min(indices, key=lambda index: (self._slots[index].last_used, index))

        if not self.runner.can_move_slots:
            return (hit, reused) if hit is not None else (least_recently_used(free), 0)
        lowest = free[0]
        continues = hit is not None and reused >= self._slots[hit].prompt_length - 1
        others = [index for index in free if index != hit]
        given_up = hit if continues or not others else least_recently_used(others)
        if given_up != lowest and given_up == hit:
            self._exchange(hit, reused, lowest, len(self._slots[lowest].tokens))
            return lowest, reused
        if given_up != lowest:  # the lowest slot's cache moves out whole; nothing of given_up's is kept
            self._exchange(given_up, 0, lowest, len(self._slots[lowest].tokens))
        if hit is not None and hit != lowest:
            self._cache_moves.append((self.runner.copy_slot, (hit, lowest, reused)))
        self._slots[lowest].tokens = request.prompt_ids[:reused]
        return lowest, reused

    def _longest_cached_prefix(self, free: list[int], request: GenerationRequest) -> tuple[int | None, int]:
        """The idle slot whose cache shares the longest prefix with the prompt, and its length."""
        best, best_length = None, 0
        if self.runner.supports_prefix_reuse and request.prompt_logprobs is None:
            prompt = request.prompt_ids
            for index in free:
                cached = self._slots[index].tokens
                length = 0
                # The prompt's last token runs as a decode row, so it is never reused.
                limit = min(self._slots[index].prefilled, len(prompt) - 1)
                while length < limit and cached[length] == prompt[length]:
                    length += 1
                if length > best_length:
                    best, best_length = index, length
        return best, best_length

    def _exchange(self, first: int, first_length: int, second: int, second_length: int) -> None:
        """Swaps two slots: the first `*_length` cached positions of each, and what they hold."""
        self._cache_moves.append((self.runner.swap_slots, (first, first_length, second, second_length)))
        self._slots[first], self._slots[second] = self._slots[second], self._slots[first]
        for index, length in ((first, second_length), (second, first_length)):
            slot = self._slots[index]
            slot.tokens = slot.tokens[:length]
            slot.prompt_length = min(slot.prompt_length, length)
            slot.prefilled = min(slot.prefilled, length)
            if slot.sequence is not None:
                slot.sequence.slot = index

    def _compact(self) -> None:
        """Moves sequences from the highest busy slots into free slots below them, so a decode
        step runs no more rows than there are sequences."""
        if not self.runner.can_move_slots:
            return
        while True:
            busy = [index for index, slot in enumerate(self._slots) if slot.sequence is not None]
            free = [index for index, slot in enumerate(self._slots) if slot.sequence is None]
            if not busy or not free or free[0] > busy[-1]:
                return
            self._exchange(busy[-1], self._slots[busy[-1]].sequence.cached, free[0], len(self._slots[free[0]].tokens))
            self._run_cache_moves()

    def _run_cache_moves(self) -> None:
        """Runs the cache copies that slot changes decided, in order. Admission decides them
        under the queue's lock but runs them after it: a long cache takes milliseconds to copy,
        and submit() on the event loop must not wait for that."""
        moves, self._cache_moves = self._cache_moves, []
        for operation, arguments in moves:
            operation(*arguments)

    def _release(self, slot: _Slot, keep_cache: bool = True) -> None:
        sequence = slot.sequence
        slot.tokens = sequence.cached_tokens() if keep_cache and sequence is not None else []
        slot.prompt_length = min(len(sequence.request.prompt_ids), len(slot.tokens)) if sequence is not None else 0
        slot.prefilled = min(len(sequence.request.prompt_ids) - 1, len(slot.tokens)) if sequence is not None else 0
        slot.last_used = time.perf_counter()
        slot.sequence = None

    def _step(self) -> None:
        for slot in self._slots:
            sequence = slot.sequence
            if sequence is not None and sequence.cancelled.is_set() and sequence.state != DONE:
                sequence.finish("cancelled")
                self._release(slot)
        self._compact()
        active = [slot.sequence for slot in self._slots if slot.sequence is not None]
        decoding = [sequence for sequence in active if sequence.state == DECODING]
        prefilling = [sequence for sequence in active if sequence.state == PREFILLING]
        if prefilling:
            self._prefill(min(prefilling, key=lambda sequence: sequence.submitted), interleaved=bool(decoding))
            decoding = [sequence for sequence in active if sequence.state == DECODING]
        if decoding:
            self._decode(decoding)

    def _prefill(self, sequence: Sequence, interleaved: bool) -> None:
        """Runs the next chunk of the prompt but its last token. Once those are cached, the last
        token waits for the decode step, whose row gives the logits of the first sampled token."""
        prompt = sequence.request.prompt_ids
        scoring = sequence.request.prompt_logprobs is not None
        last = len(prompt) - 1
        start = sequence.cached
        if start < last:
            end = min(start + (INTERLEAVED_PREFILL_CHUNK if interleaved else PREFILL_CHUNK), last)
            if last - end == 1:  # leave two tokens for the next chunk, not a lone one
                end -= 1
            chunk = prompt[start:end]
            if len(chunk) == 1 and self.runner.supports_prefix_reuse:
                # A lone token would be computed as a decode row: it runs beside the prompt's
                # last token instead, whose keys and values that token's decode row rewrites.
                chunk = prompt[start : start + 2]
            logits = self.runner.prefill(sequence.slot, chunk, start, all_positions=scoring)
            sequence.cached = end
            if scoring:
                sequence.prompt_logits.append(logits[: end - start].copy())
            if end < last:
                return
        if scoring:  # the logits before each prompt token but the first: all that scores need
            before = np.concatenate(sequence.prompt_logits) if sequence.prompt_logits else np.empty((0, 0), np.float32)
            sequence.emit(prompt_scores(prompt, before, sequence.request.prompt_logprobs))
        if sequence.request.max_new_tokens == 0:  # scoring only (echo with max_tokens 0)
            sequence.finish("length")
            self._release(self._slots[sequence.slot])
        elif last == 0:
            # Nothing to prefill: the one token runs now, alone, which computes it as a decode
            # row is computed (and starts a serial runner's new sequence).
            sequence.cached = 1
            logits = self.runner.prefill(sequence.slot, prompt, 0, temperature=sequence.request.sampling.temperature)
            if sequence.take(logits, self.capacity):
                self._release(self._slots[sequence.slot])
        else:
            sequence.pending = prompt[-1]
            sequence.state = DECODING

    def _decode(self, decoding: list[Sequence]) -> None:
        """One token for each decoding sequence. Where rows depend on each other, only requests
        with a seed are promised the same tokens whatever shares their step, so those run one row
        at a time and the others still share one batched step (a server's throughput is not
        given up for requests that asked for no reproducibility)."""
        if not self._rows_alone:
            self._decode_rows(decoding)
            return
        seeded = [sequence for sequence in decoding if sequence.request.sampling.seed is not None]
        batched = [sequence for sequence in decoding if sequence.request.sampling.seed is None]
        if seeded == decoding and max(sequence.slot for sequence in seeded) == 0:
            batched, seeded = seeded, []  # a lone row in the first slot is a row of one either way
        if seeded:
            self._decode_one_row_at_a_time(seeded)
        if batched:
            self._decode_rows(batched)

    def _decode_rows(self, decoding: list[Sequence]) -> None:
        """One batched step over the first slots; rows of sequences not in `decoding` are idle."""
        rows = self.runner.decode_rows(max(max(sequence.slot for sequence in decoding) + 1, self._fewest_rows or 1))
        tokens = [0] * rows
        temperatures = [0.0] * rows
        positions = []
        for index in range(rows):
            slot = self._slots[index]
            sequence = slot.sequence
            if sequence is not None and sequence in decoding:
                tokens[index] = sequence.pending
                temperatures[index] = sequence.request.sampling.temperature
                positions.append(sequence.cached)
            else:
                # A row with no token to add still runs: it writes one throwaway position just
                # past what its slot holds, which a later prefill overwrites.
                held = len(slot.tokens) if sequence is None else sequence.cached
                if held >= self.capacity:
                    slot.tokens = slot.tokens[: self.capacity - 1]
                    held = self.capacity - 1
                positions.append(held)
        logits = self.runner.decode(tokens, positions, temperatures)
        self.batch_sizes[len(decoding)] += 1
        self.idle_rows += rows - len(decoding)
        for sequence in decoding:
            sequence.cached += 1
            if sequence.take(logits[sequence.slot], self.capacity):
                self._release(self._slots[sequence.slot])

    def _decode_one_row_at_a_time(self, decoding: list[Sequence]) -> None:
        """A decode step for a graph whose rows depend on each other: each sequence's token runs
        alone (a one-token prefill is a decode row of one)."""
        self.batch_sizes[len(decoding)] += 1
        self.rows_decoded_alone += len(decoding)
        for sequence in decoding:
            logits = self.runner.prefill(
                sequence.slot, [sequence.pending], sequence.cached, temperature=sequence.request.sampling.temperature
            )
            sequence.cached += 1
            if sequence.take(logits, self.capacity):
                self._release(self._slots[sequence.slot])

    def _fewest_independent_rows(self) -> int | None:
        """How many rows a decode step must run at least for a row's logits to have the same bits
        whatever else shares the step: 1 where rows never depend on each other, 2 on a GPU where
        only a lone row is computed differently (a second row costs next to nothing there), None
        where rows run one at a time. Kernels may take another path for one row than for several
        (ONNX Runtime's float-activation MatMulNBits does on CPU, where a second row would double
        a lone stream's step), so this is measured once, on slots still empty, for every row count
        a step may run (powers of two with CUDA graphs)."""
        if self.runner.slots < 2:
            return 1

        def first_row(rows: int) -> np.ndarray:
            row = self.runner.decode([1] + [2] * (rows - 1), [0] * rows)[0]
            return np.array(row.full_logits() if isinstance(row, CandidateRow) else row)

        slots = self.runner.slots
        counts = sorted({slots, *(1 << power for power in range(1, slots.bit_length()))})  # 2, 4, ... up to slots
        several = [first_row(rows) for rows in counts]
        if not all(np.array_equal(several[0], row) for row in several[1:]):
            return None
        if np.array_equal(first_row(1), several[0]):
            return 1
        return 2 if self.placement.device == "cuda" else None
