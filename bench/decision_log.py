"""Decision log benchmark (issue 4).

    python bench/decision_log.py [--quick] [--records N] [--writers W] [--rounds R] [--nonces] [--append-only] [--sync normal]

On a fresh SQLite log in bench/out/ (WAL, synchronous=FULL: every commit is fsynced):
  * append: W threads append acme decision records (``kpb-decision/2``: about 600 bytes stored,
    inputs stored once) through the group-committing ``SQLiteDecisionLog.append``; durable appends/s
    (target >= 5,000/s); with ``--nonces`` each append also records a signed request's nonce
    (the shared replay check, ``decision_log.Nonce``), as the service does for signed requests;
    the records of a round are built before its clock starts (building a record is the
    service's work, not the log's);
  * bare SQLite of the same bytes, in the same run (issue 13): the stored bodies of the same
    records (``record.encode`` of each record's document, what the log stores per record)
    inserted into a plain table (rowid and body only, no other index) of a second file in the
    same directory, WAL, synchronous=FULL, 32 rows per commit, one thread. The N records are
    appended in R rounds (default 3), each round timing the log and then the bare table, or the
    other way round in odd rounds, so that drift falls on both; per round the ratio log/bare
    (target >= 0.5, with >= 5,000 appends/s), then the median and min-max over the rounds;
  * verify: ``verify()`` over all N records, with every recorded input and reference
    (target: 1,000,000 in <= 60 s);
  * query: ``query(Query(subject=..., limit=100))`` for random subjects, p50/p99 (target: a
    subject query over 1,000,000 records <= 50 ms);
  * replay (issue 13): replay streamed from the log, as ``kpb replay --log`` does: records read,
    decoded and their inputs resolved from the SQLite file inside the timed region, one process,
    a fresh reader per run (as a new ``kpb replay``). Its own log (``bench/out/replay-<M>.db``):
    M records (``--replay-records``, default 5,000) of the acme mix, each request evaluated at its
    own instant (one second apart) and recorded as the service records it, so that the log
    reproduces exactly (the append phase's records, with their subjects rewritten, would not).
    ``--policy`` (the acme policy as the candidate) and ``--recorded`` (each record's stored
    policy, exact comparison), ``--replay-runs`` runs each (default 3), then one run under cProfile:
    the share of time inside ``engine.evaluate`` and where the rest goes. Target >= 10,000/s.
    ``--replay-only`` skips the other phases.

Results print as text and go to bench/out/decision_log.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import percentile, run_threads, spread  # noqa: E402
from keycloak_policy_bridge.decision_log import Nonce, Query, SQLiteDecisionLog, SQLiteDecisionReader, SQLitePolicyStore  # noqa: E402
from keycloak_policy_bridge.record import DecisionRecord, encode, to_document  # noqa: E402
from keycloak_policy_bridge.replay import replay, reproduce  # noqa: E402
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


def round_records(records: list[DecisionRecord], first: int, count: int) -> list[DecisionRecord]:
    """Records ``first`` .. ``first + count - 1`` of the run (distinct ids, instants, subjects)."""
    rng = random.Random(first)
    return [variant(records[n % len(records)], n, rng) for n in range(first, first + count)]


def measure_appends(log: SQLiteDecisionLog, batch: list[DecisionRecord], first: int, writers: int, nonces: bool = False) -> dict[str, Any]:
    """Append ``batch`` (records ``first`` .. of the run) from ``writers`` threads, each taking
    every ``writers``-th record: durable appends/s and the process CPU per append."""
    errors: list[str] = []
    start = int(time.time())

    def writer(w: int) -> None:
        for i in range(w, len(batch), writers):
            n = first + i
            nonce = Nonce(os.urandom(32), start + 300, start + n // 1000) if nonces else None  # ~1,000 requests a second
            try:
                log.append(batch[i], nonce)
            except Exception as exc:  # noqa: BLE001 - counted, not fatal to the benchmark
                errors.append(repr(exc))

    cpu0 = time.process_time()
    elapsed = run_threads(writer, [(w,) for w in range(writers)])
    cpu = time.process_time() - cpu0
    written = len(batch) - len(errors)
    return {"records": written, "writers": writers, "seconds": elapsed, "per_s": written / elapsed, "errors": len(errors), "cpu_s": cpu}


BARE_ROWS_PER_COMMIT = 32


def bare_inserts(conn: sqlite3.Connection, blobs: list[bytes]) -> dict[str, Any]:
    """Insert ``blobs`` into the bare table, ``BARE_ROWS_PER_COMMIT`` rows per transaction, one
    thread: rows/s."""
    t0 = time.perf_counter()
    for i in range(0, len(blobs), BARE_ROWS_PER_COMMIT):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bare (body) VALUES (?)", [(b,) for b in blobs[i : i + BARE_ROWS_PER_COMMIT]])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    return {"records": len(blobs), "seconds": elapsed, "per_s": len(blobs) / elapsed}


def open_bare(path: Path) -> sqlite3.Connection:
    """A fresh bare table: WAL, synchronous=FULL, no index beyond the rowid."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE bare (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return conn


