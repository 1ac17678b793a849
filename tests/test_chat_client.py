"""`python -m service chat`, the terminal client, against a real server: it streams answers,
keeps the conversation as a session that can be resumed, and says clearly when it cannot connect."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.support import REPO
from tests.test_api import SMOL


def run_chat(*arguments: str, typed: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", "chat", *arguments],
        input=typed, cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_the_terminal_chat_answers_and_keeps_a_resumable_session(api_server):
    first = run_chat("--url", api_server.url, "--model", SMOL, "--temperature", "0", "--max-tokens", "12",
                     typed="What is the capital of France?\n/quit\n")
    session_id = first.stdout.split("session ", 1)[1].split(" ", 1)[0].rstrip(",")
    resumed = run_chat("--url", api_server.url, "--model", SMOL, "--session", session_id, "--temperature", "0",
                       "--max-tokens", "8", typed="And of Italy?\n")
    session = httpx.get(f"{api_server.url}/v1/sessions/{session_id}", timeout=10).json()

    assert first.returncode == 0 and "Paris" in first.stdout
    assert resumed.returncode == 0
    assert [message["role"] for message in session["messages"]] == ["user", "assistant", "user", "assistant"]


def test_an_unreachable_service_is_a_clear_error(tmp_path):
    result = run_chat("--url", "http://127.0.0.1:9", typed="hi\n")

    assert result.returncode == 2 and "cannot reach http://127.0.0.1:9" in result.stderr
