"""API keys: stored as hashes, checked on every request by a pure ASGI middleware.

Keys are 256 random bits, so a plain SHA-256 of one is as strong as a slow password hash: there is
no dictionary to try against a stolen keys file, and a fast hash keeps the check cheap on every
request. The presented key's hash is compared with every stored hash in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import APIError, error_response

KEY_PREFIX = "sk-llm-"
# Paths open without a key: orchestrators probe them and have no key to give.
PROBE_PATHS = frozenset({"/livez", "/readyz", "/startupz"})
METRICS_PATH = "/metrics"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    """A key as the service keeps it: never the key itself. Limits of 0 mean no limit."""

    id: str
    name: str
    key_hash: str
    admin: bool = False
    rpm: int = 0
    tpm: int = 0
    streams: int = 0
    created: int = 0

    @classmethod
    def from_plaintext(cls, key: str, name: str, admin: bool = False) -> ApiKey:
        """A key given on the command line or in LLM_API_KEYS; its id derives from its hash."""
        key_hash = hash_key(key)
        return cls(f"key_{key_hash[:12]}", name, key_hash, admin)


class KeyFile:
    """DATA_DIR/keys.json (or --keys-file): the keys `python -m service keys` manages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[ApiKey]:
        if not self.path.is_file():
            return []
        return [ApiKey(**entry) for entry in json.loads(self.path.read_text(encoding="utf-8"))["keys"]]

    def save(self, keys: Iterable[ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"keys": [asdict(key) for key in keys]}, indent=2) + "\n", encoding="utf-8")
        temporary.chmod(0o600)
        temporary.replace(self.path)

    def create(self, name: str, admin: bool = False, rpm: int = 0, tpm: int = 0, streams: int = 0) -> tuple[ApiKey, str]:
        """Stores a new key and returns it with its plaintext, which is shown once and never kept."""
        keys = self.load()
        if any(key.name == name for key in keys):
            raise ValueError(f"a key named {name!r} exists already")
        plaintext = new_key()
        key = ApiKey(f"key_{secrets.token_hex(6)}", name, hash_key(plaintext), admin, rpm, tpm, streams, int(time.time()))
        self.save([*keys, key])
        return key, plaintext

    def revoke(self, name_or_id: str) -> ApiKey:
        keys = self.load()
        for key in keys:
            if name_or_id in (key.name, key.id):
                self.save([other for other in keys if other is not key])
                return key
        raise ValueError(f"no key named or with id {name_or_id!r}")


class KeyRing:
    """The keys this process accepts."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = list(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, presented: str) -> ApiKey | None:
        presented_hash = hash_key(presented)
        found = None
        for key in self.keys:  # every hash is compared: the time taken says nothing of which matched
            if hmac.compare_digest(presented_hash, key.key_hash):
                found = key
        return found

    @classmethod
    def from_settings(cls, keys_file: Path, api_keys: Iterable[str], admin_keys: Iterable[str]) -> KeyRing:
        keys = {key.key_hash: key for key in KeyFile(keys_file).load()}
        for index, plaintext in enumerate(api_keys):
            keys.setdefault(hash_key(plaintext), ApiKey.from_plaintext(plaintext, f"api-key-{index + 1}"))
        for index, plaintext in enumerate(admin_keys):
            key = ApiKey.from_plaintext(plaintext, f"admin-key-{index + 1}", admin=True)
            keys[key.key_hash] = replace(keys.get(key.key_hash, key), admin=True)
        return cls(keys.values())


def presented_key(scope: Scope) -> str | None:
    """`Authorization: Bearer KEY`, `x-api-key: KEY`, or on a WebSocket `?api_key=KEY` (browsers
    cannot set headers on a WebSocket)."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    if scope["type"] == "websocket":
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("api_key")
        if values:
            return values[0]
    return None


def needs_admin(scope: Scope) -> bool:
    """Registry changes (POST and DELETE on /v1/models) are for admin keys."""
    return scope["type"] == "http" and scope["method"] in ("POST", "DELETE") and (
        scope["path"] == "/v1/models" or scope["path"].startswith("/v1/models/")
    )


async def refuse(scope: Scope, receive: Receive, send: Send, error: APIError) -> None:
    """An error response over HTTP, or as the WebSocket handshake's denial (before accepting)."""
    if scope["type"] == "http":
        await error_response(error)(scope, receive, send)
        return
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    response = error_response(error)
    await send({"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "websocket.http.response.body", "body": response.body})


class AuthenticationMiddleware:
    """Requires a known key on every route but the probes (and /metrics when public); puts the
    key on the request's state: `api_key`, `key_id`, and `owner` (whose sessions it sees)."""

    def __init__(self, app: ASGIApp, keys: KeyRing, metrics_public: bool = False) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = PROBE_PATHS | ({METRICS_PATH} if metrics_public else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope)
        key = self.keys.find(presented) if presented else None
        if key is None:
            message = "a valid API key is required: send `Authorization: Bearer KEY`" if presented is None else "the API key is not valid"
            error = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await refuse(scope, receive, send, error)
            return
        if needs_admin(scope) and not key.admin:
            error = APIError(403, f"{scope['method']} {scope['path']} needs an admin key", code="insufficient_scope")
            await refuse(scope, receive, send, error)
            return
        state = scope.setdefault("state", {})
        state.update(api_key=key, key_id=key.id, owner=key.id)
        await self.app(scope, receive, send)


# A JSON API has nothing to render, frame or load: the strictest policy fits every response.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
