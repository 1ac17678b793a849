"""The CUDA target (`--device cuda`): a float16 graph with sampling candidates, tested on the CPU
provider against float32 references, and on a GPU where one answers (marked `cuda`)."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType

from converter.cache import cached_conversion
from converter.convert import ConversionOptions, convert
from converter.weights import BlockQuantizedWeight, gather_layout_for_cuda
from service.engine.batch_runner import BatchRunner, ModelShape
from service.engine.candidates import CandidateRow
from service.engine.decode_loop import Generator
from service.engine.engine import Engine, EngineLimits, GenerationRequest, TextDelta
from service.engine.model_folder import ModelFolder
from service.engine.runtime import CPU, CUDA, choose_placement, create_session, cuda_device_count, node_placements, parse_node_placements
from service.engine.sampler import Sampler, SamplingParams
from tests.scoring import PARITY_TEXT, perplexity
from tests.side_by_side import PROMPT, greedy_side_by_side, load_reference, onnx_generator
from tests.support import REPO
from tests.test_parity import GGUF_READER_OVERRIDES
from tests.tiny_models import ARCHITECTURES, write_gguf_from_checkpoint, write_tiny_checkpoint

GPU_PRESENT = CUDA in ort.get_available_providers() and cuda_device_count() > 0
cuda = pytest.mark.skipif(not GPU_PRESENT, reason="no CUDA device answers here")

# float16 matmuls and attention against float32: the tiny models' logits are about 1 in size.
TINY_LOGIT_TOLERANCE = 0.06


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp(request.param) / request.param, request.param)


@pytest.mark.parametrize(
    "matrix_type, table_type",
    [
        (None, None),
        (GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_0),
        (GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q8_0),
    ],
    ids=["f32", "q4_0", "q4_1-q8_0"],
)
def test_cuda_target_graph_follows_transformers_on_the_same_gguf(checkpoint, tmp_path, matrix_type, table_type):
    gguf_path = write_gguf_from_checkpoint(checkpoint, tmp_path / "tiny.gguf", matrix_type, table_type)
    out = convert(gguf_path, tmp_path / "converted", ConversionOptions(device="cuda"))
    architecture = ModelFolder.load(out).config["architecture"]
    model = load_reference(tmp_path, gguf_file="tiny.gguf", **GGUF_READER_OVERRIDES.get(architecture, {}))
    folder, generator = onnx_generator(out)

    worst, ours, reference = greedy_side_by_side(model, generator, folder.encode(PROMPT))

    # Random tiny models have near ties, which float16 may break the other way: one step in 32
    # may differ (teacher forcing keeps the steps after it comparable).
    differing = sum(mine != theirs for mine, theirs in zip(ours, reference, strict=True))
    assert worst < TINY_LOGIT_TOLERANCE and differing <= 1, f"max |logit diff| {worst}, {differing} tokens differ"


def test_cuda_target_folder_says_what_it_was_built_for(tiny_checkpoint, tmp_path):
    folder = ModelFolder.load(convert(tiny_checkpoint, tmp_path / "cuda", ConversionOptions(device="cuda")))
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=1)

    assert folder.manifest["target"] == {"device": "cuda", "compute": "float16", "sampling_candidates": 64}
    assert folder.manifest["quantization"]["activation_precision"] == "fp16"
    assert {value.name: value.type for value in session.get_inputs()}["past_key_values.0.key"] == "tensor(float16)"


def test_cuda_target_refuses_cpu_activation_precisions(tiny_checkpoint, tmp_path):
    from converter.errors import ConversionError

    with pytest.raises(ConversionError, match="cuda target offers"):
        convert(tiny_checkpoint, tmp_path / "cuda", ConversionOptions(device="cuda", activations="int8"))


def test_embedding_blocks_with_zero_points_widen_to_bytes_exactly():
    random = np.random.default_rng(0)
    levels = random.integers(0, 16, size=(6, 4, 32), dtype=np.uint8)
    weight = BlockQuantizedWeight(
        packed=levels[..., 0::2] | (levels[..., 1::2] << 4),
        scales=random.random((6, 4), dtype=np.float32),
        zero_points=np.full((6, 4), 8, dtype=np.uint8),
        bits=4,
        block_size=32,
        in_features=128,
        source_type="Q4_0",
    )
    without_zero_points = BlockQuantizedWeight(weight.packed, weight.scales, weight.zero_points * 0, 4, 32, 128, "Q4_1")

    widened = gather_layout_for_cuda(weight)

    assert widened.bits == 8 and np.array_equal(widened.dequantize(), weight.dequantize())
    assert gather_layout_for_cuda(without_zero_points) is without_zero_points


# The real models: the CUDA target against the float32 graph of the same file.


def _prompt_logits(folder: ModelFolder, ids: list[int]) -> np.ndarray:
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    return Generator(session, ModelShape.from_config(folder.config), capacity=len(ids)).prompt_logits(ids)


@pytest.fixture(scope="module", params=["smollm2_gguf", "gemma3_gguf_path"])
def real_side_by_side(request):
    """(CUDA-target logits, float32 reference logits, ids) over PARITY_TEXT, both on the CPU provider."""
    source = request.getfixturevalue(request.param)
    reference = ModelFolder.load(cached_conversion(source, REPO / "models", ConversionOptions(activations="fp32")))
    target = ModelFolder.load(cached_conversion(source, REPO / "models", ConversionOptions(device="cuda")))
    ids = reference.encode(PARITY_TEXT)
    return _prompt_logits(target, ids), _prompt_logits(reference, ids), ids


@pytest.mark.slow
def test_cuda_target_top1_agrees_with_the_float32_reference(real_side_by_side):
    ours, reference, _ = real_side_by_side

    agreement = float((ours.argmax(-1) == reference.argmax(-1)).mean())

    assert agreement >= 0.99, f"top-1 agreement {agreement:.4f}"


@pytest.mark.slow
def test_cuda_target_perplexity_within_one_percent_of_the_float32_reference(real_side_by_side):
    ours, reference, ids = real_side_by_side

    ratio = perplexity(ours, ids) / perplexity(reference, ids)

    assert abs(ratio - 1) < 0.01, f"perplexity {perplexity(ours, ids):.4f} vs {perplexity(reference, ids):.4f}"


# Sampling from candidates: the same distribution as sampling from the whole row.

VOCABULARY = 2000


def _row(logits: np.ndarray, temperature: float, fetched: list[int]) -> CandidateRow:
    """What a graph with 64 candidates reports for `logits`; `fetched` counts downloads."""
    order = np.argsort(-logits, kind="stable")[:64]
    scaled = logits.astype(np.float64) / temperature
    normalizer = float(np.log(np.exp(scaled - scaled.max()).sum()) + scaled.max())

    def fetch() -> np.ndarray:
        fetched.append(1)
        return logits

    return CandidateRow(order, logits[order], normalizer, temperature, fetch)


def _frequencies(params: SamplingParams, logits: np.ndarray, draws: int) -> tuple[np.ndarray, int]:
    sampler = Sampler(params)
    fetched: list[int] = []
    counts = np.zeros(logits.size)
    for _ in range(draws):
        counts[sampler(_row(logits, params.temperature or 1.0, fetched)).token_id] += 1
    return counts / draws, len(fetched)


def _probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    return weights / weights.sum()


def _peaked_logits(seed: int = 0) -> np.ndarray:
    """A next-token distribution like a small model's: a few likely tokens, a long thin tail."""
    random = np.random.default_rng(seed)
    logits = random.normal(0, 1.5, VOCABULARY).astype(np.float32)
    logits[random.choice(VOCABULARY, 8, replace=False)] += 7
    return logits


