"""The continuous-batching engine on the real SmolLM2 model: batched answers equal one-at-a-time
answers, prefixes are reused, long prompts interleave with running streams, the queue refuses."""

from __future__ import annotations

import asyncio

import pytest

from service.engine import Admitted, Engine, EngineBusy, EngineLimits, Failed, Finished, GenerationRequest, TextDelta
from service.generator import Generator, ModelShape
from service.model_folder import ModelFolder
from service.runtime import choose_placement, create_session
from service.sampler import Sampler, SamplingParams

GREEDY = SamplingParams(temperature=0)
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "How many legs does a spider have? Explain briefly.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
]


@pytest.fixture(scope="module")
def folder(smollm2_model_dir) -> ModelFolder:
    return ModelFolder.load(smollm2_model_dir)


def chat_prompt(folder: ModelFolder, *turns: str) -> list[int]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[index % 2], "content": text} for index, text in enumerate(turns)]
    return folder.encode(folder.chat_template.render(messages))


def make_engine(folder: ModelFolder, **limits) -> Engine:
    return Engine(folder, choose_placement("cpu"), capacity=1024, threads=2, limits=EngineLimits(**limits))


async def run(engine: Engine, request: GenerationRequest) -> tuple[list[int], list]:
    """The generated token ids and every event of one request."""
    tokens, events = [], []
    async for event in engine.stream(request):
        events.append(event)
        if isinstance(event, TextDelta):
            tokens.append(event.token.token_id)
    return tokens, events


def one_at_a_time(folder: ModelFolder, prompt: list[int], max_new_tokens: int) -> list[int]:
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=1024)
    return list(generator.generate(prompt, max_new_tokens, Sampler(GREEDY), folder.stop_token_ids))


def test_batched_answers_equal_one_at_a_time_answers(folder):
    prompts = [chat_prompt(folder, question) for question in QUESTIONS]
    engine = make_engine(folder, slots=4)

    async def all_at_once():
        return await asyncio.gather(*(run(engine, GenerationRequest(prompt, 24, GREEDY)) for prompt in prompts))

    try:
        batched = [tokens for tokens, _ in asyncio.run(all_at_once())]
    finally:
        engine.close()

    assert batched == [one_at_a_time(folder, prompt, 24) for prompt in prompts]


def test_a_follow_up_turn_reuses_the_cached_conversation(folder):
    engine = make_engine(folder, slots=2)
    first_prompt = chat_prompt(folder, QUESTIONS[0])
    try:
        answer, _ = asyncio.run(run(engine, GenerationRequest(first_prompt, 16, GREEDY)))
        follow_up = chat_prompt(folder, QUESTIONS[0], folder.tokenizer.decode(answer), "And of Italy?")
        tokens, events = asyncio.run(run(engine, GenerationRequest(follow_up, 16, GREEDY)))
    finally:
        engine.close()

    admitted = next(event for event in events if isinstance(event, Admitted))
    assert admitted.reused_tokens >= len(first_prompt) and engine.prefix_hits == 1
    assert tokens == one_at_a_time(folder, follow_up, 16)


def test_a_long_prompt_is_prefilled_between_the_steps_of_a_running_stream(folder):
    engine = make_engine(folder, slots=2)
    running = GenerationRequest(chat_prompt(folder, QUESTIONS[2]), 200, GREEDY, ignore_eos=True)
    long_prompt = chat_prompt(folder, "Summarize: " + "The city grew along the river for centuries. " * 60)
    timeline: list[str] = []

    async def scenario():
        async def first():
            async for event in engine.stream(running):
                if isinstance(event, TextDelta):
                    timeline.append("running token")

        async def second():
            await asyncio.sleep(0.3)
            async for event in engine.stream(GenerationRequest(long_prompt, 2, GREEDY)):
                if isinstance(event, Admitted):
                    timeline.append("long admitted")
                elif isinstance(event, TextDelta):
                    timeline.append("long first token")
                    return

        await asyncio.gather(first(), second())

    try:
        asyncio.run(scenario())
    finally:
        engine.close()

    during = timeline[timeline.index("long admitted") : timeline.index("long first token")]
    chunks = -(-len(long_prompt) // 128)
    # The running stream got a token after every prompt chunk but the last.
    assert len(long_prompt) > 512 and during.count("running token") >= chunks - 1


def test_a_full_queue_refuses_at_once(folder):
    engine = make_engine(folder, slots=1, max_waiting=1)
    prompt = chat_prompt(folder, QUESTIONS[1])

    async def scenario():
        engine.submit(GenerationRequest(prompt, 300, GREEDY, ignore_eos=True))
        engine.submit(GenerationRequest(prompt, 300, GREEDY, ignore_eos=True))
        with pytest.raises(EngineBusy):
            engine.submit(GenerationRequest(prompt, 4, GREEDY))

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


def test_a_request_that_waits_too_long_fails_with_queue_timeout(folder):
    engine = make_engine(folder, slots=1, queue_timeout=0.3)
    prompt = chat_prompt(folder, QUESTIONS[1])

    async def scenario():
        engine.submit(GenerationRequest(prompt, 400, GREEDY, ignore_eos=True))
        _, events = await run(engine, GenerationRequest(prompt, 4, GREEDY))
        return events

    try:
        events = asyncio.run(scenario())
    finally:
        engine.close()

    assert isinstance(events[-1], Failed) and events[-1].code == "queue_timeout"


def test_a_cancelled_request_gives_its_slot_to_the_next_one(folder):
    engine = make_engine(folder, slots=1)
    prompt = chat_prompt(folder, QUESTIONS[3])

    async def scenario():
        ticket = engine.submit(GenerationRequest(prompt, 800, GREEDY, ignore_eos=True))
        seen = 0
        async for event in ticket.events():
            seen += isinstance(event, TextDelta)
            if seen == 3:
                break  # leaving the iterator cancels the request
        return await run(engine, GenerationRequest(prompt, 3, GREEDY, ignore_eos=True))

    try:
        tokens, events = asyncio.run(scenario())
    finally:
        engine.close()

    assert len(tokens) == 3 and isinstance(events[-1], Finished) and engine.running == 0
