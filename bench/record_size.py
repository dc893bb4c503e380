"""Bytes on disk per decision (issue 12: <= 1,500 on the acme mix).

    python bench/record_size.py [--records N] [--instants K] [--keep]

Appends N decisions (default 20,000) of the acme request mix to a fresh SQLite log in bench/out/:
the ten example requests, each evaluated at K instants (default 6, 7 minutes apart: the
snapshot's and feed's ages differ), half of the appends recorded with a ``Masker`` on
``subject.email`` and ``context.ip``, every append under a fresh decision id. Then checkpoints the
WAL into the file (``PRAGMA wal_checkpoint(TRUNCATE)``) and reports the file size / N, and where
the bytes are: per table and index (SQLite's ``dbstat``), the decision rows split into their
body, hash-chain and column bytes.

Appends use ``synchronous=normal`` and 8 writer threads: durability does not change the file,
only the time. Results print as text and go to bench/out/record_size.json.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchutil import run_threads
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.decision_log.chain import RecordColumns
from keycloak_policy_bridge.record import Masker
from recordmix import NOW, ROOT, acme_records, commit, fresh, machine, now_utc

OUT = ROOT / "bench" / "out"
GOAL = 1_500
WRITERS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--instants", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the database file (bench/out/record-size.db)")
    args = parser.parse_args()
    total = args.records
    print(f"record size benchmark: {total:,} decisions of the acme mix; {now_utc()}; commit {commit()}")
    print(f"  machine: {machine()}")
    instants = [NOW + timedelta(minutes=7 * k) for k in range(args.instants)]
    policy, plain = acme_records(instants)
    _, masked = acme_records(instants, Masker(("subject.email", "context.ip"), b"bench masking key, 32 bytes long!"))
    templates = [record for pair in zip(plain, masked, strict=True) for record in pair]  # alternate: half masked
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "record-size.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    log = SQLiteDecisionLog(path, synchronous="normal")
    SQLitePolicyStore(path).store_policy(policy.document)
    base = path.stat().st_size + Path(f"{path}-wal").stat().st_size  # schema, meta and the policy
    per_writer = total // WRITERS

    def writer(w: int) -> None:
        for i in range(per_writer):
            n = w * per_writer + i
            log.append(fresh(templates[n % len(templates)], n))

    t0 = time.perf_counter()
    run_threads(writer, [(w,) for w in range(WRITERS)])
    elapsed = time.perf_counter() - t0
    written = per_writer * WRITERS
    log.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        objects = conn.execute("SELECT name, SUM(pgsize), SUM(payload), SUM(unused) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
        lengths = " + ".join(f"ifnull(length({c}), 0)" for c in RecordColumns.NAMES)
        rows = conn.execute(
            f"SELECT SUM(length(body)), SUM(length(prev_hash) + length(hash)), SUM({lengths}), COUNT(*) FROM decisions"
        ).fetchone()
        inputs = conn.execute("SELECT COUNT(*), IFNULL(SUM(length(document)), 0) FROM inputs").fetchone()
    size = path.stat().st_size
    per = size / written
    print(f"  appended {written:,} in {elapsed:.1f} s; file {size:,} bytes after the WAL checkpoint (page size {page_size})")
    print(f"  bytes per decision: {per:,.0f}   goal <= {GOAL:,}: {'met' if per <= GOAL else 'MISSED'}")
    print(f"  (file before the first decision: {base:,} bytes: schema, meta, the stored policy)")
    print("  where the bytes are (dbstat: pages per table or index, / decisions):")
    split: dict[str, Any] = {}
    for name, pages, payload, unused in objects:
        split[name] = {"bytes": pages, "per_decision": pages / written, "payload": payload, "unused": unused}
        if pages / written >= 1:
            print(f"    {name:<28} {pages / written:8,.0f} B   ({payload / written:,.0f} payload, {unused / written:,.0f} unused)")
    body, chain, columns, count = rows
    print(
        f"  a decision row carries on average: body {body / count:,.0f} B, hash chain {chain / count:,.0f} B, "
        f"columns {columns / count:,.0f} B (plus SQLite's record headers)"
    )
    print(f"  inputs: {inputs[0]:,} distinct documents, {inputs[1]:,} bytes in all ({inputs[1] / written:,.1f} B per decision)")
    result = {
        "date": now_utc(),
        "commit": commit(),
        "machine": machine(),
        "records": written,
        "templates": len(templates),
        "file_bytes": size,
        "bytes_per_decision": per,
        "goal": GOAL,
        "split": split,
        "row_average": {"body": body / count, "chain": chain / count, "columns": columns / count},
        "inputs": {"documents": inputs[0], "bytes": inputs[1]},
    }
    (OUT / "record_size.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        path.unlink()
    print(f"  results written to {OUT / 'record_size.json'}")


if __name__ == "__main__":
    main()
