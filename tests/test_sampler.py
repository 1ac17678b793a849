"""Sampler: greedy, seeded draws, the truncations, penalties, logit_bias and logprobs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from service.engine.sampler import Sampler, SamplingParams

DRAWS = 20000


def language_model_logits(vocab: int, seed: int = 0) -> np.ndarray:
    """Logits shaped like a language model's: a broad floor and a few clear favourites."""
    random = np.random.default_rng(seed)
    logits = random.normal(0.0, 2.0, vocab).astype(np.float32)
    logits[random.choice(vocab, 12, replace=False)] += random.uniform(6.0, 12.0, 12).astype(np.float32)
    return logits


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values.astype(np.float64) - values.max())
    return shifted / shifted.sum()


def draw(params: SamplingParams, logits: np.ndarray, count: int = DRAWS) -> np.ndarray:
    sampler = Sampler(params)
    return np.array([sampler(logits).token_id for _ in range(count)])


def frequencies(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.bincount(tokens, minlength=vocab) / tokens.size


def exact_nucleus(logits: np.ndarray, temperature: float, top_p: float) -> set[int]:
    """The nucleus by its definition: sort everything, keep the prefix that first reaches top_p."""
    probabilities = softmax(logits / temperature)
    order = np.argsort(-probabilities, kind="stable")
    keep = int(np.searchsorted(np.cumsum(probabilities[order]), top_p)) + 1
    return set(order[:keep].tolist())


def test_greedy_picks_the_argmax():
    logits = language_model_logits(49152)

    assert Sampler(SamplingParams(temperature=0))(logits).token_id == int(np.argmax(logits))


def test_the_same_seed_gives_the_same_tokens():
    logits = language_model_logits(1000)
    params = SamplingParams(temperature=1.5, seed=7)

    assert draw(params, logits, 50).tolist() == draw(params, logits, 50).tolist()


def test_different_seeds_give_different_tokens():
    logits = language_model_logits(1000)

    first = draw(SamplingParams(temperature=1.5, seed=7), logits, 50)
    second = draw(SamplingParams(temperature=1.5, seed=8), logits, 50)

    assert first.tolist() != second.tolist()


def test_draws_at_temperature_half_follow_the_sharpened_softmax():
    logits = np.array([1.0, 0.5, 0.0, -0.5, -1.0], dtype=np.float32)

    observed = frequencies(draw(SamplingParams(temperature=0.5, seed=1), logits), logits.size)

    assert observed == pytest.approx(softmax(logits / 0.5), abs=0.015)


def test_draws_from_a_vocabulary_of_many_blocks_follow_the_softmax():
    logits = np.full(5000, -4.0, dtype=np.float32)
    favourites = [7, 1500, 2047, 4999]
    logits[favourites] = [3.0, 2.5, 2.0, 1.5]

    observed = frequencies(draw(SamplingParams(seed=2), logits), logits.size)

    assert observed[favourites] == pytest.approx(softmax(logits)[favourites], abs=0.015)


def test_top_k_draws_exactly_the_k_most_likely_tokens():
    logits = language_model_logits(49152)
    top_five = set(np.argsort(-logits)[:5].tolist())

    drawn = set(draw(SamplingParams(temperature=3.0, top_k=5, seed=3), logits, 2000).tolist())

    assert drawn == top_five


def test_top_p_draws_exactly_the_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))

    drawn = set(draw(SamplingParams(top_p=0.75, seed=4), logits, 2000).tolist())

    assert drawn == {0, 1}


@pytest.mark.parametrize(
    "temperature, top_p",
    [(0.8, 0.9), (1.0, 0.95), (2.5, 0.5)],
    ids=["peaked", "broad", "flat-nucleus-of-thousands"],
)
def test_top_p_never_draws_outside_the_nucleus_of_a_large_vocabulary(temperature, top_p):
    logits = language_model_logits(49152, seed=5)
    nucleus = exact_nucleus(logits, temperature, top_p)

    drawn = set(draw(SamplingParams(temperature=temperature, top_p=top_p, seed=5), logits, 2000).tolist())

    assert drawn <= nucleus


