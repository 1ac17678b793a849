"""The continuous-batching engine on the real SmolLM2 model: batched answers equal one-at-a-time
answers, prefixes are reused, long prompts interleave with running streams, the queue refuses."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.engine.decode_loop import Generator, ModelShape
from service.engine.engine import Admitted, Engine, EngineBusy, EngineLimits, Failed, Finished, GenerationRequest, TextDelta
from service.engine.kv_cache import SlotCache
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement, create_session
from service.engine.sampler import Sampler, SamplingParams

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
    async for event in engine.submit(request).events():
        events.append(event)
        if isinstance(event, TextDelta):
            tokens.append(event.token.token_id)
    return tokens, events


def one_at_a_time(folder: ModelFolder, prompt: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=1024)
    stop_ids = set() if ignore_eos else folder.stop_token_ids
    return list(generator.generate(prompt, max_new_tokens, Sampler(GREEDY), stop_ids))


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


def test_a_follow_up_turn_reuses_what_a_prefill_computed_of_the_cached_conversation(folder):
    engine = make_engine(folder, slots=2)
    first_prompt = chat_prompt(folder, QUESTIONS[0])
    try:
        answer, _ = asyncio.run(run(engine, GenerationRequest(first_prompt, 16, GREEDY)))
        follow_up = chat_prompt(folder, QUESTIONS[0], folder.tokenizer.decode(answer), "And of Italy?")
        tokens, events = asyncio.run(run(engine, GenerationRequest(follow_up, 16, GREEDY)))
    finally:
        engine.close()

    admitted = next(event for event in events if isinstance(event, Admitted))
    # Everything a prefill computed: the first prompt but its last token, which ran as a decode row.
    assert admitted.reused_tokens == len(first_prompt) - 1 and engine.prefix_hits == 1
    assert tokens == one_at_a_time(folder, follow_up, 16)


def test_a_long_prompt_is_prefilled_between_the_steps_of_a_running_stream(folder):
    engine = make_engine(folder, slots=2)
    running = GenerationRequest(chat_prompt(folder, QUESTIONS[2]), 200, GREEDY, ignore_eos=True)
    long_prompt = chat_prompt(folder, "Summarize: " + "The city grew along the river for centuries. " * 60)
    timeline: list[str] = []

    async def scenario():
        async def first():
            async for event in engine.submit(running).events():
                if isinstance(event, TextDelta):
                    timeline.append("running token")

        async def second():
            await asyncio.sleep(0.3)
            async for event in engine.submit(GenerationRequest(long_prompt, 2, GREEDY)).events():
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


def test_requests_one_after_another_decode_one_row_and_keep_every_cached_prefix(folder):
    # Each new request takes the lowest slot; the cache it displaces moves to the slot being
    # evicted, so a lone stream never pays for rows of idle slots and no prefix is lost.
    engine = make_engine(folder, slots=3)
    first_prompt = chat_prompt(folder, QUESTIONS[0])
    try:
        answer, _ = asyncio.run(run(engine, GenerationRequest(first_prompt, 12, GREEDY)))
        for question in QUESTIONS[1:3]:
            asyncio.run(run(engine, GenerationRequest(chat_prompt(folder, question), 12, GREEDY)))
        follow_up = chat_prompt(folder, QUESTIONS[0], folder.tokenizer.decode(answer), "And of Italy?")
        tokens, events = asyncio.run(run(engine, GenerationRequest(follow_up, 12, GREEDY)))
    finally:
        engine.close()

    admitted = next(event for event in events if isinstance(event, Admitted))
    assert admitted.reused_tokens == len(first_prompt) - 1  # what a prefill computed (see the test above)
    assert tokens == one_at_a_time(folder, follow_up, 12)  # the moved keys and values are intact
    assert engine.idle_rows == 0


def test_a_sequence_above_a_finished_one_moves_down_and_keeps_its_answer(folder):
    engine = make_engine(folder, slots=2)
    short = GenerationRequest(chat_prompt(folder, QUESTIONS[1]), 3, GREEDY, ignore_eos=True)
    long = GenerationRequest(chat_prompt(folder, QUESTIONS[2]), 40, GREEDY, ignore_eos=True)

    async def both():
        return await asyncio.gather(run(engine, short), run(engine, long))

    try:
        (_, _), (tokens, _) = asyncio.run(both())
    finally:
        engine.close()

    assert tokens == one_at_a_time(folder, long.prompt_ids, 40, ignore_eos=True)
    assert engine.batch_sizes[2] >= 1 and engine.idle_rows == 0  # decoded alone in the lowest slot


def test_swapping_slot_prefixes_exchanges_exactly_the_given_positions():
    cache = SlotCache(layers=2, kv_heads=2, head_dim=4, capacity=8, slots=3)
    for (layer, kind), array in cache._arrays.items():
        for slot in range(3):
            array[slot] = 100 * slot + 10 * layer + (kind == "value")
    before = {key: array.copy() for key, array in cache._arrays.items()}

    cache.swap_prefixes(2, 5, 0, 3)

    for key, array in cache._arrays.items():
        old = before[key]
        np.testing.assert_array_equal(array[0, :, :5], old[2, :, :5])
        np.testing.assert_array_equal(array[0, :, 5:], old[0, :, 5:])
        np.testing.assert_array_equal(array[2, :, :3], old[0, :, :3])
        np.testing.assert_array_equal(array[2, :, 3:], old[2, :, 3:])
        np.testing.assert_array_equal(array[1], old[1])
