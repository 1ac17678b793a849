"""python -m service chat: a terminal chat against a running service, streamed as it is written.

    python -m service chat [--url http://127.0.0.1:8000] [--model ID] [--session ID | --no-session]
                           [--api-key KEY] [--system TEXT] [--temperature T] [--max-tokens N]

Each conversation is a server-side session (history in the service's SQLite), so it can be
resumed later with --session ID, or from the SPA. Commands typed at the prompt: /new starts a
new session, /sessions lists them, /quit leaves (so do Ctrl-D and Ctrl-C). Only the standard
library is used, so the client runs wherever the service is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

API_KEY_VARIABLE = "LLM_API_KEY"


class ChatError(Exception):
    """The service refused or could not be reached; the message says which."""


class Client:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key

    def _request(self, method: str, path: str, body: dict | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self.url + path, data=data, headers=headers, method=method)

    def _open(self, request: urllib.request.Request, timeout: float = 600):
        try:
            return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the user's own URL)
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = error.reason
            retry = error.headers.get("Retry-After")
            raise ChatError(f"{error.code}: {message}" + (f" (retry in {retry} s)" if retry else "")) from error
        except urllib.error.URLError as error:
            raise ChatError(f"cannot reach {self.url}: {error.reason}") from error

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._open(self._request(method, path, body), timeout=60) as response:
            return json.loads(response.read())

    def stream_chat(self, body: dict) -> Iterator[str]:
        """Text pieces of a streamed chat completion, as they arrive."""
        with self._open(self._request("POST", "/v1/chat/completions", {**body, "stream": True})) as response:
            for raw in response:
                line = raw.decode("utf-8").rstrip("\n")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    raise ChatError(chunk["error"]["message"])
                for choice in chunk.get("choices", []):
                    text = choice.get("delta", {}).get("content")
                    if text:
                        yield text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service chat", description="Chat with a running service from the terminal.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default http://127.0.0.1:8000)")
    parser.add_argument("--model", help="model id (default: the first ready model)")
    parser.add_argument("--session", help="resume this session id")
    parser.add_argument("--no-session", action="store_true", help="keep the history in this process only")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE), help=f"API key (default ${API_KEY_VARIABLE})")
    parser.add_argument("--system", help="system prompt for a new conversation")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature, 0 for greedy (default: the model's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="most tokens per answer (default: the rest of the context)")
    return parser


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def first_ready_model(client: Client) -> str:
    ready = [model["id"] for model in client.json("GET", "/v1/models")["data"] if model.get("status") == "ready"]
    if not ready:
        raise ChatError("no model is ready yet")
    return ready[0]


def main(argv: list[str], stdin=sys.stdin, stdout=sys.stdout) -> int:
    arguments = parse_arguments(argv)
    client = Client(arguments.url, arguments.api_key)
    try:
        model = arguments.model or first_ready_model(client)
        session = None if arguments.no_session else (arguments.session or new_session(client, model, arguments.system))
    except ChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    local_history: list[dict] = [{"role": "system", "content": arguments.system}] if arguments.system and session is None else []
    print(f"{model}" + (f", session {session}" if session else "") + " — /new, /sessions, /quit", file=stdout, flush=True)
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        text = line.strip()
        if not text:
            continue
        try:
            if text == "/new":
                session = None if arguments.no_session else new_session(client, model, arguments.system)
                local_history.clear()
                print(f"new session {session}" if session else "new conversation", file=stdout, flush=True)
                continue
            if text == "/sessions":
                for item in client.json("GET", "/v1/sessions?limit=20")["data"]:
                    print(f"{item['id']}  {item.get('title') or ''}", file=stdout)
                continue
            message = {"role": "user", "content": text}
            body = {"model": model, "messages": [*local_history, message]}
            if session:
                body = {"model": model, "session_id": session, "messages": [message]}
            for name in ("temperature", "max_tokens"):
                if getattr(arguments, name) is not None:
                    body[name] = getattr(arguments, name)
            pieces = []
            for piece in client.stream_chat(body):
                pieces.append(piece)
                print(piece, end="", file=stdout, flush=True)
            print(file=stdout, flush=True)
            if session is None:
                local_history += [message, {"role": "assistant", "content": "".join(pieces)}]
        except ChatError as error:
            print(f"error: {error}", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(file=stdout)
            return 0


def new_session(client: Client, model: str, system: str | None) -> str:
    body = {"model": model, "title": "terminal chat"}
    if system:
        body["system_prompt"] = system
    return client.json("POST", "/v1/sessions", body)["id"]
