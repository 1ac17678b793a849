"""Chat completions, over HTTP and the WebSocket alike: a conversation in, `n` answers out.

`plan` is every check a request gets before the queue (guards, model, session, template, budget,
sampling options, the key's tokens); `admit` queues it; `whole` gathers the answer and
`chunks` is its stream of typed chunks, which SSE and the WebSocket only frame. A session's
turn is stored once every choice has answered whole (choice 0's text), before the client sees
the end; an answer the store could not keep is still sent, flagged.

What the answer must follow (response_format, tools, guided_*) is service.serving.
output_constraints' OutputPlan: `plan` turns it into prompt messages and the request's grammar,
and `whole` and `chunks` read tool calls out of the text (a stream sends each call whole, as one
delta, once its closing tag arrives).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection, Request

from service.engine.chat_template import ChatTemplateError
from service.engine.engine import Engine, Failed, Finished, GenerationRequest, TextDelta, Ticket
from service.engine.registry import ModelEntry
from service.errors import APIError
from service.operations import limits
from service.operations.telemetry import observe_generation
from service.serving import generation, pipeline
from service.serving.logprobs import chat_logprobs
from service.serving.model_access import ready_model
from service.serving.output_constraints import OutputPlan, output_plan
from service.serving.tool_calls import CallStream, ToolCall, parse_calls
from service.serving.request_bodies import ChatCompletionRequest
from service.serving.response_bodies import (
    AssistantMessage,
    CalledFunction,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ErrorDetail,
    ToolCallBody,
    ToolCallDelta,
)
from service.serving.sessions import SessionHistory, TurnNotSaved, session_history


@dataclass
class ChatPlan:
    """A request that passed every check, not yet queued; its tokens are charged to its key."""

    body: ChatCompletionRequest
    entry: ModelEntry
    history: SessionHistory | None
    prompt_ids: list[int]
    requests: list[GenerationRequest]
    charge: limits.Charge
    outputs: OutputPlan

    @property
    def engine(self) -> Engine:
        return self.entry.engine


def prompt_ids(engine: Engine, body: ChatCompletionRequest, history: SessionHistory | None, outputs: OutputPlan) -> list[int]:
    """The templated conversation; with a session's history, its remembered turns come first.
    Tools reach the template, or the prompt, as `outputs` says."""
    folder = engine.folder
    if folder.chat_template is None:
        raise APIError(400, f"the model {body.model!r} has no chat template; use /v1/completions", param="model")
    knows_tools = folder.chat_template.knows_tools
    tools = [tool.as_openai() for tool in outputs.tools] if knows_tools and outputs.tools else None

    def encode(messages: list[dict]) -> list[int]:
        try:
            return folder.encode_chat(outputs.prompt_messages(messages, knows_tools), tools=tools)
        except ChatTemplateError as error:
            raise APIError(400, str(error), param="messages") from error

    messages = [_as_template_message(message) for message in body.messages]
    if history is None:
        return encode(messages)
    return history.prompt_ids(engine, messages, body.max_completion_tokens or body.max_tokens, encode)


def _as_template_message(message) -> dict:
    """A request message as chat templates read it (Hugging Face's keys)."""
    rendered = {"role": message.role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


async def plan(connection: HTTPConnection, body: ChatCompletionRequest) -> ChatPlan:
    guards: limits.Guards = connection.app.state.guards
    guards.check_messages(len(body.messages))
    budget_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    guards.check_completion(body.max_completion_tokens or body.max_tokens, budget_param)
    if body.top_logprobs and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    outputs = output_plan(body)
    entry = ready_model(connection, body.model)
    engine = entry.engine
    history = await session_history(connection, body.session_id) if body.session_id is not None else None
    ids = await generation.off_loop(connection, prompt_ids, engine, body, history, outputs)
    grammar = await generation.off_loop(connection, outputs.compiled, engine.folder)
    budget = generation.completion_budget(engine, ids, body.max_completion_tokens or body.max_tokens, "messages")
    request = GenerationRequest(
        ids,
        budget,
        generation.sampling_params(engine, body, bool(body.logprobs), body.top_logprobs or 0),
        stop=body.stop_strings(),
        ignore_eos=bool(body.ignore_eos),
        grammar=grammar,
    )
    requests = generation.choices_of(request, body.choices)
    return ChatPlan(body, entry, history, ids, requests, limits.check_admission(connection, requests, "messages"), outputs)


@dataclass
class ChatAnswer:
    """An admitted request: its tickets, one per choice."""

    plan: ChatPlan
    tickets: list[Ticket]
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, index: int, delta: ChatDelta, finish_reason: str | None = None, token=None) -> ChatCompletionChunk:
        logprobs = chat_logprobs(self.plan.engine.folder, [token]) if self.plan.body.logprobs and token is not None else None
        choice = ChatChunkChoice(index, delta, logprobs, finish_reason)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.plan.entry.model_id, choices=[choice])


async def admit(connection: HTTPConnection, plan: ChatPlan, **observation) -> ChatAnswer:
    """Queues the plan's requests until each has a slot (refunding the key if refused);
    `observation` goes to observe_generation (a WebSocket request's own log line)."""
    tickets = await generation.admit(plan.engine, plan.requests, plan.charge)
    tickets = observe_generation(
        connection, "chat", plan.entry.model_id, tickets, len(plan.prompt_ids), plan.requests[0], end_user=plan.body.user, **observation
    )
    return ChatAnswer(plan, tickets)