def test_greedy_from_candidates_is_the_argmax_without_a_download():
    logits = _peaked_logits()

    frequencies, fetched = _frequencies(SamplingParams(temperature=0), logits, 5)

    assert frequencies[int(logits.argmax())] == 1.0 and fetched == 0


def test_top_k_from_candidates_draws_the_renormalized_distribution_without_a_download():
    logits = _peaked_logits()
    top = np.argsort(-logits)[:5]
    expected = np.zeros(VOCABULARY)
    expected[top] = _probabilities(logits[top], 0.8)

    frequencies, fetched = _frequencies(SamplingParams(temperature=0.8, top_k=5, seed=1), logits, 20000)

    assert fetched == 0 and np.abs(frequencies - expected).max() < 0.015


def test_a_plain_draw_downloads_the_row_only_when_it_lands_beyond_the_candidates():
    logits = _peaked_logits()
    expected = _probabilities(logits, 1.0)
    candidates = np.argsort(-logits)[:64]
    tail_mass = 1.0 - expected[candidates].sum()

    frequencies, fetched = _frequencies(SamplingParams(temperature=1.0, seed=2), logits, 20000)

    tail = np.ones(VOCABULARY, dtype=bool)
    tail[candidates] = False
    assert np.abs(frequencies[candidates] - expected[candidates]).max() < 0.015
    assert abs(frequencies[tail].sum() - tail_mass) < 0.01 and fetched == pytest.approx(20000 * tail_mass, rel=0.2)


