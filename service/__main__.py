"""python -m service: serve models over the OpenAI-compatible API with Hypercorn."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config

from service import SERVICE_VERSION
from service.app import create_app
from service.auth import KeyFile, KeyRing
from service.logs import configure_logging
from service.routes.health import drain
from service.settings import ModelSpec, Settings, embedded_default_model

log = logging.getLogger("service")

DATA_DIR_VARIABLE = "LLM_DATA_DIR"
API_KEYS_VARIABLE = "LLM_API_KEYS"
DATABASE_URL_VARIABLE = "LLM_DATABASE_URL"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="python -m service", description="OpenAI-compatible LLM inference service. Also: `python -m service keys --help` (API keys) and `python -m service chat --help` (a terminal chat client).")
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
        help=f"where the sessions database, API keys and the models registered through the API live (default ${DATA_DIR_VARIABLE}, else ./{defaults.data_dir})",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_VARIABLE) or None,
        metavar="URL",
        help=f"PostgreSQL URL (postgresql://user:password@host:5432/db) for sessions and the model registry, shared by replicas (default ${DATABASE_URL_VARIABLE}; unset: SQLite files in the data dir)",
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
    security = parser.add_argument_group("security (docs/operations.md#security)")
    security.add_argument(
        "--keys-file", type=Path, default=None, help="API keys made by `python -m service keys` (default DATA_DIR/keys.json)"
    )
    security.add_argument("--api-key", action="append", default=[], metavar="KEY", help=f"an accepted API key (repeatable; also ${API_KEYS_VARIABLE}, comma-separated)")
    security.add_argument("--admin-key", action="append", default=[], metavar="KEY", help="an accepted API key that may also change the model registry (repeatable)")
    security.add_argument(
        "--allow-unauthenticated", action="store_true", help="serve beyond loopback with no API keys configured (anyone may call)"
    )
    security.add_argument("--metrics-public", action="store_true", help="serve /metrics without an API key")
    security.add_argument(
        "--max-body-bytes", type=int, default=defaults.max_body_bytes, help=f"largest request body (default {defaults.max_body_bytes}; 0: no limit)"
    )
    security.add_argument("--max-prompt-tokens", type=int, default=0, help="longest prompt in tokens (default: the context)")
    security.add_argument("--max-completion-tokens", type=int, default=0, help="largest max_tokens accepted (default: the context)")
    security.add_argument("--max-messages", type=int, default=0, help="most messages in one chat request (default: no limit)")
    observability = parser.add_argument_group("observability (docs/operations.md)")
    observability.add_argument(
        "--otlp-endpoint", default=None, metavar="URL",
        help="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (default $OTEL_EXPORTER_OTLP_ENDPOINT; unset: no traces)",
    )
    observability.add_argument(
        "--drain-seconds", type=float, default=defaults.drain_seconds,
        help=f"on SIGTERM, seconds accepted generation requests may take to finish (default {defaults.drain_seconds:g})",
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
        database_url=arguments.database_url,
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
        keys_file=arguments.keys_file,
        api_keys=tuple(arguments.api_key) + tuple(key.strip() for key in os.environ.get(API_KEYS_VARIABLE, "").split(",") if key.strip()),
        admin_keys=tuple(arguments.admin_key),
        allow_unauthenticated=arguments.allow_unauthenticated,
        metrics_public=arguments.metrics_public,
        max_body_bytes=arguments.max_body_bytes,
        max_prompt_tokens=arguments.max_prompt_tokens,
        max_completion_tokens=arguments.max_completion_tokens,
        max_messages=arguments.max_messages,
        otlp_endpoint=arguments.otlp_endpoint,
        drain_seconds=arguments.drain_seconds,
    )


async def _serve(settings: Settings) -> None:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    app = create_app(settings)
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def drain_then_shut_down() -> None:
        log.info("draining", extra={"seconds": settings.drain_seconds})
        await drain(app, settings.drain_seconds)
        shutdown.set()

    # SIGTERM (an orchestrator stopping the pod) lets accepted streams finish; SIGINT stops now.
    loop.add_signal_handler(signal.SIGINT, shutdown.set)
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(drain_then_shut_down()))
    log.info("listening", extra={"url": f"http://{settings.host}:{settings.port}"})
    await serve(app, config, shutdown_trigger=shutdown.wait)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def unauthenticated_exposure(settings: Settings) -> str | None:
    """Why the service must not start: no keys, yet reachable beyond this machine."""
    if settings.allow_unauthenticated or is_loopback(settings.host):
        return None
    if KeyRing.from_settings(settings.keys_path, settings.api_keys, settings.admin_keys):
        return None
    return (
        f"refusing to listen on {settings.host} with no API keys configured: anyone who can reach it could use it. "
        "Create a key (`python -m service keys create --name NAME`), pass --api-key KEY or set "
        f"${API_KEYS_VARIABLE}, or pass --allow-unauthenticated to serve anyway"
    )


def keys_command(argv: list[str]) -> int:
    """python -m service keys create|list|revoke: manage the keys file."""
    parser = argparse.ArgumentParser(prog="python -m service keys", description="Manage API keys (stored as SHA-256 hashes).")
    parser.add_argument(
        "--keys-file", type=Path, default=None,
        help=f"the keys file (default DATA_DIR/keys.json, DATA_DIR from ${DATA_DIR_VARIABLE}, else ./data)",
    )
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_DIR_VARIABLE) or Settings().data_dir))
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it (shown this once only)")
    create.add_argument("--name", required=True)
    create.add_argument("--admin", action="store_true", help="may also register and remove models")
    create.add_argument("--rpm", type=int, default=0, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=int, default=0, help="tokens per minute, prompt plus max_tokens (default: no limit)")
    create.add_argument("--streams", type=int, default=0, help="concurrent generations (default: no limit)")
    commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = commands.add_parser("revoke", help="delete a key by name or id")
    revoke.add_argument("name_or_id")
    arguments = parser.parse_args(argv)
    keys = KeyFile(arguments.keys_file or arguments.data_dir / "keys.json")
    try:
        if arguments.command == "create":
            key, plaintext = keys.create(arguments.name, arguments.admin, arguments.rpm, arguments.tpm, arguments.streams)
            print(f"created {key.id} ({key.name}) in {keys.path}; the key, shown this once:", file=sys.stderr)
            print(plaintext)
        elif arguments.command == "list":
            for key in keys.load():
                limits = f"rpm={key.rpm or '-'} tpm={key.tpm or '-'} streams={key.streams or '-'}"
                print(f"{key.id}\t{key.name}\t{'admin' if key.admin else 'user'}\t{limits}")
        else:
            key = keys.revoke(arguments.name_or_id)
            print(f"revoked {key.id} ({key.name}); restart the service to apply", file=sys.stderr)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_command(argv[1:])
    if argv[:1] == ["chat"]:
        from service.chat_client import main as chat_main

        return chat_main(argv[1:])
    arguments = parse_arguments(argv)
    configure_logging(arguments.log_level)
    try:
        settings = settings_from(arguments)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if (reason := unauthenticated_exposure(settings)) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
