"""Entitlement loading benchmark (issue 3).

    python bench/entitlements.py [--quick] [--rows N]

Measures, on a generated normalized export (deterministic, seeded):
  * load: ``snapshot_loader.load_snapshot`` of a 1,000,000-row CSV snapshot, wall time and peak
    RSS, in a fresh child process so that the RSS is the load's alone (targets: <= 15 s, <= 1.5 GB);
  * lookup: ``Snapshot.resolve`` by each join key and ``Identity.effective_records`` (target:
    subject lookup p99 <= 5 us);
  * reload under load: evaluation threads run the acme-style policy against ``store.snapshot``
    while the main thread reloads alternating snapshots; every evaluation must succeed
    (target: no failed evaluation), and evaluations/s during reloads are reported.

Results print as text and go to bench/out/entitlements.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import percentile  # noqa: E402
from keycloak_policy_bridge.engine import evaluate  # noqa: E402
from keycloak_policy_bridge.entitlements import COLUMNS  # noqa: E402
from keycloak_policy_bridge.policy import load_policy  # noqa: E402
from keycloak_policy_bridge.request import parse_request  # noqa: E402
from keycloak_policy_bridge.snapshot_loader import LoadOptions, load_snapshot  # noqa: E402
from keycloak_policy_bridge.snapshot_store import SnapshotStore  # noqa: E402

OUT = ROOT / "bench" / "out"
NOW = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)


def generate(directory: Path, rows: int, seed: int = 20261128) -> int:
    """Write a normalized snapshot of ``rows`` rows (about 10 per subject) and its manifest."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "entitlements.csv"
    subjects = max(1, rows // 10)
    written = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for s in range(subjects):
            kind = "human" if s % 20 else ("service_account" if s % 40 else "ai_agent")
            sid = f"S{s:07d}"
            owner = "" if kind == "human" else f"S{(s + 1):07d}"
            count = rows - written if s == subjects - 1 else min(rows - written, rng.choice((3, 5, 8, 10, 12, 15, 20)))
            status = "active" if rng.random() > 0.04 else rng.choice(("inactive", "terminated", "suspended"))
            for _ in range(count):
                source = f"app{rng.randrange(200):03d}"
                writer.writerow(
                    [
                        sid,
                        kind,
                        status,
                        source,
                        rng.choice(("app_role", "app_role", "app_role", "group", "tenant")),
                        f"{source}:role{rng.randrange(60)}",
                        owner,
                        f"kc-{s}",
                        f"client-{s}" if kind != "human" else "",
                        f"user{s}",
                        f"user{s}@example.test",
                        f"acct{s}",
                        rng.choice(("none", "low", "medium", "high")),
                        rng.choice(("direct", "role", "access_profile")),
                        f"R{rng.randrange(900)}",
                        "active" if rng.random() > 0.1 else "pending",
                        "" if rng.random() < 0.8 else "2026-01-01T00:00:00Z",
                        "" if rng.random() < 0.9 else "2027-06-30T00:00:00Z",
                        f"2026-{rng.randrange(1, 12):02d}-{rng.randrange(1, 28):02d}T00:00:00Z",
                    ]
                )
                written += 1
            if written >= rows:
                break
    data_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "spec": "kpb-entitlements/1",
        "snapshot_id": f"bench-{rows}",
        "source_system": "bench",
        "generated_at": "2026-11-28T02:00:00Z",
        "complete": True,
        "files": [{"name": "entitlements.csv", "records": written, "sha256": data_hash}],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return written


def child_load(directory: str) -> None:
    """Runs in a fresh interpreter: load once, print wall time and peak RSS as JSON."""
    start = time.perf_counter()
    snapshot = load_snapshot(directory)
    elapsed = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": elapsed, "peak_rss_mib": peak_kib / 1024, "records": snapshot.record_count, "subjects": len(snapshot.identities)}
        )
    )


def measure_load(directory: Path, repeats: int) -> list[dict[str, Any]]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--child-load", str(directory)], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def measure_lookups(directory: Path, samples: int) -> dict[str, Any]:
    snapshot = load_snapshot(directory)
    rng = random.Random(7)
    ids = list(snapshot.identities)
    results: dict[str, Any] = {}
    keys = {
        "keycloak_user_id": lambda i: {"keycloak_user_id": f"kc-{int(i[1:])}"},
        "username": lambda i: {"username": f"USER{int(i[1:])}"},
        "email": lambda i: {"email": f"user{int(i[1:])}@example.test"},
        "miss (all keys)": lambda i: {"keycloak_user_id": "nope", "keycloak_client_id": "nope", "username": "nope", "email": "nope"},
    }
    for label, make in keys.items():
        args = [make(rng.choice(ids)) for _ in range(samples)]
        timings = []
        for kwargs in args:
            t0 = time.perf_counter_ns()
            snapshot.resolve(**kwargs)
            timings.append((time.perf_counter_ns() - t0) / 1000)
        results[label] = {"p50_us": percentile(timings, 0.5), "p99_us": percentile(timings, 0.99)}
    timings = []
    for subject_id in (rng.choice(ids) for _ in range(samples)):
        t0 = time.perf_counter_ns()
        identity = snapshot.identity(subject_id)
        assert identity is not None
        identity.effective_records(NOW)
        timings.append((time.perf_counter_ns() - t0) / 1000)
    results["identity + effective_records"] = {"p50_us": percentile(timings, 0.5), "p99_us": percentile(timings, 0.99)}
    return results


