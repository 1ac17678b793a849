"""The config file: every option documented, precedence file < environment < flag, errors naming the key."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from converter.__main__ import build_parser as converter_parser
from service.__main__ import build_parser as service_parser
from service.__main__ import keys_parser, parse_arguments, settings_from
from service.chat_client import build_parser as chat_parser
from service.options import (
    EXAMPLE_PATH,
    OPTIONS,
    REFERENCE_PATH,
    ConfigError,
    example_toml,
    load_config_file,
    reference_in,
    reference_markdown,
)
from service.settings import ModelSpec
from tests.support import REPO, ServiceProcess

PRODUCTION_EXAMPLE = REPO / "deploy" / "config.production.toml"


def write(folder: Path, text: str) -> Path:
    path = folder / "service.toml"
    path.write_text(text, encoding="utf-8")
    return path


def settings_for(argv: list[str], environment: dict[str, str] | None = None):
    settings, _ = settings_from(parse_arguments(["--model", "/models/x.gguf", *argv]), environment or {})
    return settings


def test_the_example_is_generated_from_the_option_table():
    assert EXAMPLE_PATH.read_text(encoding="utf-8") == example_toml(), "run `python -m service.options`"


def test_the_configuration_reference_is_current():
    assert reference_in(REFERENCE_PATH.read_text(encoding="utf-8")) == reference_markdown(), "run `python -m service.options`"


def test_the_example_sets_every_key_to_its_default():
    values = load_config_file(EXAMPLE_PATH)
    for option in OPTIONS:
        if option.optional and option.default is None:
            assert f"# {option.key} = " in EXAMPLE_PATH.read_text(), option.key
            continue
        expected = option.default
        if isinstance(expected, Path):
            expected = EXAMPLE_PATH.parent / expected
        assert values[option.key] == expected, option.key


def test_the_production_example_is_valid_and_safe():
    values = load_config_file(PRODUCTION_EXAMPLE)
    assert values["host"] == "0.0.0.0"
    assert not values.get("allow_unauthenticated", False), "a production example must require API keys"
    assert values["max_prompt_tokens"] > 0 and values["max_completion_tokens"] > 0 and values["max_messages"] > 0


def test_the_production_example_loads_its_model_within_its_memory_budget(smollm2_gguf, artifacts):
    # Its [engine] settings on the model it names (the embedded GGUF): at a budget of 1536 MB the
    # model never loaded, its KV cache for 8 slots of 4096 tokens alone counting 1440 MB.
    values = load_config_file(PRODUCTION_EXAMPLE)
    engine = [f"--{key.replace('_', '-')}={values[key]}" for key in ("max_context", "max_batch", "activations", "memory_budget_mb", "threads")]
    server = ServiceProcess(
        "--model", f"production={smollm2_gguf}", "--models-dir", str(REPO / "models"), *engine,
        log_path=artifacts / "production_budget_server.log",
    )  # waits until the model is ready, and fails if it failed to load
    try:
        model = httpx.get(f"{server.url}/v1/models/production", timeout=10).json()
    finally:
        server.stop()

    counted = model["memory_bytes"]["loaded"] + model["memory_bytes"]["kv_cache_max"]
    assert model["status"] == "ready" and counted <= values["memory_budget_mb"] * 2**20, model


def test_every_option_has_a_flag_in_help():
    result = subprocess.run([sys.executable, "-m", "service", "--help"], capture_output=True, text=True, cwd=REPO, check=True)
    for option in OPTIONS:
        assert option.flag in result.stdout, option.flag
    assert "--config" in result.stdout and "--model" in result.stdout


def test_the_file_sets_values_and_flags_override_it(tmp_path):
    config = write(tmp_path, "[engine]\nmax_batch = 3\nqueue_timeout = 5\n[server]\nport = 9001\n")
    from_file = settings_for(["--config", str(config)])
    assert (from_file.max_batch, from_file.queue_timeout, from_file.port) == (3, 5.0, 9001)
    overridden = settings_for(["--config", str(config), "--max-batch", "5"])
    assert (overridden.max_batch, overridden.port) == (5, 9001)


def test_the_environment_overrides_the_file_and_flags_override_the_environment(tmp_path):
    config = write(tmp_path, '[storage]\ndatabase_url = "postgresql://file/db"\n')
    environment = {"LLM_DATABASE_URL": "postgresql://environment/db"}
    assert settings_for(["--config", str(config)], environment).database_url == "postgresql://environment/db"
    flagged = settings_for(["--config", str(config), "--database-url", "postgresql://flag/db"], environment)
    assert flagged.database_url == "postgresql://flag/db"


def test_llm_config_names_the_file(tmp_path):
    config = write(tmp_path, "[limits]\nmax_messages = 7\n")
    assert settings_for([], {"LLM_CONFIG": str(config)}).max_messages == 7


def test_relative_paths_are_relative_to_the_file(tmp_path):
    config = write(tmp_path, '[storage]\nmodels_dir = "cache"\n[[model]]\nid = "mine"\npath = "weights/m.gguf"\n')
    settings, _ = settings_from(parse_arguments(["--config", str(config)]), {})
    assert settings.models_dir == tmp_path / "cache"
    assert settings.models == (ModelSpec(tmp_path / "weights" / "m.gguf", "mine"),)


def test_model_flags_replace_the_files_models(tmp_path):
    config = write(tmp_path, '[[model]]\npath = "/models/a.gguf"\n')
    assert settings_for(["--config", str(config)]).models == (ModelSpec(Path("/models/x.gguf")),)


def test_booleans_can_be_turned_off_on_the_command_line(tmp_path):
    config = write(tmp_path, "[security]\nmetrics_public = true\n")
    assert settings_for(["--config", str(config)]).metrics_public is True
    assert settings_for(["--config", str(config), "--no-metrics-public"]).metrics_public is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[engine]\nmax_bach = 3\n", "[engine]: unknown key max_bach (did you mean max_batch?)"),
        ("[engin]\nmax_batch = 3\n", "unknown table engin (did you mean engine?)"),
        ("[server]\nmax_batch = 3\n", "[server] max_batch belongs in [engine]"),
        ('[engine]\nmax_batch = "eight"\n', "[engine]: max_batch must be an integer, got 'eight'"),
        ("[engine]\nmax_batch = 0\n", "[engine]: max_batch must be at least 1, got 0"),
        ("[server]\nport = 70000\n", "[server]: port must be at most 65535, got 70000"),
        ('[engine]\ndevice = "tpu"\n', "[engine]: device must be one of auto, cpu, cuda, got 'tpu'"),
        ("[security]\nmetrics_public = 1\n", "[security]: metrics_public must be true or false, got 1"),
        ('[security]\napi_keys = "k1"\n', "[security]: api_keys must be a list of strings, got 'k1'"),
        ("engine = 3\n", "engine must be a table"),
        ("[[model]]\nid = \"x\"\n", "[[model]] number 1: path is required"),
        ("[[model]]\npath = \"a\"\nname = \"x\"\n", "[[model]] number 1: unknown key name"),
        ("[engine\nmax_batch = 3\n", "not valid TOML"),
    ],
)
def test_mistakes_name_the_file_and_the_key(tmp_path, text, message):
    config = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config_file(config)
    assert str(config) in str(error.value)
    assert message in str(error.value)


def test_the_command_line_reports_a_bad_file_without_a_traceback(tmp_path):
    config = write(tmp_path, "[engine]\nmax_batch = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(config)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {config}: [engine]: max_batch must be at least 1, got -1"


def test_a_missing_file_is_named(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "--config", str(tmp_path / "nope.toml")], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 2 and f"config file {tmp_path / 'nope.toml'} not found" in result.stderr


def test_a_flag_out_of_range_is_refused():
    result = subprocess.run([sys.executable, "-m", "service", "--max-batch", "0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "--max-batch: must be at least 1, got 0" in result.stderr


def test_a_server_runs_from_a_config_file(tiny_model_dir, tmp_path, artifacts):
    config = write(
        tmp_path,
        f'[[model]]\nid = "from-config"\npath = "{tiny_model_dir}"\n'
        f'[storage]\nmodels_dir = "models"\ndata_dir = "data"\n'
        "[engine]\nmax_context = 256\n[limits]\nmax_messages = 2\n",
    )
    server = ServiceProcess("--config", str(config), log_path=artifacts / "configured_server.log")
    try:
        assert [model["id"] for model in httpx.get(server.url + "/v1/models").json()["data"]] == ["from-config"]
        messages = [{"role": "user", "content": "hi"}] * 3
        response = httpx.post(server.url + "/v1/chat/completions", json={"max_tokens": 16, "seed": 1, "model": "from-config", "messages": messages})
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    finally:
        server.stop()


def documented_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from ((f"{name} {flag}", help_text) for flag, help_text in documented_actions(subparser))
            continue
        yield (action.option_strings or [action.dest])[0], action.help


@pytest.mark.parametrize(
    "parser", [service_parser(), keys_parser(), chat_parser(), converter_parser()], ids=["service", "keys", "chat", "converter"]
)
def test_every_flag_of_every_command_line_has_help(parser):
    undocumented = [flag for flag, help_text in documented_actions(parser) if not help_text or help_text == argparse.SUPPRESS]
    assert undocumented == []


def test_keys_are_created_where_the_config_file_says(tmp_path):
    config = write(tmp_path, '[storage]\ndata_dir = "state"\n')
    result = subprocess.run(
        [sys.executable, "-m", "service", "keys", "--config", str(config), "create", "--name", "ops"],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, "LLM_DATA_DIR": ""},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "state" / "keys.json").exists()
