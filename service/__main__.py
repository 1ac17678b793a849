"""python -m service: serve models over the OpenAI-compatible API with Hypercorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config

from service import SERVICE_VERSION
from service.app import create_app
from service.logs import configure_logging
from service.settings import ModelSpec, Settings, embedded_default_model

log = logging.getLogger("service")

DATA_DIR_VARIABLE = "LLM_DATA_DIR"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description="OpenAI-compatible LLM inference service.")
    parser.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port to listen on (default {defaults.port})")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[ID=]PATH",
        help="a converted model folder, a GGUF file or a Hugging Face checkpoint folder (converted on "
        "first use and cached); repeatable; default: the embedded SmolLM2-135M-Instruct",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=defaults.models_dir, help="cache of converted models (default ./models)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get(DATA_DIR_VARIABLE) or defaults.data_dir),
        help=f"where the sessions database lives (default ${DATA_DIR_VARIABLE}, else ./{defaults.data_dir})",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=defaults.device, help="default auto: CUDA when usable")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument(
        "--max-context",
        type=int,
        default=defaults.max_context,
        help=f"KV cache tokens per sequence: the longest prompt plus completion (default {defaults.max_context})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help=f"sequences decoded together per model (continuous batching) (default {defaults.max_batch})",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=defaults.max_waiting,
        help=f"requests that may queue for a slot; more get 429 (default {defaults.max_waiting})",
    )
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=defaults.queue_timeout,
        help=f"seconds a request may wait for a slot before a 503 (default {defaults.queue_timeout:g})",
    )
    parser.add_argument(
        "--activations",
        choices=("int8", "fp32"),
        default=defaults.activations,
        help="how models the service converts treat activations in quantized matmuls: int8 blocks, as llama.cpp "
        "does (fast, batches well), or fp32 (reproduces transformers exactly; slow for batches) "
        f"(default {defaults.activations}; folders converted already keep theirs)",
    )
    parser.add_argument(
        "--memory-budget-mb",
        type=int,
        default=defaults.memory_budget_mb,
        help="megabytes all loaded models may take, weights plus full KV caches; a load past it fails "
        "with the reason (default: no limit)",
    )
    parser.add_argument(
        "--sse-keepalive",
        type=float,
        default=defaults.sse_keepalive,
        help=f"seconds of silence after which a stream gets an SSE keep-alive comment (default {defaults.sse_keepalive:g})",
    )
    parser.add_argument(
        "--cors-origin", action="append", default=[], help="a browser origin allowed to call the API (repeatable); "
        "loopback origins are always allowed",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--version", action="version", version=f"service {SERVICE_VERSION}")
    return parser.parse_args(argv)


def settings_from(arguments: argparse.Namespace) -> Settings:
    models = tuple(ModelSpec.parse(text) for text in arguments.model) or (embedded_default_model(),)
    return Settings(
        host=arguments.host,
        port=arguments.port,
        models=models,
        models_dir=arguments.models_dir,
        data_dir=arguments.data_dir,
        device=arguments.device,
        threads=arguments.threads,
        max_context=arguments.max_context,
        max_batch=arguments.max_batch,
        max_waiting=arguments.max_waiting,
        queue_timeout=arguments.queue_timeout,
        memory_budget_mb=arguments.memory_budget_mb,
        activations=arguments.activations,
        sse_keepalive=arguments.sse_keepalive,
        cors_origins=tuple(arguments.cors_origin),
    )


async def _serve(settings: Settings) -> None:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, shutdown.set)
    log.info("listening", extra={"url": f"http://{settings.host}:{settings.port}"})
    await serve(create_app(settings), config, shutdown_trigger=shutdown.wait)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging(arguments.log_level)
    try:
        settings = settings_from(arguments)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