def test_a_nucleus_wider_than_the_candidates_reads_the_whole_row():
    logits = np.random.default_rng(3).normal(0, 0.1, VOCABULARY).astype(np.float32)  # nearly flat

    frequencies, fetched = _frequencies(SamplingParams(temperature=1.0, top_p=0.9, seed=3), logits, 200)

    assert fetched == 200 and np.count_nonzero(frequencies) > 64


def test_logprobs_come_from_the_whole_row():
    logits = _peaked_logits()
    fetched: list[int] = []

    sampled = Sampler(SamplingParams(temperature=0, logprobs=True, top_logprobs=2))(_row(logits, 1.0, fetched))

    assert fetched == [1] and sampled.logprob == pytest.approx(float(np.log(_probabilities(logits, 1.0).max())), abs=1e-5)


# The engine over a CUDA-target folder, on the CPU provider.


@pytest.fixture(scope="module")
def smollm2_cuda_folder(smollm2_gguf) -> ModelFolder:
    return ModelFolder.load(cached_conversion(smollm2_gguf, REPO / "models", ConversionOptions(device="cuda")))


async def _answer(engine: Engine, request: GenerationRequest) -> list[int]:
    return [event.token.token_id async for event in engine.submit(request).events() if isinstance(event, TextDelta)]


async def _answers(engine: Engine, requests: list[GenerationRequest]) -> list[list[int]]:
    return list(await asyncio.gather(*(_answer(engine, request) for request in requests)))


@pytest.mark.slow
def test_engine_answers_from_candidates_as_the_full_logits_do(smollm2_cuda_folder):
    folder = smollm2_cuda_folder
    prompts = [folder.encode(text) for text in ("The capital of France is", "def add(a, b):", "Once upon a time")]
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=2)
    generator = Generator(session, ModelShape.from_config(folder.config), capacity=256)
    greedy = Sampler(SamplingParams(temperature=0))
    expected = [list(generator.generate(prompt, 12, greedy, set())) for prompt in prompts]
    engine = Engine(folder, choose_placement("cpu"), 256, threads=2, limits=EngineLimits(slots=4))
    try:
        requests = [GenerationRequest(prompt, 12, SamplingParams(temperature=0), ignore_eos=True) for prompt in prompts]
        answers = asyncio.run(_answers(engine, requests))
        seeded = GenerationRequest(prompts[0], 12, SamplingParams(temperature=0.9, top_p=0.95, seed=7), ignore_eos=True)
        first, second = (asyncio.run(_answer(engine, seeded)) for _ in range(2))
    finally:
        engine.close()

    assert answers == expected
    assert first == second and len(first) == 12


def test_node_placements_read_ort_verbose_log():
    log = "\n".join(
        [
            "2026-11-29 [V:onnxruntime:, session_state.cc:1578 VerifyEachNodeIsAssignedToAnEp] Node placements",
            "2026-11-29 [V:onnxruntime:, session_state.cc:1581 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 40",
            "2026-11-29 [V:onnxruntime:, session_state.cc:1591 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 2",
            "2026-11-29 [V:onnxruntime:, session_state.cc:1593 VerifyEachNodeIsAssignedToAnEp]   GroupQueryAttention (model.layers.0.self_attn.attention)",
            "2026-11-29 [V:onnxruntime:, session_state.cc:1593 VerifyEachNodeIsAssignedToAnEp]   Neg (logits/pending/starts)",
            "2026-11-29 [V:onnxruntime:, session_state.cc:193 CreateGraphInfo] SaveMLValueNameIndexMapping",
        ]
    )

    placements = parse_node_placements(log)

    assert placements["CUDAExecutionProvider"].count == 40
    assert placements[CPU].names == ["GroupQueryAttention (model.layers.0.self_attn.attention)", "Neg (logits/pending/starts)"]


def test_node_placements_of_a_real_session(tiny_model_dir):
    placements = node_placements(tiny_model_dir / "model.onnx", choose_placement("cpu"), threads=1)

    assert list(placements) == [CPU] and placements[CPU].count > 10


# On a GPU.


@cuda
@pytest.mark.slow
def test_cuda_target_runs_every_node_on_the_gpu(smollm2_cuda_folder):
    placements = node_placements(smollm2_cuda_folder.path / "model.onnx", choose_placement("cuda"))

    assert CPU not in placements, placements.get(CPU)


