"""A real PostgreSQL server for tests: Debian's, installed if missing, in a temporary folder,
listening on loopback only. PostgreSQL refuses to run as root, so it runs as `postgres`."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from tests.support import free_port

SERVER_USER = "postgres"


def _installed_initdb() -> list[Path]:
    return sorted((Path(path) for path in glob.glob("/usr/lib/postgresql/*/bin/initdb")), key=lambda path: int(path.parent.parent.name))


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's bin folder, installing Debian's package first if needed."""
    found = _installed_initdb()
    if not found:
        environment = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=environment, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postgresql"], check=True,
                       env=environment, capture_output=True)
        found = _installed_initdb()
    return found[-1].parent


def _as_server_user(*command: str | Path) -> list[str]:
    command = [str(part) for part in command]
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    """initdb in a temporary folder, then `pg_ctl start` on 127.0.0.1 at a free port;
    `stop()` and `start()` take the server away and bring it back on the same port."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="postgres-test-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.folder, SERVER_USER)
        subprocess.run(
            _as_server_user(self.bin / "initdb", "-D", self.data, "-U", SERVER_USER, "--auth=trust", "-E", "UTF8",
                            "--locale=C.UTF-8"),
            check=True, capture_output=True,
        )
        self.start()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        # fsync off: a test server's durability is not under test, and the disk is shared.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        subprocess.run(
            _as_server_user(self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start"),
            check=True, capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(_as_server_user(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"),
                       check=True, capture_output=True)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
