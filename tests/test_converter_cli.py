"""`python -m converter` as a user runs it: clear errors, nothing half-written, same bytes twice."""

from __future__ import annotations

import subprocess
import sys

import gguf

from tests.support import REPO


def run_converter(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "converter", *map(str, arguments)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"PK\x03\x04 definitely a zip file")
    result = run_converter(source, "--out", tmp_path / "out")
    assert result.returncode == 2 and "wrong magic" in result.stderr and not (tmp_path / "out").exists()


def test_a_truncated_gguf_is_refused_and_leaves_nothing(smollm2_gguf, tmp_path):
    source = tmp_path / "truncated.gguf"
    source.write_bytes(smollm2_gguf.read_bytes()[: 5_000_000])
    result = run_converter(source, "--out", tmp_path / "out")
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr
    assert list(tmp_path.iterdir()) == [source]


def test_an_unsupported_architecture_is_named(tmp_path):
    source = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(source), "mamba")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run_converter(source, "--out", tmp_path / "out")
    assert result.returncode == 2 and "architecture 'mamba' is not supported" in result.stderr


def test_a_folder_without_config_json_is_refused(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    result = run_converter(tmp_path / "checkpoint", "--out", tmp_path / "out")
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_an_existing_output_is_kept_unless_forced(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = run_converter(tiny_checkpoint, "--out", out)
    forced = run_converter(tiny_checkpoint, "--out", out, "--force")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert forced.returncode == 0 and (out / "manifest.json").is_file() and not (out / "keep.txt").exists()


def test_the_same_source_converts_to_the_same_bytes(tiny_checkpoint, tmp_path):
    first = run_converter(tiny_checkpoint, "--out", tmp_path / "first", "--quant", "int8")
    second = run_converter(tiny_checkpoint, "--out", tmp_path / "second", "--quant", "int8")
    assert first.returncode == second.returncode == 0
    for name in ("model.onnx", "tokenizer.json", "generation.json", "manifest.json", "chat_template.jinja"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_q4_1_refuses_a_block_size_it_cannot_write(tiny_checkpoint, tmp_path):
    result = run_converter(tiny_checkpoint, "--out", tmp_path / "out", "--quant", "int4", "--block-size", "64")
    assert result.returncode == 2 and "q4_1 algorithm uses blocks of 32" in result.stderr


def test_the_optimum_backend_refuses_the_converters_own_int4(tiny_checkpoint, tmp_path):
    result = run_converter(
        tiny_checkpoint, "--out", tmp_path / "out", "--backend", "optimum", "--quant", "int4", "--algorithm", "q4_1"
    )
    assert result.returncode == 2 and "not one of rtn, k_quant, hqq" in result.stderr


def test_a_config_without_a_required_key_names_it(tmp_path):
    checkpoint = tmp_path / "gemma"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "gemma3_text", "num_attention_heads": 4, "hidden_size": 64}')
    (checkpoint / "tokenizer.json").write_text("{}")
    result = run_converter(checkpoint, "--out", tmp_path / "out")
    assert result.returncode == 2 and "config.json has no vocab_size" in result.stderr


def test_an_unsupported_rope_scaling_is_named(tmp_path):
    checkpoint = tmp_path / "llama"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4}}')
    (checkpoint / "tokenizer.json").write_text("{}")
    result = run_converter(checkpoint, "--out", tmp_path / "out")
    assert result.returncode == 2 and "rope_scaling" in result.stderr and "yarn" in result.stderr