def test_a_nucleus_of_thousands_ends_exactly_where_it_reaches_top_p():
    # 3000 plausible tokens, scattered: the nucleus is about 650 of them, and each token just
    # past its edge would be drawn about ten times in 20000 draws if it were let in.
    random = np.random.default_rng(13)
    logits = np.full(49152, -40.0, dtype=np.float32)
    logits[random.choice(49152, 3000, replace=False)] = np.linspace(0.0, -3.0, 3000, dtype=np.float32)
    nucleus = exact_nucleus(logits, 1.0, 0.5)

    drawn = set(draw(SamplingParams(top_p=0.5, seed=13), logits).tolist())

    assert drawn == nucleus


def test_top_p_applies_to_the_distribution_left_by_top_k():
    # After top_k=2 the favourite holds 0.4 / 0.7 = 0.57, which alone reaches top_p=0.5.
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32))

    drawn = set(draw(SamplingParams(top_k=2, top_p=0.5, seed=6), logits, 2000).tolist())

    assert drawn == {0}


def test_min_p_drops_tokens_below_the_share_of_the_most_likely():
    # Threshold 0.2 * 0.5 = 0.1: the token at 0.05 goes, the one at 0.15 stays.
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))

    drawn = set(draw(SamplingParams(min_p=0.2, seed=7), logits, 2000).tolist())

    assert drawn == {0, 1, 2}


def test_min_p_trims_what_top_p_kept():
    # top_p=0.9 keeps the three at 0.5, 0.3, 0.15; min_p=0.4 then drops those below 0.2.
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))

    drawn = set(draw(SamplingParams(top_p=0.9, min_p=0.4, seed=7), logits, 2000).tolist())

    assert drawn == {0, 1}


TOKEN, RIVAL, VOCAB = 3, 5, 8


def adjusted_logit(params: SamplingParams, raw: float, prompt: Sequence[int], generated: Sequence[int]) -> float:
    """The logit greedy decoding sees for TOKEN, found by moving a rival until greedy switches to it.

    Each probe is a fresh sampler that has been through the same prompt and generated tokens."""

    def greedy_choice(rival: float) -> int:
        sampler = Sampler(params, prompt)
        for token in generated:
            forcing = np.full(VOCAB, -100.0, dtype=np.float32)
            forcing[token] = 50.0
            assert sampler(forcing).token_id == token
        logits = np.full(VOCAB, -100.0, dtype=np.float32)
        logits[TOKEN], logits[RIVAL] = raw, rival
        return sampler(logits).token_id

    low, high = -20.0, 20.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if greedy_choice(middle) == TOKEN else (low, middle)
    return (low + high) / 2


@pytest.mark.parametrize(
    "params, raw, prompt, generated, expected",
    [
        (SamplingParams(presence_penalty=0.5), 2.0, [], [TOKEN, TOKEN], 2.0 - 0.5),
        (SamplingParams(frequency_penalty=0.25), 2.0, [], [TOKEN, TOKEN, TOKEN], 2.0 - 3 * 0.25),
        (SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), 2.0, [], [TOKEN, TOKEN], 2.0 - 0.5 - 2 * 0.25),
        (SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), 2.0, [TOKEN, TOKEN], [], 2.0),
        (SamplingParams(presence_penalty=-0.5), 2.0, [], [TOKEN], 2.0 + 0.5),
        (SamplingParams(repetition_penalty=1.25), 2.0, [TOKEN], [], 2.0 / 1.25),
        (SamplingParams(repetition_penalty=1.25), -2.0, [TOKEN], [], -2.0 * 1.25),
        (SamplingParams(repetition_penalty=1.25), 2.0, [], [TOKEN], 2.0 / 1.25),
        (SamplingParams(repetition_penalty=1.25), 2.0, [TOKEN, TOKEN], [TOKEN], 2.0 / 1.25),
        (SamplingParams(repetition_penalty=1.25), 2.0, [0, 2], [1], 2.0),
        (SamplingParams(repetition_penalty=2.0, presence_penalty=1.0), 3.0, [], [TOKEN], 3.0 / 2.0 - 1.0),
        (SamplingParams(logit_bias={TOKEN: 1.0}, repetition_penalty=2.0), 1.0, [TOKEN], [], (1.0 + 1.0) / 2.0),
    ],
    ids=[
        "presence-counts-a-generated-token-once",
        "frequency-counts-every-generated-occurrence",
        "presence-and-frequency-add-up",
        "presence-and-frequency-ignore-the-prompt",
        "negative-presence-encourages",
        "repetition-divides-a-positive-prompt-logit",
        "repetition-multiplies-a-negative-prompt-logit",
        "repetition-covers-generated-tokens",
        "repetition-applies-once-however-often-repeated",
        "repetition-leaves-unseen-tokens-alone",
        "repetition-comes-before-presence",
        "logit-bias-comes-before-repetition",
    ],
)
def test_penalties_change_the_logit_as_the_formula_says(params, raw, prompt, generated, expected):
    greedy = dataclasses.replace(params, temperature=0.0)

    assert adjusted_logit(greedy, raw, prompt, generated) == pytest.approx(expected, abs=1e-4)