def compare_appends(
    log: SQLiteDecisionLog, records: list[DecisionRecord], total: int, args: argparse.Namespace, bare_path: Path
) -> dict[str, Any]:
    """The append phase in ``args.rounds`` rounds, each with the bare baseline of the same bytes
    (module docstring); prints one line per round and returns the append figures."""
    bare = open_bare(bare_path)
    rounds: list[dict[str, Any]] = []
    sizes = [total // args.rounds + (1 if r < total % args.rounds else 0) for r in range(args.rounds)]
    first = 0
    try:
        for r, count in enumerate(sizes):
            batch = round_records(records, first, count)
            blobs = [encode(to_document(record)[0]) for record in batch]
            if r % 2 == 0:
                logged, plain = measure_appends(log, batch, first, args.writers, args.nonces), bare_inserts(bare, blobs)
            else:
                plain = bare_inserts(bare, blobs)
                logged = measure_appends(log, batch, first, args.writers, args.nonces)
            ratio = logged["per_s"] / plain["per_s"]
            rounds.append({"log": logged, "bare": plain, "ratio": ratio})
            failed = logged["errors"]
            print(
                f"  round {r + 1}  log {logged['per_s']:,.0f}/s ({failed} errors), bare SQLite {plain['per_s']:,.0f}/s, ratio {ratio:.3f}"
            )
            first += count
    finally:
        bare.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{bare_path}{suffix}").unlink(missing_ok=True)
    written = sum(r["log"]["records"] for r in rounds)
    seconds = sum(r["log"]["seconds"] for r in rounds)
    return {
        "records": written,
        "writers": args.writers,
        "seconds": seconds,
        "per_s": written / seconds,
        "errors": sum(r["log"]["errors"] for r in rounds),
        "cpu_ms_per_append": sum(r["log"]["cpu_s"] for r in rounds) * 1000 / max(written, 1),
        "log_per_s": spread([r["log"]["per_s"] for r in rounds]),
        "bare_per_s": spread([r["bare"]["per_s"] for r in rounds]),
        "ratio": spread([r["ratio"] for r in rounds]),
        "bare": {
            "table": "id INTEGER PRIMARY KEY, body BLOB",
            "journal_mode": "WAL",
            "synchronous": "FULL",
            "rows_per_commit": BARE_ROWS_PER_COMMIT,
        },
        "targets": {"ratio": 0.5, "per_s": 5000},
        "rounds": rounds,
    }


# -- replay streamed from the log (issue 13) ------------------------------------------------------

REPLAY_TARGET = 10_000


def replay_log(count: int) -> tuple[Any, Path]:
    """(the acme policy, a log of ``count`` acme records as the service records them: the ten
    requests evaluated at each of ``count / 10`` instants one second apart, in time order, each
    under its own id), built by 16 threads through group commit, synchronous=NORMAL (this file's
    durability is not measured)."""
    instants = -(-count // 10)
    policy, by_request = acme_records([NOW + timedelta(seconds=i) for i in range(instants)])
    in_time = [by_request[r * instants + i] for i in range(instants) for r in range(len(by_request) // instants)]
    records = [fresh(record, n) for n, record in enumerate(in_time[:count])]
    path = OUT / f"replay-{count}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    log = SQLiteDecisionLog(path, synchronous="normal")
    SQLitePolicyStore(path).store_policy(policy.document)
    run_threads(lambda w: [log.append(records[i]) for i in range(w, count, 16)], [(w,) for w in range(16)])
    log.close()
    return policy, path


def replay_once(path: Path, policy: Any, mode: str) -> Any:
    """One streamed run over a fresh reader: ``replay.replay`` with ``policy`` (``--policy``) or
    ``replay.reproduce`` with the log's stored policies (``--recorded``)."""
    records = SQLiteDecisionReader(path).iterate(Query())
    return replay(records, policy) if mode == "policy" else reproduce(records, SQLitePolicyStore(path))


def replay_profile(path: Path, policy: Any) -> dict[str, float]:
    """One ``--policy`` run under cProfile: each part's share of the profiled time (cProfile
    inflates Python-heavy code more than C, so the parts outside evaluate read high)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(replay_once, path, policy, "policy")
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]

    def cum(path: str, name: str) -> float:
        """The cumulative seconds of function ``name`` in the file ending in ``path``."""
        return float(sum(row[3] for (file, _, function), row in stats.items() if function == name and file.endswith(path)))

    total, evaluate = cum("bench/decision_log.py", "replay_once"), cum("keycloak_policy_bridge/engine.py", "evaluate")
    parts = {
        "evaluate": evaluate,
        "read rows (SQLite)": cum("~", "<method 'fetchmany' of 'sqlite3.Cursor' objects>"),
        "inflate + JSON parse": cum("record/codec.py", "decode"),
        "document to record": cum("record/__init__.py", "load_record"),
        "request, recorded inputs": cum("keycloak_policy_bridge/reevaluate.py", "reevaluate") - evaluate,
        "compare": cum("keycloak_policy_bridge/replay.py", "compare"),
    }
    parts["rest (loop, report)"] = total - sum(parts.values())
    return {name: seconds / total for name, seconds in parts.items()}


def measure_replay(count: int, runs: int) -> dict[str, Any]:
    """The replay phase (module docstring): prints its lines and returns its figures."""
    policy, path = replay_log(count)
    figures: dict[str, Any] = {"records": count, "log": path.name}
    for mode in ("policy", "recorded"):
        walls, cpus = [], []
        for _ in range(runs):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            report = replay_once(path, policy, mode)
            walls.append(count / (time.perf_counter() - wall0))
            cpus.append(count / (time.process_time() - cpu0))
            if (report.replayed, report.changed, report.errors) != (count, 0, 0):
                raise SystemExit(f"replay --{mode}: {report.replayed} replayed, {report.changed} changed, {report.errors} errors")
        figures[mode] = {"per_s": spread(walls), "cpu_per_s": spread(cpus)}
        print(
            f"  replay streamed from the log: {statistics.median(walls):,.0f}/s on one core   target >= {REPLAY_TARGET:,}/s"
            f"   (kpb replay --{mode}, {count:,} records, {runs} runs: {', '.join(f'{w:,.0f}' for w in walls)}/s; "
            f"CPU time {statistics.median(cpus):,.0f}/s)"
        )
    shares = replay_profile(path, policy)
    figures["profile_shares"] = shares
    print(
        f"  replay profile (cProfile, --policy): evaluate {shares['evaluate']:.0%}, outside {1 - shares['evaluate']:.0%}: "
        + ", ".join(f"{name} {share:.0%}" for name, share in shares.items() if name != "evaluate")
    )
    return figures


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
    parser.add_argument("--rounds", type=int, default=3, help="append rounds, each with the bare-SQLite baseline of the same bytes")
    parser.add_argument("--replay-records", type=int, default=5_000, help="records of the replay phase's log")
    parser.add_argument("--replay-runs", type=int, default=3, help="timed runs of each replay mode")
    parser.add_argument("--replay-only", action="store_true", help="run the replay phase only")
    args = parser.parse_args()
    if args.replay_only:
        OUT.mkdir(parents=True, exist_ok=True)
        print(f"decision log benchmark, replay phase; {os.cpu_count()} CPUs, Python {platform.python_version()}")
        figures = measure_replay(args.replay_records, args.replay_runs)
        (OUT / "decision_log_replay.json").write_text(json.dumps(figures, indent=2))
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
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
    appends = compare_appends(log, records, total, args, OUT / f"bare-{total}.db")
    print(
        f"  append   {appends['records']:,} durable appends in {appends['seconds']:.1f} s = {appends['per_s']:,.0f}/s "
        f"({appends['errors']} errors, {appends['cpu_ms_per_append']:.3f} ms CPU each, nonces {'on' if args.nonces else 'off'}, "
        f"sync {args.sync})   target >= 5,000/s"
    )
    low, mid, high = (appends["ratio"][k] for k in ("min", "median", "max"))
    print(
        f"  vs bare  log/bare SQLite of the same bytes: median {mid:.3f} (min {low:.3f}, max {high:.3f}) over {args.rounds} rounds; "
        f"bare {appends['bare_per_s']['median']:,.0f}/s   target >= 0.5 and >= 5,000/s"
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
    result["replay"] = measure_replay(args.replay_records, args.replay_runs)
    (OUT / "decision_log.json").write_text(json.dumps(result, indent=2))
    log.close()
    print(f"  results written to {OUT / 'decision_log.json'}")


if __name__ == "__main__":
    main()
