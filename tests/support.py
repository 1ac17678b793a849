"""Helpers shared by tests/ and e2e/: real servers on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServiceProcess:
    """`python -m service` in a subprocess on a free loopback port, stopped on exit."""

    def __init__(self, *arguments: str, log_path: Path, wait_ready: bool = True, timeout: float = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        if "--data-dir" not in arguments:  # sessions and registry state of this server alone
            self._data = tempfile.TemporaryDirectory(prefix="service-data-")
            arguments = (*arguments, "--data-dir", self._data.name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), *arguments],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self.wait_listening(timeout)
        if wait_ready:
            self.wait_ready(timeout)

    def _poll(self, path: str, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log()}")
            try:
                if done(httpx.get(self.url + path, timeout=2)):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the service did not answer {path} in {timeout}s:\n{self.log()}")

    def wait_listening(self, timeout: float) -> None:
        self._poll("/livez", lambda response: response.status_code == 200, timeout)

    def wait_ready(self, timeout: float) -> None:
        """Waits until every model is ready; a model that failed to load fails the wait."""

        def settled(response: httpx.Response) -> bool:
            statuses = response.json()["models"].values()
            if "failed" in statuses:
                raise RuntimeError(f"a model failed to load: {response.text}\n{self.log()}")
            return bool(statuses) and all(status == "ready" for status in statuses)

        self._poll("/readyz", settled, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class StaticServer:
    """Serves a folder over HTTP on loopback, as any static host would serve the SPA."""

    def __init__(self, folder: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory", str(folder)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError("the static server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self._log.close()
