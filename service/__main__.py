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
from hypercorn.utils import LifespanFailureError

from service import SERVICE_VERSION

from service.app import create_app
from service.operations.auth import KeyFile, KeyRing
from service.operations.logs import configure_logging
from service.options import (
    API_KEYS_VARIABLE,
    CONFIG_VARIABLE,
    ConfigError,
    add_options,
    load_config_file,
    resolve_values,
    settings_from_values,
)
from service.routes import websocket_frames
from service.routes.health import drain
from service.settings import Settings, embedded_default_model
from service.storage.backend import StorageConfigurationError, check_database_url

log = logging.getLogger("service")

DATA_DIR_VARIABLE = "LLM_DATA_DIR"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="OpenAI-compatible LLM inference service. Every option can also be set in a TOML config file "
        "(deploy/config.example.toml lists them all; docs/configuration.md explains precedence). Also: "
        "`python -m service keys --help` (API keys) and `python -m service chat --help` (a terminal chat client).",
    )
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help=f"TOML config file; flags and environment variables override it (default ${CONFIG_VARIABLE}; unset: none)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[ID=]PATH",
        help="a converted model folder, a GGUF file or a Hugging Face checkpoint folder (converted on first use and "
        "cached); repeatable; replaces the config file's [[model]] tables (default: the embedded SmolLM2-135M-Instruct)",
    )
    add_options(parser)
    parser.add_argument("--version", action="version", version=f"service {SERVICE_VERSION}")
    return parser


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def settings_from(arguments: argparse.Namespace, environment: dict[str, str] | None = None) -> tuple[Settings, str]:
    """The settings and the log level; ConfigError for a bad config file, FileNotFoundError without a model."""
    values = resolve_values(arguments, os.environ if environment is None else environment)
    models = values["models"] or (embedded_default_model(),)
    return settings_from_values(values, models), values["log_level"]


async def _serve(settings: Settings) -> None:
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    websocket_frames.install()
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


# Keys given as text (flags, LLM_API_KEYS, the config file) shorter than this are guessable.
MIN_KEY_LENGTH = 16


def weak_keys(settings: Settings) -> list[str]:
    """Which keys given as text are shorter than MIN_KEY_LENGTH, by the names `keys list` would
    give them (api-key-1, admin-key-2), never the keys themselves."""
    named = [(f"api-key-{index}", key) for index, key in enumerate(settings.api_keys, start=1)]
    named += [(f"admin-key-{index}", key) for index, key in enumerate(settings.admin_keys, start=1)]
    return [name for name, key in named if len(key) < MIN_KEY_LENGTH]


def keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service keys", description="Manage API keys (stored as SHA-256 hashes).")
    parser.add_argument(
        "--keys-file", type=Path, default=None,
        help="the keys file (default: the config file's keys_file, else DATA_DIR/keys.json)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help=f"the service's data folder (default ${DATA_DIR_VARIABLE}, else the config file's data_dir, else ./data)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help=f"the service's TOML config file, for keys_file and data_dir (default ${CONFIG_VARIABLE}; unset: none)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{create,list,revoke}")
    create = commands.add_parser("create", help="create a key and print it (shown this once only)")
    create.add_argument("--name", required=True, help="a name to list, limit and revoke the key by")
    create.add_argument("--admin", action="store_true", help="may also register and remove models")
    create.add_argument("--rpm", type=int, default=0, help="requests per minute (default: no limit)")
    create.add_argument("--tpm", type=int, default=0, help="tokens per minute, prompt plus max_tokens (default: no limit)")
    create.add_argument("--streams", type=int, default=0, help="concurrent generations (default: no limit)")
    commands.add_parser("list", help="list keys (never the keys themselves)")
    revoke = commands.add_parser("revoke", help="delete a key by name or id")
    revoke.add_argument("name_or_id", help="the key's name or id, as `keys list` shows them")
    return parser


def keys_path(arguments: argparse.Namespace) -> Path:
    """The keys file the service itself would read: flag, environment, config file, default."""
    if arguments.keys_file:
        return arguments.keys_file
    config_path = arguments.config or os.environ.get(CONFIG_VARIABLE)
    from_file = load_config_file(Path(config_path).expanduser()) if config_path else {}
    if from_file.get("keys_file"):
        return from_file["keys_file"]
    data_dir = arguments.data_dir or os.environ.get(DATA_DIR_VARIABLE) or from_file.get("data_dir") or Settings().data_dir
    return Path(data_dir) / "keys.json"


def keys_command(argv: list[str]) -> int:
    """python -m service keys create|list|revoke: manage the keys file."""
    arguments = keys_parser().parse_args(argv)
    try:
        keys = KeyFile(keys_path(arguments))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
    try:
        settings, log_level = settings_from(arguments)
        check_database_url(settings.database_url)
    except (ConfigError, StorageConfigurationError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    configure_logging(log_level)
    if (reason := unauthenticated_exposure(settings)) is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    if weak := weak_keys(settings):
        problem = f"{', '.join(weak)} shorter than {MIN_KEY_LENGTH} characters, easy to guess; `python -m service keys create` makes strong ones"
        if not is_loopback(settings.host):
            print(f"error: refusing to listen on {settings.host} with {problem}", file=sys.stderr)
            return 2
        log.warning("weak API keys", extra={"problem": problem})
    try:
        asyncio.run(_serve(settings))
    except LifespanFailureError:
        return 1  # startup failed (the database, say); the reason is already logged
    return 0


if __name__ == "__main__":
    sys.exit(main())