def test_a_logit_bias_of_plus_100_forces_a_token():
    logits = language_model_logits(49152)
    least_likely = int(np.argmin(logits))

    drawn = set(draw(SamplingParams(logit_bias={least_likely: 100.0}, seed=8), logits, 200).tolist())

    assert drawn == {least_likely}


def test_a_logit_bias_of_minus_100_bans_a_token():
    logits = np.array([10.0, 0.0, 0.0], dtype=np.float32)

    drawn = set(draw(SamplingParams(logit_bias={0: -100.0}, seed=9), logits, 2000).tolist())

    assert 0 not in drawn


def test_a_logit_bias_outside_the_vocabulary_is_an_error():
    sampler = Sampler(SamplingParams(logit_bias={1000: 5.0}))

    with pytest.raises(ValueError, match="outside the vocabulary"):
        sampler(np.zeros(100, dtype=np.float32))


RAW_BUT_CHANGED = SamplingParams(
    temperature=0.5,
    top_k=40,
    logit_bias={11: 30.0},
    repetition_penalty=1.3,
    presence_penalty=1.0,
    logprobs=True,
    top_logprobs=5,
    seed=10,
)


def test_the_logprob_is_the_log_softmax_of_the_raw_logits():
    logits = language_model_logits(49152)

    sampled = Sampler(RAW_BUT_CHANGED, prompt_ids=[11, 12])(logits)

    assert sampled.logprob == pytest.approx(float(np.log(softmax(logits)[sampled.token_id])), abs=1e-5)


def test_top_logprobs_are_the_most_likely_raw_tokens_most_likely_first():
    logits = language_model_logits(49152)
    log_probabilities = np.log(softmax(logits))
    best = np.argsort(-logits)[:5]

    sampled = Sampler(RAW_BUT_CHANGED, prompt_ids=[11, 12])(logits)

    assert [(token, pytest.approx(value, abs=1e-5)) for token, value in sampled.top_logprobs] == [
        (int(token), log_probabilities[token]) for token in best
    ]


def test_logprobs_are_left_out_unless_asked():
    sampled = Sampler(SamplingParams(seed=11))(language_model_logits(1000))

    assert (sampled.logprob, sampled.top_logprobs) == (None, ())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.7, top_p=0.9, min_p=0.05, seed=12),
        SamplingParams(
            temperature=0.7,
            top_p=0.9,
            presence_penalty=0.5,
            frequency_penalty=0.5,
            repetition_penalty=1.2,
            logit_bias={3: 5.0},
            logprobs=True,
            top_logprobs=5,
            seed=12,
        ),
        RAW_BUT_CHANGED,
    ],
    ids=["greedy", "truncated", "all-penalties-and-logprobs", "top-k-with-penalties"],
)
def test_the_callers_logits_are_not_modified(params):
    logits = language_model_logits(49152)
    original = logits.copy()
    sampler = Sampler(params, prompt_ids=[1, 2, 3])

    for _ in range(5):
        sampler(logits)

    assert np.array_equal(logits, original)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": -0.1},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 2.0},
        {"repetition_penalty": 0.0},
        {"logprobs": True, "top_logprobs": 21},
        {"top_logprobs": 3},
        {"logit_bias": {-1: 1.0}},
    ],
    ids=str,
)
def test_impossible_settings_are_rejected(settings):
    with pytest.raises(ValueError):
        SamplingParams(**settings)
