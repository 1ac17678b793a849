"""Concurrent streaming load against an OpenAI-compatible server on this machine.

    .venv/bin/python -m bench.http_load --url http://127.0.0.1:PORT [--streams 1,4,8,16] [--endpoint chat]

N streams start together, each asking for exactly `max_tokens` tokens (`ignore_eos`, which llama-server,
vLLM and our service accept), and the run measures generated tokens per second over all streams,
each stream's decode rate and its time to first token. Every run is bounded in time, and only
loopback addresses are accepted as targets: this is a benchmark, not a load tool for other hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import statistics
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

PROMPT = "Write a long story about the history of an old city and the people who lived in it."


class NotLoopbackError(ValueError):
    """The target is not an address on this machine."""


@dataclass
class StreamResult:
    tokens: int = 0
    first_token_s: float | None = None
    total_s: float = 0.0
    error: str | None = None

    @property
    def decode_tok_s(self) -> float | None:
        if self.first_token_s is None or self.tokens < 2 or self.total_s <= self.first_token_s:
            return None
        return (self.tokens - 1) / (self.total_s - self.first_token_s)


@dataclass
class LoadResult:
    """One concurrency level: what all streams together achieved, and what a typical stream saw."""

    streams: int
    completed: int
    aggregate_tok_s: float
    mean_stream_decode_tok_s: float | None
    mean_first_token_s: float | None
    max_first_token_s: float | None
    wall_s: float
    tokens: int
    errors: list[str] = field(default_factory=list)
    # Every attempt's aggregate rate; the level's figures are the median attempt's.
    attempt_rates: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.completed == self.streams and not self.errors


def require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise NotLoopbackError(f"{url}: only loopback targets (127.0.0.0/8, ::1, localhost) may be loaded")


def request_body(endpoint: str, model: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    return body


def _chunk_tokens(chunk: dict) -> int:
    """Tokens a streamed chunk carries when the server sends no usage: one per non-empty delta."""
    count = 0
    for choice in chunk.get("choices") or []:
        text = choice.get("text") or (choice.get("delta") or {}).get("content")
        count += 1 if text else 0
    return count


class StreamConnection:
    """A bare HTTP/1.1 client for one streamed request: the client shares this machine's cores
    with the server it measures, and httpx spends about 1 ms of CPU per streamed chunk, several
    percent of a decode step. This reads chunked transfer encoding and SSE lines and nothing else."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"

    async def post_lines(self, body: dict):
        """Yields (status, None) once, then each line of the body, decoded."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            payload = json.dumps(body).encode()
            writer.write(
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Accept: text/event-stream\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            yield status, None
            pending = b""
            async for data in self._body(reader, headers):
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield status, line.rstrip(b"\r").decode("utf-8")
            if pending:
                yield status, pending.decode("utf-8")
        finally:
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict):
        if headers.get("transfer-encoding") == "chunked":
            while size := int((await reader.readline()).split(b";")[0], 16):
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in headers:
            yield await reader.readexactly(int(headers["content-length"]))
        else:
            while data := await reader.read(65536):
                yield data


async def one_stream(url: str, body: dict) -> StreamResult:
    result = StreamResult()
    counted = 0
    reported = None
    started = time.perf_counter()
    error_lines: list[str] = []
    try:
        async for status, line in StreamConnection(url).post_lines(body):
            if status != 200:
                if line is not None:
                    error_lines.append(line)
                continue
            if line is None or not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                result.error = f"stream error: {json.dumps(chunk['error'])[:200]}"
                break
            new_tokens = _chunk_tokens(chunk)
            if new_tokens and result.first_token_s is None:
                result.first_token_s = time.perf_counter() - started
            counted += new_tokens
            if chunk.get("usage"):
                reported = chunk["usage"].get("completion_tokens")
        if error_lines or (result.first_token_s is None and result.error is None and reported is None):
            result.error = result.error or f"HTTP error: {' '.join(error_lines)[:200]}"
    except (OSError, ValueError, asyncio.IncompleteReadError) as error:
        result.error = f"{type(error).__name__}: {error}"
    result.total_s = time.perf_counter() - started
    result.tokens = reported if reported is not None else counted
    return result


def first_model(base_url: str) -> str:
    with urllib.request.urlopen(f"{base_url}/v1/models", timeout=30) as response:
        return json.loads(response.read())["data"][0]["id"]


async def run_level(
    base_url: str, endpoint: str, model: str, streams: int, max_tokens: int, timeout: float
) -> LoadResult:
    url = f"{base_url}/v1/chat/completions" if endpoint == "chat" else f"{base_url}/v1/completions"
    body = request_body(endpoint, model, max_tokens)
    started = time.perf_counter()
    tasks = [asyncio.create_task(one_stream(url, body)) for _ in range(streams)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    wall = time.perf_counter() - started
    results = [task.result() for task in done]
    errors = [result.error for result in results if result.error]
    errors += [f"stream unfinished after {timeout:.0f} s"] * len(pending)
    short = [result for result in results if not result.error and result.tokens != max_tokens]
    errors += [f"stream returned {result.tokens} of {max_tokens} tokens" for result in short]
    finished = [result for result in results if not result.error]
    rates = [rate for rate in (result.decode_tok_s for result in finished) if rate is not None]
    firsts = [result.first_token_s for result in finished if result.first_token_s is not None]
    tokens = sum(result.tokens for result in finished)
    return LoadResult(
        streams=streams,
        completed=len(finished),
        aggregate_tok_s=tokens / wall,
        mean_stream_decode_tok_s=statistics.mean(rates) if rates else None,
        mean_first_token_s=statistics.mean(firsts) if firsts else None,
        max_first_token_s=max(firsts) if firsts else None,
        wall_s=wall,
        tokens=tokens,
        errors=errors,
    )


async def run_levels(
    base_url: str,
    levels: tuple[int, ...] = (1, 4, 8, 16),
    endpoint: str = "chat",
    max_tokens: int = 128,
    timeout_per_level: float = 300,
    attempts: int = 2,
) -> list[LoadResult]:
    """Each level after a short warm-up request, one level at a time, each bounded by its timeout.

    Each level runs `attempts` times and reports the median attempt (by aggregate rate, failed
    attempts first), with every attempt's rate beside it.
    """
    require_loopback(base_url)
    model = await asyncio.to_thread(first_model, base_url)
    await run_level(base_url, endpoint, model, 1, 8, timeout_per_level)
    results = []
    for streams in levels:
        tries = [await run_level(base_url, endpoint, model, streams, max_tokens, timeout_per_level) for _ in range(attempts)]
        tries.sort(key=lambda result: (result.ok, result.aggregate_tok_s))
        median = tries[len(tries) // 2]
        median.attempt_rates = [result.aggregate_tok_s for result in tries]
        results.append(median)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="base URL on loopback, e.g. http://127.0.0.1:8080")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrency levels, comma-separated")
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed for each level")
    parser.add_argument("--attempts", type=int, default=3, help="runs per level; the median one is reported")
    arguments = parser.parse_args()
    levels = tuple(int(level) for level in arguments.streams.split(","))
    results = asyncio.run(
        run_levels(
            arguments.url.rstrip("/"), levels, arguments.endpoint, arguments.max_tokens, arguments.timeout,
            arguments.attempts,
        )
    )
    for result in results:
        print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
