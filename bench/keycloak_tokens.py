"""Keycloak with and without the mapper (issues 7 and 13): client-credentials tokens/s and latency.

    python bench/keycloak_tokens.py [--quick] [--clients 8] [--seconds 20] [--latency-seconds 20] [--rounds 3]

Starts the acme stack (scripts/stack.py under var/stack-bench/: a real Keycloak 26.7.3 with the
mapper jar, the bridge under gunicorn with the decision log on), then creates, through the admin
API, a client `bench-ungoverned` that is billing-bot's twin without the `kpb-governed` scope.
Both clients then get client-credentials tokens back to back (keep-alive connections,
python-keycloak's requests session) in R interleaved rounds (default 3), each of:
  * throughput: C client threads (default 8) for S seconds, governed and ungoverned: tokens/s
    per side and the ratio governed/ungoverned (target >= 0.85);
  * latency: one client thread for L seconds, governed and ungoverned: p50/p99 per side and the
    added latency per governed token, governed minus ungoverned (target p50 <= 2 ms, p99 <= 5 ms).
The sides alternate order from round to round, so that the machine's noise falls on both alike;
each figure is reported per round with its median and min-max. Everything (Keycloak, bridge,
load generator) shares this machine's CPUs, which is the point: the bridge's CPU is taken from
Keycloak's. Results go to bench/out/keycloak.json.

It does not run (and says why, in the JSON too) when Keycloak is not installed (`make keycloak`),
the mapper jar is not built (`make spi`), or something already listens on Keycloak's port
(another Keycloak: stopping "its" Keycloak would stop that one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


import stack  # noqa: E402
from acme_oauth import Acme  # noqa: E402
from benchutil import percentile, run_threads, spread  # noqa: E402

OUT = ROOT / "bench" / "out"
PATHS = stack.Paths(ROOT / "var" / "stack-bench", bridge_port=8789)
PLAIN = "bench-ungoverned"


def ungoverned_twin(acme: Acme) -> None:
    """billing-bot's twin without the governed scope (same flows, same service-account setup)."""
    admin = acme.master_admin()
    governed_uuid = admin.get_client_id("billing-bot")
    assert governed_uuid is not None, "the acme realm has no billing-bot"
    source = admin.get_client(governed_uuid)
    twin = {k: v for k, v in source.items() if k not in ("id", "clientId", "secret", "protocolMappers", "defaultClientScopes")}
    twin.update(
        clientId=PLAIN,
        secret=f"{PLAIN}-demo-secret",
        defaultClientScopes=[s for s in source.get("defaultClientScopes", []) if s != "kpb-governed"],
    )
    if admin.get_client_id(PLAIN) is None:
        admin.create_client(twin)
    uuid = admin.get_client_id(PLAIN)
    assert uuid is not None, f"{PLAIN} was not created"
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


TARGETS = {"throughput_ratio": 0.85, "added_p50_ms": 2.0, "added_p99_ms": 5.0}
KC_DIST = ROOT / "var" / "keycloak" / "keycloak-26.7.3" / "bin" / "kc.sh"
JAR = ROOT / "keycloak-spi" / "target" / "kpb-keycloak-mapper.jar"