def measure_reload_under_load(directory_a: Path, directory_b: Path, reloads: int, threads: int) -> dict[str, Any]:
    """Evaluate continuously while the store swaps between two snapshots."""
    live = directory_a.parent / "live"
    if live.exists():
        for child in live.iterdir():
            child.unlink()
    else:
        live.mkdir()
    for child in directory_a.iterdir():
        (live / child.name).write_bytes(child.read_bytes())
    store = SnapshotStore(live, clock=lambda: datetime.now(UTC), options=LoadOptions(allow_drop=True))
    assert store.reload().accepted
    policy = load_policy(ROOT / "examples" / "acme" / "policy.json")
    base = json.loads((ROOT / "examples" / "acme" / "requests" / "alice-login.json").read_text())
    requests = []
    for s in range(0, 2000, 7):
        doc = json.loads(json.dumps(base))
        doc["subject"].update(id=f"kc-{s}", username=f"user{s}", email=f"user{s}@example.test")
        requests.append(parse_request(doc))
    failures: list[str] = []
    done = [0] * threads
    stop = threading.Event()

    def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                snapshot = store.snapshot
                assert snapshot is not None
                evaluate(policy, snapshot, requests[i % len(requests)], NOW)
                done[n] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the result we count
                failures.append(repr(exc))
            i += 1

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    accepted = 0
    reload_seconds = []
    for r in range(reloads):
        source = directory_b if r % 2 == 0 else directory_a
        for child in source.iterdir():
            (live / child.name).write_bytes(child.read_bytes())
        t0 = time.perf_counter()
        accepted += store.reload().accepted
        reload_seconds.append(time.perf_counter() - t0)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    return {
        "reloads": reloads,
        "accepted": accepted,
        "evaluations": sum(done),
        "failed_evaluations": len(failures),
        "evaluations_per_s": sum(done) / elapsed,
        "reload_p50_s": percentile(reload_seconds, 0.5),
        "failures_sample": failures[:3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--child-load")
    args = parser.parse_args()
    if args.child_load:
        child_load(args.child_load)
        return
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    work = OUT / f"entitlements-{rows}"
    print(f"entitlements benchmark: {rows:,} rows; {os.cpu_count()} CPUs, Python {platform.python_version()}")
    started = datetime.now(UTC)
    written = generate(work / "a", rows)
    generate(work / "b", int(rows * 0.95), seed=99)  # the next day's export: 5% fewer rows
    print(f"  generated {written:,} rows ({(work / 'a' / 'entitlements.csv').stat().st_size / 1e6:.0f} MB CSV)")
    loads = measure_load(work / "a", repeats=3 if not args.quick else 2)
    best = min(loads, key=lambda r: r["seconds"])
    all_runs = ", ".join(f"{r['seconds']:.2f}" for r in loads)
    print(
        f"  load_snapshot      best {best['seconds']:.2f} s of {len(loads)} (all: {all_runs}), "
        f"peak RSS {max(r['peak_rss_mib'] for r in loads):.0f} MiB; {best['records']:,} records, {best['subjects']:,} subjects"
    )
    print("    targets (1M rows): <= 15 s, <= 1536 MiB")
    lookups = measure_lookups(work / "a", samples=20_000 if not args.quick else 5_000)
    for label, figures in lookups.items():
        print(f"  lookup {label:28s} p50 {figures['p50_us']:.2f} us, p99 {figures['p99_us']:.2f} us")
    print("    target: subject lookup p99 <= 5 us")
    reload = measure_reload_under_load(work / "a", work / "b", reloads=4 if not args.quick else 4, threads=2)
    print(
        f"  reload under load  {reload['accepted']}/{reload['reloads']} reloads accepted (p50 {reload['reload_p50_s']:.1f} s), "
        f"{reload['evaluations']:,} evaluations ({reload['evaluations_per_s']:,.0f}/s), failed {reload['failed_evaluations']}"
    )
    print("    target: no failed evaluation")
    OUT.mkdir(exist_ok=True)
    result = {
        "started": started.isoformat(),
        "rows": rows,
        "load": loads,
        "lookups": lookups,
        "reload": reload,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    (OUT / "entitlements.json").write_text(json.dumps(result, indent=2))
    print(f"  results written to {OUT / 'entitlements.json'}")


if __name__ == "__main__":
    main()