@cuda
@pytest.mark.slow
def test_a_cpu_target_graph_is_refused_on_cuda_naming_its_nodes(smollm2_model_dir):
    with pytest.raises(RuntimeError, match="GroupQueryAttention"):
        create_session(smollm2_model_dir / "model.onnx", choose_placement("cuda"))


@cuda
@pytest.mark.slow
def test_cuda_answers_equal_the_cpu_providers_on_the_same_folder(smollm2_cuda_folder):
    folder = smollm2_cuda_folder
    prompts = [folder.encode(text) for text in ("The capital of France is", "def add(a, b):", "Once upon a time")]
    requests = [GenerationRequest(prompt, 16, SamplingParams(temperature=0), ignore_eos=True) for prompt in prompts]
    answers = {}
    for device in ("cpu", "cuda"):
        engine = Engine(folder, choose_placement(device), 256, threads=2, limits=EngineLimits(slots=4))
        try:
            answers[device] = asyncio.run(_answers(engine, requests))
        finally:
            engine.close()

    assert answers["cuda"] == answers["cpu"]


@cuda
def test_slot_moves_on_the_gpu_equal_numpy_moves():
    from service.engine.kv_cache import SlotCache

    device, host = SlotCache(2, 3, 8, 16, slots=3, device="cuda", dtype=np.float16), {}
    random = np.random.default_rng(0)
    for key, value in device._values.items():
        host[key] = random.normal(size=(3, 3, 16, 8)).astype(np.float16)
        value.update_inplace(host[key])

    device.swap_prefixes(0, 5, 2, 9)
    device.copy_prefix(2, 1, 4)

    for key, values in host.items():
        kept = values[0, :, :5].copy()
        values[0, :, :9] = values[2, :, :9]
        values[2, :, :5] = kept
        values[1, :, :4] = values[2, :, :4]
        assert np.array_equal(device._values[key].numpy(), values)


def test_device_bound_steps_compute_what_host_buffers_do(tiny_checkpoint, tmp_path):
    """The GPU's binding (OrtValues bound once per row count, candidates downloaded, logits
    fetched on demand) run on the CPU against the CPU's numpy binding."""
    folder = ModelFolder.load(convert(tiny_checkpoint, tmp_path / "cuda", ConversionOptions(device="cuda")))
    session = create_session(folder.path / "model.onnx", choose_placement("cpu"), threads=1)
    prompt = folder.encode(PROMPT)
    results = {}
    for host_buffers in (True, False):
        runner = BatchRunner(session, ModelShape.from_config(folder.config), 64, 3)
        runner.host_buffers = host_buffers

        def taken(rows: list[CandidateRow]) -> list[tuple]:  # a row's logits last until the next step
            return [(row.ids.copy(), row.logits.copy(), row.log_normalizer, row.full_logits().copy()) for row in rows]

        first = taken([runner.prefill(0, prompt[:-2], 0)])
        runner.prefill(1, prompt[:-3], 0)
        results[host_buffers] = first + taken(runner.decode([prompt[-2], prompt[-3]], [len(prompt) - 2, len(prompt) - 3], [0.7, 0.0]))

    for (host_ids, host_logits, host_normalizer, host_full), (ids, logits, normalizer, full) in zip(results[True], results[False], strict=True):
        assert np.array_equal(ids, host_ids) and np.array_equal(logits, host_logits)
        assert normalizer == host_normalizer and np.array_equal(full, host_full)


@cuda
@pytest.mark.slow
def test_gpu_decode_steps_batch_rows_and_keep_seeded_answers(smollm2_cuda_folder):
    folder = smollm2_cuda_folder
    prompts = [folder.encode(text) for text in ("Once upon a time", "The capital of France is", "def add(a, b):", "Water boils at")]
    seeded = GenerationRequest(prompts[0], 24, SamplingParams(temperature=0.9, seed=11), ignore_eos=True)
    others = [GenerationRequest(prompt, 24, SamplingParams(temperature=0.9, seed=index), ignore_eos=True) for index, prompt in enumerate(prompts[1:])]
    engine = Engine(folder, choose_placement("cuda"), 256, limits=EngineLimits(slots=8))
    try:
        alone = asyncio.run(_answer(engine, seeded))
        beside = asyncio.run(_answers(engine, [seeded, *others]))[0]
    finally:
        engine.close()

    assert engine._fewest_rows is not None, "rows run one at a time: batching is lost on the GPU"
    assert beside == alone
