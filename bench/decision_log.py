"""Decision log benchmark (issue 4).

    python bench/decision_log.py [--quick] [--records N] [--writers W] [--nonces] [--append-only] [--sync normal]

On a fresh SQLite log in bench/out/ (WAL, synchronous=FULL: every commit is fsynced):
  * append: W threads append acme decision records (about 5 KB each, with recorded inputs)
    through the group-committing ``SQLiteDecisionLog.append``; durable appends/s
    (target >= 5,000/s); with ``--nonces`` each append also records a signed request's nonce
    (the shared replay check, ``decision_log.Nonce``), as the service does for signed requests;
  * verify: ``verify()`` over all N records (target: 1,000,000 in <= 60 s);
  * query: ``query(Query(subject=..., limit=100))`` for random subjects, p50/p99 (target: a
    subject query over 1,000,000 records <= 50 ms);
  * replay: ``replay.replay`` of 5,000 records with their recorded policy and inputs, one
    core (target >= 5,000 decisions/s), when the replay module is present.

Results print as text and go to bench/out/decision_log.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import percentile, run_threads  # noqa: E402
from keycloak_policy_bridge.context_feed import load_feed  # noqa: E402
from keycloak_policy_bridge.decision_log import Nonce, Query, SQLiteDecisionLog  # noqa: E402
from keycloak_policy_bridge.decision_record import build_record  # noqa: E402
from keycloak_policy_bridge.engine import evaluate  # noqa: E402
from keycloak_policy_bridge.policy import load_policy  # noqa: E402
from keycloak_policy_bridge.request import parse_request  # noqa: E402
from keycloak_policy_bridge.snapshot_loader import load_snapshot  # noqa: E402
from keycloak_policy_bridge.ulid import make_ulid  # noqa: E402

ACME = ROOT / "examples" / "acme"
OUT = ROOT / "bench" / "out"
NOW = datetime(2026, 11, 28, 8, 0, tzinfo=timezone.utc)


def templates() -> tuple[Any, list[dict[str, Any]]]:
    policy = load_policy(ACME / "policy.json")
    snapshot = load_snapshot(ACME / "entitlements")
    feeds = {"risk": load_feed(ACME / "feeds" / "risk")}
    records = []
    for i, path in enumerate(sorted((ACME / "requests").glob("*.json"))):
        request = parse_request(json.loads(path.read_text()))
        decision = evaluate(policy, snapshot, request, NOW, feeds)
        records.append(build_record(f"T{i}", decision, request, snapshot, feeds))
    return policy, records


def variant(template: dict[str, Any], n: int, rng: random.Random) -> dict[str, Any]:
    """A distinct record: new id, instant and subject keys (the body stays realistic)."""
    moment = NOW + timedelta(milliseconds=n)
    body = dict(template)
    body["decision_id"] = make_ulid(moment, n.to_bytes(10, "big"))
    body["evaluated_at"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body["subject_id"] = f"S{rng.randrange(100_000):06d}"
    body["keycloak_user_id"] = f"kc-{body['subject_id']}"
    return body


def measure_appends(log: SQLiteDecisionLog, records: list[dict[str, Any]], total: int, writers: int,
                    nonces: bool = False) -> dict[str, Any]:  # fmt: skip
    per_writer = total // writers
    errors: list[str] = []
    start = int(time.time())

    def writer(w: int) -> None:
        rng = random.Random(w)
        for i in range(per_writer):
            n = w * per_writer + i
            nonce = Nonce(os.urandom(32), start + 300, start + n // 1000) if nonces else None  # ~1,000 requests a second
            try:
                log.append(variant(records[n % len(records)], n, rng), nonce)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal to the benchmark
                errors.append(repr(exc))

    elapsed = run_threads(writer, [(w,) for w in range(writers)])
    written = per_writer * writers - len(errors)
    return {"records": written, "writers": writers, "seconds": elapsed, "per_s": written / elapsed, "errors": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50,000 records instead of 1,000,000")
    parser.add_argument("--records", type=int)
    parser.add_argument("--writers", type=int, default=64, help="concurrent appenders (in-flight token requests); group commit batches them")
    parser.add_argument("--nonces", action="store_true", help="record a signed request's nonce with each append (the shared replay check)")
    parser.add_argument("--append-only", action="store_true", help="measure appends only (short runs to compare with and without --nonces)")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="the log's synchronous setting (KPB_DECISION_LOG_SYNC)")
    args = parser.parse_args()
    total = args.records or (50_000 if args.quick else 1_000_000)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"decision-log-{total}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"decision log benchmark: {total:,} records, {args.writers} writer threads; {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}")  # fmt: skip
    policy, records = templates()
    print(f"  record size: {sum(len(json.dumps(r)) for r in records) // len(records):,} bytes on average")
    log = SQLiteDecisionLog(path, synchronous=args.sync)
    log.store_policy(policy.document)
    cpu0 = time.process_time()
    appends = measure_appends(log, records, total, args.writers, args.nonces)
    appends["cpu_ms_per_append"] = (time.process_time() - cpu0) * 1000 / max(appends["records"], 1)
    print(f"  append   {appends['records']:,} durable appends in {appends['seconds']:.1f} s = {appends['per_s']:,.0f}/s "
          f"({appends['errors']} errors, {appends['cpu_ms_per_append']:.3f} ms CPU each, nonces {'on' if args.nonces else 'off'}, "
          f"sync {args.sync})   target >= 5,000/s")  # fmt: skip
    if args.append_only:
        log.close()
        return
    size_mb = path.stat().st_size / 1e6
    t0 = time.perf_counter()
    report = log.verify()
    verify_s = time.perf_counter() - t0
    print(f"  verify   {report.records:,} records in {verify_s:.1f} s ({size_mb:,.0f} MB database)   target: 1,000,000 <= 60 s")
    rng = random.Random(3)
    timings = []
    for _ in range(200):
        subject = f"S{rng.randrange(100_000):06d}"
        t0 = time.perf_counter()
        log.query(Query(subject=subject, limit=100))
        timings.append((time.perf_counter() - t0) * 1000)
    p50, p99 = percentile(timings, 0.5), percentile(timings, 0.99)
    print(f"  query    subject, limit 100: p50 {p50:.2f} ms, p99 {p99:.2f} ms   target <= 50 ms")
    result: dict[str, Any] = {"records": total, "append": appends, "verify_s": verify_s, "db_mb": size_mb,
                              "query_ms": {"p50": p50, "p99": p99}}  # fmt: skip
    try:
        from keycloak_policy_bridge import replay as replay_module
    except ImportError:
        replay_module = None  # type: ignore[assignment]
    if replay_module is not None and hasattr(replay_module, "replay"):
        sample = log.query(Query(limit=5000))
        t0 = time.perf_counter()
        outcome = replay_module.replay(sample, policy)
        replay_s = time.perf_counter() - t0
        print(f"  replay   {len(sample):,} records (recorded inputs, acme policy) in {replay_s:.2f} s = "
              f"{len(sample) / replay_s:,.0f}/s on one core   target >= 5,000/s")  # fmt: skip
        result["replay"] = {"records": len(sample), "seconds": replay_s, "per_s": len(sample) / replay_s,
                            "changed": getattr(outcome, "changed", None)}  # fmt: skip
    (OUT / "decision_log.json").write_text(json.dumps(result, indent=2))
    log.close()
    print(f"  results written to {OUT / 'decision_log.json'}")


if __name__ == "__main__":
    main()
