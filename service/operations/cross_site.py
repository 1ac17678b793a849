"""Requests a web page could forge, refused while no API key protects the service.

Without keys, whatever reaches the port may call the API, and so may a page open in a browser on
this machine: a `text/plain` or form POST needs no CORS preflight, so a foreign page could
register models, create sessions and run completions; and with DNS rebinding (a foreign name
that resolves to 127.0.0.1) it reads the answers too. A page cannot send an API key, so with keys
none of this works and the guard stands aside. Without them:

- the Host header must name this service: a loopback name, the address it listens on, or one of
  `allowed_hosts` (a leading dot allows subdomains, `*` any host); probes are exempt, as
  orchestrators call them by pod address;
- a POST or DELETE sent by a page must come from an origin the CORS settings allow, and a POST
  body must be `application/json`, which no page can send cross-site without a preflight that
  the CORS policy refuses.
"""

from __future__ import annotations

import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import APIError
from service.operations.auth import PROBE_PATHS, refuse
from service.settings import Settings

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
STATE_CHANGING = frozenset({"POST", "DELETE", "PUT", "PATCH"})


def origin_allowed(origin: str | None, settings: Settings) -> bool:
    """Whether a page from `origin` may call the API (None: not sent by a page)."""
    if origin is None or "*" in settings.cors_origins or origin in settings.cors_origins:
        return True
    return settings.cors_origin_regex is not None and re.fullmatch(settings.cors_origin_regex, origin) is not None


def host_name(host: str) -> str:
    """The name of a Host header, without its port: `[::1]:8000` -> `[::1]`."""
    name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return name.lower().rstrip(".")


class CrossSiteGuard:
    def __init__(self, app: ASGIApp, settings: Settings, enabled: bool) -> None:
        self.app = app
        self.settings = settings
        self.enabled = enabled
        listening = host_name(f"[{settings.host}]" if ":" in settings.host else settings.host)
        self.hosts = LOOPBACK_HOSTS | {listening} | {host.lower().rstrip(".") for host in settings.allowed_hosts}

    def host_allowed(self, host: str | None) -> bool:
        if host is None or "*" in self.hosts:
            return True  # HTTP/1.0 without Host: no browser sends that
        name = host_name(host)
        return name in self.hosts or name.endswith(".localhost") or any(
            allowed.startswith(".") and (name.endswith(allowed) or name == allowed[1:]) for allowed in self.hosts
        )

    def refusal(self, scope: Scope) -> APIError | None:
        headers = Headers(scope=scope)
        if scope["path"] not in PROBE_PATHS and not self.host_allowed(headers.get("host")):
            return APIError(
                403, f"the Host {headers['host']!r} is not one this service answers to; add it with --allowed-hosts",
                code="host_not_allowed",
            )
        if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
            return None
        origin = headers.get("origin")
        if not origin_allowed(origin, self.settings):
            return APIError(
                403, f"requests from the page at {origin!r} may not change anything here; allow its origin with "
                "--cors-origin, or configure API keys", code="cross_site_request",
            )
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and media_type != "application/json":
            return APIError(
                415, f"the body must be sent as Content-Type: application/json, not {media_type or 'without a type'!r}",
                code="unsupported_media_type",
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] in ("http", "websocket") and (error := self.refusal(scope)) is not None:
            await refuse(scope, receive, send, error)
            return
        await self.app(scope, receive, send)
