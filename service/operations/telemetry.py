"""The one hook the generation routes call: it watches a request's tickets and, as each
sequence finishes, feeds the metrics, the request's trace and its log line.

Inter-token latency is measured here, between the tokens the route receives, which is what a
streaming client experiences (engine step plus event-loop delay).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from starlette.requests import HTTPConnection

from service.engine.engine import Event, Failed, Finished, GenerationRequest, TextDelta, Ticket
from service.operations.logs import request_fields
from service.operations.tracing import add_phase_spans, finish_generation_span, start_generation_span


class _Observation:
    """One generation request: its span, the sequences still going, what they reported."""

    def __init__(
        self,
        connection: HTTPConnection,
        operation: str,
        model: str,
        prompt_tokens: int,
        max_tokens,
        temperature,
        count: int,
        started_ns: int | None,
        log_fields: dict | None,
        on_done: Callable[[dict], None] | None,
        end_user: str | None,
    ):
        state = connection.app.state
        self.metrics = state.metrics
        self.tracer = state.tracer
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.count = self.remaining = count
        self.finished: list[Finished] = []
        self.failed = False
        self.log = request_fields(connection.scope) if log_fields is None else log_fields
        self.log.update(model=model, operation=operation)
        if end_user is not None:
            self.log["user"] = end_user
        self.on_done = on_done
        start_ns = started_ns or connection.scope.get("state", {}).get("started_ns") or time.time_ns()
        self.span = start_generation_span(self.tracer, operation, model, max_tokens, temperature, start_ns, end_user)

    def sequence_finished(self, finished: Finished, inter_token_seconds: list[float]) -> None:
        self.finished.append(finished)
        self.metrics.record_finished(self.model, finished, inter_token_seconds)
        add_phase_spans(self.tracer, self.span, finished, time.time_ns())

    def sequence_done(self, finished: Finished | None) -> None:
        """Called once per sequence, finished, failed or abandoned by its client."""
        if finished is None and not self.failed:
            self.metrics.record_abandoned(self.model)
        self.remaining -= 1
        if self.remaining:
            return
        if self.failed:
            outcome = "error"
        elif len(self.finished) < self.count or any(event.finish_reason == "cancelled" for event in self.finished):
            outcome = "cancelled"
        else:
            outcome = "ok"
        self.log.update(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(event.completion_tokens for event in self.finished),
            cached_tokens=max((event.cached_tokens for event in self.finished), default=0),
            finish_reasons=[event.finish_reason for event in self.finished],
            time_to_first_token=round(min((event.time_to_first_token for event in self.finished), default=0.0), 4),
            outcome=outcome,
        )
        finish_generation_span(self.span, self.finished, self.prompt_tokens, outcome)
        if self.on_done is not None:
            self.on_done(self.log)


class ObservedTicket:
    """A ticket whose events pass through the request's observation on their way out."""

    def __init__(self, ticket: Ticket, observation: _Observation) -> None:
        self.ticket = ticket
        self.sequence = ticket.sequence
        self._observation = observation

    async def next_event(self) -> Event:
        return await self.ticket.next_event()

    def cancel(self) -> None:
        self.ticket.cancel()

    async def events(self) -> AsyncIterator[Event]:
        last_token_at: float | None = None
        gaps: list[float] = []
        finished = None
        try:
            async for event in self.ticket.events():
                if isinstance(event, TextDelta):
                    now = time.perf_counter()
                    if last_token_at is not None:
                        gaps.append(now - last_token_at)
                    last_token_at = now
                elif isinstance(event, Finished):
                    finished = event
                    self._observation.sequence_finished(event, gaps)
                elif isinstance(event, Failed):
                    self._observation.failed = True
                yield event
        finally:
            self._observation.sequence_done(finished)


def observe_generation(
    connection: HTTPConnection,
    operation: str,
    model: str,
    tickets: list[Ticket],
    prompt_tokens: int,
    asked: GenerationRequest,
    started_ns: int | None = None,
    log_fields: dict | None = None,
    on_done: Callable[[dict], None] | None = None,
    end_user: str | None = None,
) -> list[ObservedTicket]:
    """Wraps admitted tickets so metrics, the trace and the log line see how they end;
    `asked` is the engine request (its token budget and temperature, defaults applied);
    `end_user` is the request's `user`, which the log line and the span carry.

    An HTTP request's log line is written by RequestLogMiddleware from the scope's fields; a
    request on a WebSocket (many per connection) passes its own `started_ns`, `log_fields` and an
    `on_done` that writes its line."""
    observation = _Observation(
        connection, operation, model, prompt_tokens, asked.max_new_tokens, asked.sampling.temperature, len(tickets),
        started_ns, log_fields, on_done, end_user,
    )
    return [ObservedTicket(ticket, observation) for ticket in tickets]
