"""The conversion the service makes by default answers like its source: greedy answers to everyday
prompts equal those of float32 activations, the README's example among them."""

from __future__ import annotations

import asyncio

import pytest

from converter.cache import cached_conversion
from converter.convert import ConversionOptions
from service.engine.engine import Engine, EngineLimits, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.runtime import choose_placement
from service.engine.sampler import SamplingParams
from service.settings import Settings
from tests.support import REPO

README_EXAMPLE = "What is the capital of France?"
EVERYDAY_PROMPTS = [
    README_EXAMPLE,
    "Name three colours.",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Give me one tip for sleeping better.",
    "At what temperature does water boil?",
    "Who wrote Romeo and Juliet?",
    "Suggest a name for a pet cat.",
    "What day comes after Monday?",
    "Explain what a noun is in one sentence.",
    "List two fruits that are red.",
    "How do I boil an egg?",
    "What is the largest planet in the solar system?",
    "Write a short thank-you note to a friend.",
    "What is the opposite of hot?",
    "Recommend a book for a long train ride.",
    "Why is the sky blue?",
    "How many minutes are in an hour?",
    "What should I pack for a day at the beach?",
    "Say hello in French.",
]


def greedy_answers(folder: ModelFolder, prompts: list[str]) -> list[list[int]]:
    """Each prompt's greedy answer (24 tokens at most) from the engine, as the service computes it."""
    engine = Engine(folder, choose_placement("cpu"), capacity=256, threads=2, limits=EngineLimits(slots=4))

    async def answer(prompt: str) -> list[int]:
        ids = folder.encode(folder.chat_template.render([{"role": "user", "content": prompt}]))
        request = GenerationRequest(ids, 24, SamplingParams(temperature=0, seed=0))
        return [event.token.token_id async for event in engine.submit(request).events() if isinstance(event, TextDelta)]

    async def all_prompts():
        return await asyncio.gather(*(answer(prompt) for prompt in prompts))

    try:
        return asyncio.run(all_prompts())
    finally:
        engine.close()


@pytest.fixture(scope="module")
def default_folder(smollm2_gguf) -> ModelFolder:
    """SmolLM2 converted as the service converts it when nothing is configured."""
    return ModelFolder.load(cached_conversion(smollm2_gguf, REPO / "models", ConversionOptions(activations=Settings().activations)))


def test_the_default_conversion_answers_everyday_prompts_as_float32_activations_do(default_folder, smollm2_gguf):
    exact = ModelFolder.load(cached_conversion(smollm2_gguf, REPO / "models", ConversionOptions(activations="fp32")))

    assert greedy_answers(default_folder, EVERYDAY_PROMPTS) == greedy_answers(exact, EVERYDAY_PROMPTS)


def test_the_readme_example_answers_paris_with_the_defaults(default_folder):
    [answer] = greedy_answers(default_folder, [README_EXAMPLE])

    assert "Paris" in default_folder.tokenizer.decode(answer)