async def whole(answer: ChatAnswer, connection: Request) -> ChatCompletion:
    plan = answer.plan
    choices = await pipeline.gather(answer.tickets, connection)
    finished = [choice.finished for choice in choices]
    completion = ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=plan.entry.model_id,
        choices=[
            _choice(index, choice, plan)
            for index, choice in enumerate(choices)
        ],
        usage=pipeline.usage(finished, len(plan.prompt_ids)),
    )
    if plan.history is not None:
        completion.session_saved = True
        if pipeline.answered(finished):  # a session keeps choice 0 when n > 1
            try:
                await plan.history.append_turn(plan.engine, plan.body.messages, choices[0].answer)
            except TurnNotSaved as error:
                completion.session_saved = False
                completion.session_error = error.detail()
    return completion


def _choice(index: int, choice: pipeline.Choice, plan: ChatPlan) -> ChatChoice:
    """One whole choice; its tool calls, when the request reads them, are parsed once."""
    content, calls = parse_calls(choice.answer) if plan.outputs.reads_calls else (choice.answer, [])
    message = AssistantMessage(content, tool_calls=[_call_body(call) for call in calls]) if calls else AssistantMessage(choice.answer)
    logprobs = chat_logprobs(plan.engine.folder, choice.tokens) if plan.body.logprobs else None
    return ChatChoice(index, message, logprobs, _finish_reason(choice.finished.finish_reason, bool(calls)))


def _call_body(call: ToolCall) -> ToolCallBody:
    return ToolCallBody(call.id, CalledFunction(call.name, call.arguments))


def _finish_reason(reason: str, called: bool) -> str:
    """OpenAI's "tool_calls" for an answer that ended by calling tools."""
    return "tool_calls" if called and reason == "stop" else reason


async def chunks(
    answer: ChatAnswer,
    keepalive: float | None = None,
    before_saving: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[ChatCompletionChunk | pipeline.StreamError | pipeline.StreamEnd | pipeline.Keepalive]:
    """The chat.completion.chunk stream: each choice's role, its text as it comes, its finish
    reason; then the session's turn stored, usage (stream_options.include_usage) and the end.

    A stream cut short or failed leaves a session as it was. `before_saving` runs once every
    choice has answered, before the turn is stored; False (the request was cancelled meanwhile)
    ends the stream there.
    """
    plan = answer.plan
    for index in range(len(answer.tickets)):
        yield answer.chunk(index, ChatDelta(role="assistant", content=""))
    finished: dict[int, Finished] = {}
    first_answer: list[str] = []
    calls = [CallStream() for _ in answer.tickets] if plan.outputs.reads_calls else None

    def split(index: int, text: str) -> tuple[str, list[ChatCompletionChunk]]:
        """Text to send now, and a chunk per tool call that text finished."""
        if calls is None:
            return text, []
        sent, finished_calls = calls[index].feed(text)
        offset = len(calls[index].calls) - len(finished_calls)
        return sent, [
            answer.chunk(index, ChatDelta(tool_calls=[ToolCallDelta(offset + number, call.id, CalledFunction(call.name, call.arguments))]))
            for number, call in enumerate(finished_calls)
        ]

    async for item in pipeline.choice_events(answer.tickets, keepalive):
        if isinstance(item, pipeline.Keepalive):
            yield item
            continue
        index, event = item.index, item.event
        if index == 0 and isinstance(event, (TextDelta, Finished)):
            first_answer.append(event.text)
        if isinstance(event, TextDelta):
            sent, call_chunks = split(index, event.text)
            if sent or plan.body.logprobs:
                yield answer.chunk(index, ChatDelta(content=sent), token=event.token)
            for chunk in call_chunks:
                yield chunk
        elif isinstance(event, Finished):
            sent, call_chunks = split(index, event.text)
            sent += calls[index].flush() if calls is not None else ""
            if sent:
                yield answer.chunk(index, ChatDelta(content=sent))
            for chunk in call_chunks:
                yield chunk
            called = calls is not None and bool(calls[index].calls)
            yield answer.chunk(index, ChatDelta(), _finish_reason(event.finish_reason, called))
            finished[index] = event
        elif isinstance(event, Failed):
            yield pipeline.StreamError(500, ErrorDetail(event.message, "server_error", code=event.code))
    if len(finished) < len(answer.tickets):
        return
    ended = [finished[index] for index in range(len(answer.tickets))]
    usage = pipeline.usage(ended, len(plan.prompt_ids))
    if plan.history is not None and pipeline.answered(ended):
        if before_saving is not None and not await before_saving():
            return
        try:
            await plan.history.append_turn(plan.engine, plan.body.messages, "".join(first_answer))
        except APIError as error:
            yield pipeline.StreamError.of(error)
    if plan.body.stream_options is not None and plan.body.stream_options.include_usage:
        yield ChatCompletionChunk(id=answer.id, created=answer.created, model=plan.entry.model_id, choices=[], usage=usage)
    called = [calls is not None and bool(calls[index].calls) for index in range(len(ended))]
    yield pipeline.StreamEnd([_finish_reason(event.finish_reason, call) for event, call in zip(ended, called, strict=True)], usage)
