"""Decision log benchmark (issue 4).

    python bench/decision_log.py [--quick] [--records N] [--writers W] [--nonces] [--append-only] [--sync normal]

On a fresh SQLite log in bench/out/ (WAL, synchronous=FULL: every commit is fsynced):
  * append: W threads append acme decision records (``kpb-decision/2``: about 600 bytes stored,
    inputs stored once) through the group-committing ``SQLiteDecisionLog.append``; durable appends/s
    (target >= 5,000/s); with ``--nonces`` each append also records a signed request's nonce
    (the shared replay check, ``decision_log.Nonce``), as the service does for signed requests;
  * verify: ``verify()`` over all N records, with every recorded input and reference
    (target: 1,000,000 in <= 60 s);
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
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import percentile, run_threads  # noqa: E402
from keycloak_policy_bridge.decision_log import Nonce, Query, SQLiteDecisionLog, SQLitePolicyStore  # noqa: E402
from keycloak_policy_bridge.record import DecisionRecord, encode, to_document  # noqa: E402
from recordmix import NOW, acme_records, fresh  # noqa: E402

OUT = ROOT / "bench" / "out"


def templates() -> tuple[Any, list[DecisionRecord]]:
    """The acme policy and one record of each acme request, evaluated at NOW."""
    return acme_records([NOW])


def variant(template: DecisionRecord, n: int, rng: random.Random) -> DecisionRecord:
    """A distinct record: new id, instant and subject (IGA id and Keycloak user id, so queries
    select realistically among 100,000 subjects); the body stays realistic."""
    record = fresh(template, n, NOW + timedelta(milliseconds=n))
    subject = f"S{rng.randrange(100_000):06d}"
    principals = record.decision.principals
    if principals and principals[0].role == "subject":
        principals = (replace(principals[0], subject_id=subject), *principals[1:])
    request = {**record.request, "subject": {**record.request["subject"], "id": f"kc-{subject}"}}
    return replace(record, request=request, decision=replace(record.decision, principals=principals))


def measure_appends(
    log: SQLiteDecisionLog, records: list[DecisionRecord], total: int, writers: int, nonces: bool = False
) -> dict[str, Any]:
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
    parser.add_argument(
        "--writers", type=int, default=64, help="concurrent appenders (in-flight token requests); group commit batches them"
    )
    parser.add_argument("--nonces", action="store_true", help="record a signed request's nonce with each append (the shared replay check)")
    parser.add_argument("--append-only", action="store_true", help="measure appends only (short runs to compare with and without --nonces)")
    parser.add_argument("--sync", choices=["full", "normal"], default="full", help="the log's synchronous setting (KPB_DECISION_LOG_SYNC)")
    args = parser.parse_args()
    total = args.records or (50_000 if args.quick else 1_000_000)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"decision-log-{total}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(
        f"decision log benchmark: {total:,} records, {args.writers} writer threads; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}"
    )
    policy, records = templates()
    stored = [encode(to_document(r)[0]) for r in records]
    print(f"  record size: {sum(len(b) for b in stored) // len(stored):,} bytes stored on average (inputs stored once, apart)")
    log = SQLiteDecisionLog(path, synchronous=args.sync)
    SQLitePolicyStore(path).store_policy(policy.document)
    cpu0 = time.process_time()
    appends = measure_appends(log, records, total, args.writers, args.nonces)
    appends["cpu_ms_per_append"] = (time.process_time() - cpu0) * 1000 / max(appends["records"], 1)
    print(
        f"  append   {appends['records']:,} durable appends in {appends['seconds']:.1f} s = {appends['per_s']:,.0f}/s "
        f"({appends['errors']} errors, {appends['cpu_ms_per_append']:.3f} ms CPU each, nonces {'on' if args.nonces else 'off'}, "
        f"sync {args.sync})   target >= 5,000/s"
    )
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
    result: dict[str, Any] = {
        "records": total,
        "append": appends,
        "verify_s": verify_s,
        "db_mb": size_mb,
        "query_ms": {"p50": p50, "p99": p99},
    }
    try:
        from keycloak_policy_bridge import replay as replay_module
    except ImportError:
        replay_module = None  # type: ignore[assignment]
    if replay_module is not None and hasattr(replay_module, "replay"):
        sample = log.query(Query(limit=5000))
        t0 = time.perf_counter()
        outcome = replay_module.replay(sample, policy)
        replay_s = time.perf_counter() - t0
        print(
            f"  replay   {len(sample):,} records (recorded inputs, acme policy) in {replay_s:.2f} s = "
            f"{len(sample) / replay_s:,.0f}/s on one core   target >= 5,000/s"
        )
        result["replay"] = {
            "records": len(sample),
            "seconds": replay_s,
            "per_s": len(sample) / replay_s,
            "changed": getattr(outcome, "changed", None),
        }
    (OUT / "decision_log.json").write_text(json.dumps(result, indent=2))
    log.close()
    print(f"  results written to {OUT / 'decision_log.json'}")


if __name__ == "__main__":
    main()
