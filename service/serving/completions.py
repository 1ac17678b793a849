"""Text completions: text (or token ids) in, continuations out, whole or as typed chunks.

With `echo` the prompt comes back before each continuation, and with `logprobs` too, every prompt
token's log-probability: how evaluation harnesses measure a text's likelihood through an API
(`max_tokens: 0` scores the prompt alone). Each prompt gets `n` choices, numbered prompt by prompt.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection, Request

from service.engine.engine import Engine, Failed, Finished, GenerationRequest, PromptScores, TextDelta, Ticket
from service.engine.registry import ModelEntry
from service.engine.sequence import TokenLogprob
from service.errors import APIError
from service.operations import limits
from service.operations.telemetry import observe_generation
from service.serving import generation, pipeline
from service.serving.logprobs import completion_logprobs
from service.serving.model_access import ready_model
from service.serving.request_bodies import CompletionRequest
from service.serving.response_bodies import Completion, CompletionChoice, ErrorDetail


def prompt_ids(engine: Engine, prompts: list[str | list[int]]) -> list[list[int]]:
    vocab_size = engine.folder.tokenizer.get_vocab_size()
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = engine.folder.encode(prompt)
        else:
            if not prompt or any(not 0 <= token < vocab_size for token in prompt):
                raise APIError(400, f"prompt token ids must be between 0 and {vocab_size - 1}", param="prompt")
            ids = prompt
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt")
        encoded.append(ids)
    return encoded


def _generation_request(engine: Engine, body: CompletionRequest, ids: list[int]) -> GenerationRequest:
    budget = 0 if body.max_tokens == 0 else generation.completion_budget(engine, ids, body.max_tokens, "prompt")
    if budget == 0 and len(ids) > engine.capacity:
        generation.completion_budget(engine, ids, 1, "prompt")
    wants_logprobs = body.logprobs is not None
    return GenerationRequest(
        ids,
        budget,
        generation.sampling_params(engine, body, wants_logprobs, body.logprobs or 0),
        stop=body.stop_strings(),
        ignore_eos=bool(body.ignore_eos),
        prompt_logprobs=(body.logprobs or 0) if body.echo and wants_logprobs else None,
    )


@dataclass
class CompletionPlan:
    """A request that passed every check, not yet queued; its tokens are charged to its key."""

    body: CompletionRequest
    entry: ModelEntry
    prompts: list[str | list[int]]
    prompt_ids: list[list[int]]
    requests: list[GenerationRequest]  # prompt by prompt, n each
    charge: limits.Charge

    @property
    def engine(self) -> Engine:
        return self.entry.engine

    def echo(self, index: int) -> str:
        """What choice `index` repeats of its prompt first: the prompt's text with `echo`."""
        if not self.body.echo:
            return ""
        prompt = self.prompts[index // self.body.choices]
        ids = self.prompt_ids[index // self.body.choices]
        return prompt if isinstance(prompt, str) else self.engine.folder.tokenizer.decode(ids, skip_special_tokens=False)


async def plan(connection: HTTPConnection, body: CompletionRequest) -> CompletionPlan:
    connection.app.state.guards.check_completion(body.max_tokens, "max_tokens")
    if body.suffix:
        raise APIError(400, "`suffix` (fill in the middle) is not supported", param="suffix", code="unsupported_parameter")
    if body.best_of is not None and body.best_of != body.choices:
        raise APIError(400, "`best_of` other than `n` is not supported", param="best_of", code="unsupported_parameter")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens 0 only makes sense with echo (to score the prompt)", param="max_tokens")
    try:
        prompts = body.prompts()
    except ValueError as error:
        raise APIError(400, str(error), param="prompt") from error
    entry = ready_model(connection, body.model)
    engine = entry.engine
    ids = await generation.off_loop(connection, prompt_ids, engine, prompts)
    requests = [choice for one in ids for choice in generation.choices_of(_generation_request(engine, body, one), body.choices)]
    return CompletionPlan(body, entry, prompts, ids, requests, limits.check_admission(connection, requests, "prompt"))


@dataclass
class CompletionAnswer:
    """An admitted request: its tickets, one per choice."""

    plan: CompletionPlan
    tickets: list[Ticket]
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.plan.prompt_ids)

    def completion(self, choices: list[CompletionChoice], usage=None) -> Completion:
        completion = Completion(id=self.id, created=self.created, model=self.plan.entry.model_id, choices=choices)
        if usage is not None:
            completion.usage = usage
        return completion

    def chunk(self, index: int, text: str, finish_reason: str | None = None, tokens: list[TokenLogprob] | None = None) -> Completion:
        logprobs = completion_logprobs(self.plan.engine.folder, tokens) if self.plan.body.logprobs is not None and tokens else None
        return self.completion([CompletionChoice(text, index, logprobs, finish_reason)])


async def admit(connection: HTTPConnection, plan: CompletionPlan) -> CompletionAnswer:
    tickets = await generation.admit(plan.engine, plan.requests, plan.charge)
    answer = CompletionAnswer(plan, tickets)
    answer.tickets = observe_generation(
        connection, "text_completion", plan.entry.model_id, tickets, answer.prompt_tokens, plan.requests[0], end_user=plan.body.user
    )
    return answer


async def whole(answer: CompletionAnswer, connection: Request) -> Completion:
    plan = answer.plan
    gathered = await pipeline.gather(answer.tickets, connection)
    choices = []
    for index, choice in enumerate(gathered):
        logprobs = None
        if plan.body.logprobs is not None:
            tokens = (list(choice.prompt.tokens) if choice.prompt else []) + choice.tokens
            logprobs = completion_logprobs(plan.engine.folder, tokens)
        choices.append(CompletionChoice(plan.echo(index) + choice.answer, index, logprobs, choice.finished.finish_reason))
    return answer.completion(choices, pipeline.usage([choice.finished for choice in gathered], answer.prompt_tokens))


async def chunks(
    answer: CompletionAnswer, keepalive: float | None = None
) -> AsyncIterator[Completion | pipeline.StreamError | pipeline.StreamEnd | pipeline.Keepalive]:
    """text_completion chunks: each choice's echo (with the prompt's scores when asked), its text
    as it comes and its finish reason; then usage (stream_options.include_usage) and the end."""
    plan = answer.plan
    finished: dict[int, Finished] = {}
    echoed: set[int] = set()
    async for item in pipeline.choice_events(answer.tickets, keepalive):
        if isinstance(item, pipeline.Keepalive):
            yield item
            continue
        index, event = item.index, item.event
        if plan.body.echo and index not in echoed and not isinstance(event, PromptScores):
            echoed.add(index)
            yield answer.chunk(index, plan.echo(index))
        if isinstance(event, PromptScores):
            echoed.add(index)
            yield answer.chunk(index, plan.echo(index), tokens=list(event.tokens))
        elif isinstance(event, TextDelta):
            if event.text or plan.body.logprobs is not None:
                yield answer.chunk(index, event.text, tokens=[event.token])
        elif isinstance(event, Finished):
            yield answer.chunk(index, event.text, event.finish_reason)
            finished[index] = event
        elif isinstance(event, Failed):
            yield pipeline.StreamError(500, ErrorDetail(event.message, "server_error", code=event.code))
    if len(finished) < len(answer.tickets):
        return
    ended = [finished[index] for index in range(len(answer.tickets))]
    usage = pipeline.usage(ended, answer.prompt_tokens)
    if plan.body.stream_options is not None and plan.body.stream_options.include_usage:
        yield answer.completion([], usage)
    yield pipeline.StreamEnd([event.finish_reason for event in ended], usage)
