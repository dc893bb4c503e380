"""Keycloak with and without the mapper (issue 7): client-credentials tokens/s and latency.

    python bench/keycloak_tokens.py [--quick] [--clients 8] [--seconds 20] [--rounds 2]

Starts the acme stack (scripts/stack.py under var/stack-bench/: a real Keycloak 26.7.3 with the
mapper jar, the bridge under gunicorn with the decision log on), then creates, through the admin
API, a client `bench-ungoverned` that is billing-bot's twin without the `kpb-governed` scope.
Both clients then get client-credentials tokens back to back from C client threads (keep-alive
connections, python-keycloak's requests session) in alternating phases, governed and
ungoverned, R rounds each, so that the machine's noise falls on both sides alike. Reported:
tokens/s per side, the throughput ratio governed/ungoverned (target >= 0.8), p50/p99 latency and
the added p50 (target <= 5 ms). Everything (Keycloak, bridge, load generator) shares this
machine's CPUs, which is the point: the bridge's CPU is taken from Keycloak's.
Results go to bench/out/keycloak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from keycloak import KeycloakAdmin, KeycloakOpenIDConnection  # noqa: E402

import stack  # noqa: E402
from acme_oauth import Acme  # noqa: E402
from benchutil import percentile, run_threads  # noqa: E402

OUT = ROOT / "bench" / "out"
PATHS = stack.Paths(ROOT / "var" / "stack-bench", bridge_port=8789)
PLAIN = "bench-ungoverned"


def ungoverned_twin(acme: Acme) -> None:
    """billing-bot's twin without the governed scope (same flows, same service-account setup)."""
    connection = KeycloakOpenIDConnection(
        server_url=acme.keycloak_url,
        username="admin",
        password="admin",
        realm_name="acme",
        user_realm_name="master",
        client_id="admin-cli",
        timeout=30,
    )
    admin = KeycloakAdmin(connection=connection)
    source = admin.get_client(admin.get_client_id("billing-bot"))
    twin = {k: v for k, v in source.items() if k not in ("id", "clientId", "secret", "protocolMappers", "defaultClientScopes")}
    twin.update(
        clientId=PLAIN,
        secret=f"{PLAIN}-demo-secret",
        defaultClientScopes=[s for s in source.get("defaultClientScopes", []) if s != "kpb-governed"],
    )
    if admin.get_client_id(PLAIN) is None:
        admin.create_client(twin)
    uuid = admin.get_client_id(PLAIN)
    for scope in admin.get_client_default_client_scopes(uuid):
        if scope["name"] == "kpb-governed":
            admin.delete_client_default_client_scope(uuid, scope["id"])


def phase(acme: Acme, client_id: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        oidc = acme.client(client_id)
        mine: list[float] = []
        failed = 0
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                oidc.token(grant_type="client_credentials")
            except Exception:  # noqa: BLE001 - counted, not fatal
                failed += 1
                continue
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    elapsed = run_threads(worker, [() for _ in range(clients)])
    return {
        "client": client_id,
        "tokens": len(latencies),
        "errors": errors[0],
        "seconds": round(elapsed, 2),
        "per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2) if latencies else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases, 1 round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seconds, rounds = (5.0, 1) if args.quick else (args.seconds, args.rounds)

    for stale in PATHS.base.glob("decisions.db*"):
        stale.unlink()
    stack.stage_export(PATHS.export)
    stack.stage_feed(PATHS.risk)
    stack.start_bridge(PATHS)
    stack.keycloak("start", PATHS)
    try:
        acme = Acme(stack.KEYCLOAK_URL, PATHS.bridge_url)
        ungoverned_twin(acme)
        governed_claims = acme.claims(acme.client_credentials("billing-bot")["access_token"])
        plain_claims = acme.claims(acme.client_credentials(PLAIN)["access_token"])
        assert "authz_decision_id" in governed_claims and "authz_decision_id" not in plain_claims, "the twin must be ungoverned"
        for client_id in ("billing-bot", PLAIN):  # warm-up: JIT, connection pools, caches
            phase(acme, client_id, args.clients, 5)
        results: dict[str, list[dict[str, Any]]] = {"billing-bot": [], PLAIN: []}
        for _ in range(rounds):
            for client_id in (PLAIN, "billing-bot"):
                result = phase(acme, client_id, args.clients, seconds)
                results[client_id].append(result)
                print(json.dumps(result))
    finally:
        stack.keycloak("stop", PATHS)
        stack.stop_bridge(PATHS)

    def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
        return {
            "per_second": round(sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows), 1),
            "p50_ms": statistics.median(r["p50_ms"] for r in rows),
            "p99_ms": statistics.median(r["p99_ms"] for r in rows),
            "errors": sum(r["errors"] for r in rows),
        }

    governed, plain = summary(results["billing-bot"]), summary(results[PLAIN])
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPU",
        "clients": args.clients,
        "phase_seconds": seconds,
        "rounds": rounds,
        "governed": governed,
        "ungoverned": plain,
        "throughput_ratio": round(governed["per_second"] / plain["per_second"], 3),
        "added_p50_ms": round(governed["p50_ms"] - plain["p50_ms"], 2),
        "phases": results,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "keycloak.json").write_text(json.dumps(report, indent=2))
    print(
        f"\nungoverned {plain['per_second']}/s p50 {plain['p50_ms']} ms p99 {plain['p99_ms']} ms | governed {governed['per_second']}/s "
        f"p50 {governed['p50_ms']} ms p99 {governed['p99_ms']} ms | ratio {report['throughput_ratio']} (target >= 0.8), "
        f"added p50 {report['added_p50_ms']} ms (target <= 5 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
