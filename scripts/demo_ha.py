#!/usr/bin/env python3
"""`make demo-ha`, step 2: tokens keep being minted while a bridge replica is stopped.

    python scripts/demo_ha.py      (the HA stack must be up: python scripts/stack.py up --ha)

(a) with both replicas up, alice logs in (password grant) and billing-bot gets a client-credentials
token: the mapper asks its first bridge URL, replica A; (b) replica A is stopped (SIGTERM) and the
same grants are repeated: each is decided by replica B within the same token request (the mapper
fails over; once A's circuit breaker is open A is skipped without a network call), and the time per
token is shown; (c) every decision of both replicas is in the one PostgreSQL decision log; (d)
replica A is started again. No secret is printed; the database has no password (loopback trust).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from acme_oauth import Acme, governed
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from stack import KEYCLOAK_URL, KPB, ROOT, HaStack, start_bridge, stop_bridge

ROUNDS = 5  # grants per phase and kind: enough to open A's breaker (5 failures) and show the cost after


def mint(acme: Acme, grant: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The claims of one token and the seconds its token request took."""
    started = time.perf_counter()
    token = grant()["access_token"]
    return acme.claims(token), time.perf_counter() - started


def phase(title: str, acme: Acme, reader: PostgresDecisionReader) -> list[str]:
    """Mint ROUNDS password-grant and client-credentials tokens; show each and its record; return the decision ids."""
    print(f"\n== {title}")
    grants: dict[str, Callable[[], dict[str, Any]]] = {
        "alice (password grant)": lambda: acme.login("alice"),
        "billing-bot (client credentials)": lambda: acme.client_credentials("billing-bot"),
    }
    ids, times = [], []
    for round_number in range(ROUNDS):
        for label, grant in grants.items():
            claims, seconds = mint(acme, grant)
            decision_id = claims["authz_decision_id"]
            record = reader.get(decision_id)  # the shared log: raises if the decision is not there
            attempt = record.request.get("attempt")
            ids.append(decision_id)
            times.append(seconds)
            if round_number == 0 or attempt is not None:
                roles = ", ".join(governed(claims).get("roles", []))
                note = f", attempt {attempt} (after failover)" if attempt is not None else ""
                print(f"   {label:34} {seconds * 1000:6.1f} ms  roles {roles}")
                print(f"     decision {decision_id} in the PostgreSQL log: {record.effect}{note}")
    median, longest = statistics.median(times) * 1000, max(times) * 1000
    print(f"   {len(times)} tokens, every one governed; ms per token: median {median:.1f}, max {longest:.1f}")
    return ids


def list_log(ha: HaStack, reader: PostgresDecisionReader, ids: list[str]) -> None:
    """The newest decisions of the one log, by `kpb decisions list` when it reads KPB_DATABASE_URL."""
    replica = ha.replicas[0]
    assert replica.database_url is not None
    help_text = subprocess.run([str(KPB), "decisions", "list", "--help"], capture_output=True, text=True, check=True).stdout
    if "KPB_DATABASE_URL" in help_text:
        env = {**os.environ, "KPB_DATABASE_URL": replica.database_url}
        env.pop("KPB_DECISION_LOG", None)
        listed = subprocess.run(
            [str(KPB), "decisions", "list", "--limit", str(len(ids))], capture_output=True, text=True, env=env, cwd=ROOT, check=True
        )
        print(f"   $ KPB_DATABASE_URL={replica.database_url} kpb decisions list --limit {len(ids)}")
        print("\n".join("   " + line for line in listed.stdout.splitlines()))
        missing = [i for i in ids if i not in listed.stdout]
    else:
        print("   (this kpb's `decisions list` does not read KPB_DATABASE_URL yet: read with PostgresDecisionReader.count/get)")
        missing = []
        for decision_id in ids:
            try:
                reader.get(decision_id)
            except Exception:  # noqa: BLE001 - reported below
                missing.append(decision_id)
    print(
        f"   {len(ids)} decisions minted in this demo, {len(ids) - len(missing)} of them in the one log ({reader.count()} records in all)"
    )
    if missing:
        raise SystemExit(f"   decisions missing from the shared log: {missing}")


def main() -> int:
    ha = HaStack()
    a, b = ha.replicas
    assert a.database_url is not None
    acme = Acme(KEYCLOAK_URL, b.bridge_url)
    reader = PostgresDecisionReader(a.database_url)
    print(f"Keycloak {KEYCLOAK_URL} (its own database on PostgreSQL 127.0.0.1:{ha.pg_port}/keycloak), mapper bridge URLs {ha.bridge_urls}")
    print(f"replica A {a.bridge_url} and replica B {b.bridge_url} share one decision log: PostgreSQL 127.0.0.1:{ha.pg_port}/kpb")
    try:
        before = phase("(a) both replicas up: the mapper asks replica A, its first URL", acme, reader)
        stop_bridge(a)
        after = phase(f"(b) replica A stopped (SIGTERM to {a.bridge_url}): every token decided by replica B", acme, reader)
        print("\n== (c) the one decision log holds the decisions of both replicas")
        list_log(ha, reader, before + after)
    finally:
        print("\n== (d) replica A started again")
        start_bridge(a)
        reader.close()
    print(f"\nThe HA stack stays up: Keycloak {KEYCLOAK_URL} (realm acme), bridges {ha.bridge_urls}; `make stop` ends it and PostgreSQL.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
