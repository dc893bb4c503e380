"""`kpb serve`: the bridge under gunicorn, in one command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from keycloak_policy_bridge.cli.app import fail, main
from keycloak_policy_bridge.errors import BridgeError


@main.command("serve")
@click.option("--bind", default="127.0.0.1:8700", show_default=True, help="Address to listen on.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="gunicorn worker processes.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Threads per gthread worker: requests being read or answered at once (a slow client holds one for at most "
    "10 s); group commit batches their log writes. sync workers use one.",
)
@click.option("--timeout", type=click.IntRange(min=1), default=30, show_default=True, help="Seconds before a stuck worker is restarted.")
@click.option(
    "--worker-class",
    type=click.Choice(["gthread", "sync"]),
    default="gthread",
    show_default=True,
    help="gunicorn worker model: gthread (--threads per worker; a slow client holds a thread, not the worker; bench/RESULTS.md) "
    "or sync (one request at a time per worker, --threads ignored: behind a buffering proxy only).",
)
@click.option("--policy", type=click.Path(dir_okay=False), help="Policy file (env KPB_POLICY; required).")
@click.option("--entitlements", type=click.Path(file_okay=False), help="Snapshot directory (env KPB_ENTITLEMENTS; required).")
@click.option("--feed", "feeds", multiple=True, help="name=directory of a context feed (repeatable; env KPB_FEEDS).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Decision log (env KPB_DECISION_LOG; default var/decisions.db).")
@click.option("--insecure-dev", is_flag=True, help="Accept unauthenticated callers (development only; logged loudly).")
def serve(
    bind: str,
    workers: int,
    threads: int,
    timeout: int,
    worker_class: str,
    policy: str | None,
    entitlements: str | None,
    feeds: tuple[str, ...],
    log_path: str | None,
    insecure_dev: bool,
) -> None:
    """Run the bridge under gunicorn. Settings come from KPB_* variables; flags override them.

    The policy and the entitlement snapshot are required (--policy/KPB_POLICY,
    --entitlements/KPB_ENTITLEMENTS). The caller secret is KPB_HMAC_SECRETS=key_id=<hex>[,...]
    (never a flag: flags show up in process listings). Without it the bridge refuses to start
    unless --insecure-dev is given.

    \b
    Example:
      KPB_HMAC_SECRETS=k1=$(openssl rand -hex 32) kpb serve --bind 127.0.0.1:8700 \\
          --policy policy.json --entitlements exports/today
    """
    overrides = {
        "KPB_POLICY": policy,
        "KPB_ENTITLEMENTS": entitlements,
        "KPB_DECISION_LOG": log_path,
        "KPB_FEEDS": ",".join(feeds) or None,
        "KPB_INSECURE_DEV": "1" if insecure_dev else None,
    }
    os.environ.update({k: v for k, v in overrides.items() if v})
    # Heartbeats name the replica (decision_log.replicas): with the port, two on one host stay apart.
    os.environ.setdefault("KPB_REPLICA_NAME", f"{socket.gethostname()}:{bind.rpartition(':')[2]}")
    import logging

    from keycloak_policy_bridge.config import Settings
    from keycloak_policy_bridge.signature import check_secrets

    try:  # fail here, with every problem, before gunicorn forks
        settings = Settings.from_env(os.environ)
        if settings.hmac_secrets:
            check_secrets(dict(settings.hmac_secrets))
        level = os.environ.get("KPB_LOG_LEVEL", "INFO")
        if level.upper() not in logging.getLevelNamesMapping():
            raise BridgeError(f"KPB_LOG_LEVEL: unknown log level {level!r} (DEBUG, INFO, WARNING, ERROR)")
    except BridgeError as exc:
        fail(exc, 2)
    precompile(settings)
    if worker_class == "sync":
        threads = 1  # gunicorn silently runs gthread for a sync worker with threads > 1
    from gunicorn.app.base import BaseApplication

    from keycloak_policy_bridge.workers import WORKER_CLASSES

    worker_class = WORKER_CLASSES[worker_class]  # gunicorn's worker of that model, with read deadlines and JSON errors

    class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
        def load_config(self) -> None:
            options = {
                "bind": bind,
                "workers": workers,
                "threads": threads,
                "timeout": timeout,
                "worker_class": worker_class,
                "keepalive": 75,
                "graceful_timeout": 20,
                "accesslog": None,
            }
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn 27's control socket defaults to one path per user: two bridges (or a
                # bridge and its tests) on one host would fight over it, and nothing here uses it.
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from keycloak_policy_bridge.wsgi import app

            return app

    _Gunicorn().run()
    sys.exit(0)


def precompile(settings: Any) -> None:
    """Compile the entitlement export before gunicorn forks (``snapshot_compiler``).

    A worker's first load then opens the file in milliseconds: a ten-million-row export compiles
    for minutes, longer than gunicorn lets a booting worker go without a heartbeat. A rejected
    export is not fatal here: the workers start not ready and say why (``/readyz``), as they would
    for any snapshot that fails to load, and the next good drop is picked up by the watcher.
    """
    if settings.snapshot_directory is None:
        return
    from keycloak_policy_bridge.errors import EntitlementSourceError
    from keycloak_policy_bridge.snapshot_compiler import compile_export

    click.echo(f"kpb serve: compiling the entitlement export {settings.entitlements} into {settings.snapshot_directory} ...", err=True)
    started = time.monotonic()
    try:
        path, snapshot = compile_export(settings.entitlements, settings.snapshot_directory)
    except EntitlementSourceError as exc:
        click.echo(f"kpb serve: the entitlement export is rejected ({exc.message}); starting not ready", err=True)
        return
    click.echo(f"kpb serve: {snapshot.record_count:,} records compiled into {path.name} in {time.monotonic() - started:.1f} s", err=True)


def restamped_copy(source: Path, target: Path) -> Path:
    """Copy the export or feed directory ``source`` into ``target`` with its manifest's
    ``generated_at`` set to now: the same content as a fresh drop. Demo and test tooling (the
    acme example ages past its own policy's freshness limit); never run on a real export.

    Files are copied byte for byte, so their recorded hashes still match, and the manifest is
    written last and atomically, as an IGA drop is, so a bridge watching ``target`` never reads
    a manifest that disagrees with its files.
    """
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "manifest.json":
            shutil.copyfile(item, target / item.name)
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    manifest["generated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    staged = target / "manifest.json.tmp"
    staged.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(staged, target / "manifest.json")
    return target
