"""What the decision-log benchmarks share: the acme request mix as decision records, and where
a run happened (machine, date, commit).

The mix: the ten requests of ``examples/acme/requests`` (logins, refresh, client credentials,
token exchange; permits and denies), evaluated with the acme policy, snapshot and risk feed by
the engine, recorded by ``record.build_record`` exactly as the service records them.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.policy import Policy, load_policy
from keycloak_policy_bridge.record import DecisionRecord, Masker, build_record
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.ulid import make_ulid

ROOT = Path(__file__).resolve().parent.parent
ACME = ROOT / "examples" / "acme"
NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
TOKEN_TTL_SECONDS = 300  # the acme realm's access-token lifetime


def acme_records(instants: Sequence[datetime], masker: Masker | None = None) -> tuple[Policy, list[DecisionRecord]]:
    """The acme policy and a record of each request evaluated at each instant (masked with
    ``masker`` when given), in request order then instant order; decision ids are placeholders
    (``fresh`` gives each append its own)."""
    policy = load_policy(ACME / "policy.json")
    snapshot = load_snapshot(ACME / "entitlements")
    feeds = {"risk": load_feed(ACME / "feeds" / "risk")}
    records = []
    for i, path in enumerate(sorted((ACME / "requests").glob("*.json"))):
        request = parse_request(json.loads(path.read_text()))
        for j, now in enumerate(instants):
            decision = evaluate(policy, snapshot, request, now, feeds)
            records.append(
                build_record(f"T{i}-{j}", decision, request, snapshot, feeds, masker=masker, token_ttl_seconds=TOKEN_TTL_SECONDS)
            )
    return policy, records


def fresh(record: DecisionRecord, n: int, moment: datetime | None = None) -> DecisionRecord:
    """``record`` under a new decision id (a ULID at ``moment``, unique per ``n``), evaluated at
    ``moment`` when given."""
    at = moment or record.evaluated_at
    decision = record.decision if moment is None else replace(record.decision, evaluated_at=moment)
    return replace(record, decision_id=make_ulid(at, n.to_bytes(10, "big")), decision=decision)


def machine() -> str:
    """CPUs, CPU model, OS, Python and SQLite versions."""
    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), ""
        )
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs{f' ({model})' if model else ''}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def commit() -> str:
    """The checked-out commit, read from ``.git`` (uncommitted changes are not detected)."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return "unknown (not a git checkout)"


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