def why_not_runnable() -> str | None:
    """Why the stack cannot be started here now, or None."""
    if not KC_DIST.exists():
        return f"Keycloak is not installed ({KC_DIST.relative_to(ROOT)} missing: make keycloak)"
    if not JAR.exists():
        return f"the mapper jar is not built ({JAR.relative_to(ROOT)} missing: make spi)"
    pid_file = ROOT / "var" / "keycloak" / "keycloak.pid"  # scripts/keycloak.sh's: its stop would stop that Keycloak
    if pid_file.exists() and pid_file.read_text().strip().isdigit() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
        return f"a Keycloak started by scripts/keycloak.sh is running (pid {pid_file.read_text().strip()}); not touching it"
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex(("127.0.0.1", stack.KEYCLOAK_PORT)) == 0:
            return f"something already listens on 127.0.0.1:{stack.KEYCLOAK_PORT} (another Keycloak?); not touching it"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 s phases (3 rounds)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20, help="seconds per throughput phase")
    parser.add_argument("--latency-seconds", type=float, default=20, help="seconds per one-client latency phase")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds, latency_seconds = (4.0, 4.0) if args.quick else (args.seconds, args.latency_seconds)
    rounds = args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    OUT.mkdir(parents=True, exist_ok=True)
    reason = why_not_runnable()
    if reason is not None:
        (OUT / "keycloak.json").write_text(json.dumps({"benchmark": "keycloak_tokens", "date": now_utc(), "not_run": reason}, indent=2))
        print(f"keycloak_tokens: not run: {reason}", file=sys.stderr)
        return 3

    for stale in PATHS.base.glob("decisions.db*"):
        stale.unlink()
    stack.stage_export(PATHS.export)
    stack.stage_feed(PATHS.risk)
    stack.start_bridge(PATHS)
    try:
        stack.keycloak("start", PATHS)
        acme = Acme(stack.KEYCLOAK_URL, PATHS.bridge_url)
        ungoverned_twin(acme)
        governed_claims = acme.claims(acme.client_credentials("billing-bot")["access_token"])
        plain_claims = acme.claims(acme.client_credentials(PLAIN)["access_token"])
        assert "authz_decision_id" in governed_claims and "authz_decision_id" not in plain_claims, "the twin must be ungoverned"
        for client_id in ("billing-bot", PLAIN):  # warm-up: JIT, connection pools, caches
            phase(acme, client_id, args.clients, 5)
        measured: list[dict[str, Any]] = []
        for r in range(rounds):
            sides = (PLAIN, "billing-bot") if r % 2 == 0 else ("billing-bot", PLAIN)
            result: dict[str, Any] = {}
            for kind, clients, length in (("throughput", args.clients, seconds), ("latency", 1, latency_seconds)):
                for client_id in sides:
                    result[f"{kind}_{'governed' if client_id == 'billing-bot' else 'ungoverned'}"] = phase(acme, client_id, clients, length)
            result["throughput_ratio"] = result["throughput_governed"]["per_second"] / result["throughput_ungoverned"]["per_second"]
            result["added_p50_ms"] = result["latency_governed"]["p50_ms"] - result["latency_ungoverned"]["p50_ms"]
            result["added_p99_ms"] = result["latency_governed"]["p99_ms"] - result["latency_ungoverned"]["p99_ms"]
            errors = sum(v["errors"] for v in result.values() if isinstance(v, dict))
            plain, governed = result["latency_ungoverned"], result["latency_governed"]
            print(
                f"round {r + 1}: {args.clients} clients: ungoverned {result['throughput_ungoverned']['per_second']}/s, "
                f"governed {result['throughput_governed']['per_second']}/s, ratio {result['throughput_ratio']:.3f}; "
                f"1 client: p50 {plain['p50_ms']} -> {governed['p50_ms']} ms ({result['added_p50_ms']:+.2f}), "
                f"p99 {plain['p99_ms']} -> {governed['p99_ms']} ms ({result['added_p99_ms']:+.2f}); {errors} errors"
            )
            measured.append(result)
    finally:
        stack.keycloak("stop", PATHS)
        stack.stop_bridge(PATHS)

    summary = {key: spread([r[key] for r in measured]) for key in ("throughput_ratio", "added_p50_ms", "added_p99_ms")}
    summary["errors"] = sum(v["errors"] for r in measured for v in r.values() if isinstance(v, dict))
    for side in ("governed", "ungoverned"):
        summary[f"tokens_per_s_{side}"] = spread([r[f"throughput_{side}"]["per_second"] for r in measured])
        summary[f"p50_ms_{side}"] = spread([r[f"latency_{side}"]["p50_ms"] for r in measured])
        summary[f"p99_ms_{side}"] = spread([r[f"latency_{side}"]["p99_ms"] for r in measured])
    report = {
        "benchmark": "keycloak_tokens",
        "date": now_utc(),
        "machine": f"{platform.machine()}, {os.cpu_count()} vCPU",
        "clients": args.clients,
        "phase_seconds": seconds,
        "latency_phase_seconds": latency_seconds,
        "rounds": rounds,
        "decision_log_sync": os.environ.get("KPB_STACK_DECISION_LOG_SYNC", "full"),
        "targets": TARGETS,
        "summary": summary,
        # the pre-issue-13 keys, as medians over the rounds
        "throughput_ratio": round(summary["throughput_ratio"]["median"], 3),
        "added_p50_ms": round(summary["added_p50_ms"]["median"], 2),
        "phases": measured,
    }
    (OUT / "keycloak.json").write_text(json.dumps(report, indent=2))

    def line(label: str, figure: dict[str, Any], target: str) -> None:
        each = ", ".join(f"{v:.3g}" for v in figure["rounds"])
        print(f"  {label:<52} median {figure['median']:.3g} (min {figure['min']:.3g}, max {figure['max']:.3g}; rounds {each})   {target}")

    print("summary")
    line(f"tokens/s governed / ungoverned, {args.clients} clients", summary["throughput_ratio"], "target >= 0.85")
    line("added latency per governed token, 1 client, p50 ms", summary["added_p50_ms"], "target <= 2 ms")
    line("added latency per governed token, 1 client, p99 ms", summary["added_p99_ms"], "target <= 5 ms")
    if summary["errors"]:
        print(f"  WARNING: {summary['errors']} token requests failed")
    return 0


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
