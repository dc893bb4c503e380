"""Entitlement estate benchmark (issues 3 and 14): compiled snapshots at 1 M, 3 M and 10 M rows.

    python bench/entitlements.py [--rows 1000000,3000000,10000000] [--quick] [--workers 2]

Per size N (default 1 M, 3 M and 10 M rows; ``--quick``: 100,000 rows and fewer samples), on a
generated normalized export (``generate``, deterministic and seeded; export ``a`` of N rows,
about 10 per subject, and the next day's ``b`` of 0.95 N rows, kept under
bench/out/entitlements-N and reused while their manifests say the same row count):

  * compile: ``snapshot_compiler.compile_export`` of a live copy of ``a``, timed in a fresh
    interpreter (``--child-compile``) so that the compile child's peak RSS
    (``RUSAGE_CHILDREN.ru_maxrss``) is this compile's alone; the compiled file's size on disk
    and bytes per row (targets: <= 60 s at 10 M rows, <= 200 B/row);
  * in-process latency on the compiled file (``--child-latency``, a fresh interpreter):
    ``resolve(keycloak_user_id=...)`` + ``effective_records`` and ``engine.evaluate`` (the acme
    policy, alice-login.json with the subject swapped), p50/p99, "cold" (the file snapshot's
    identity cache cleared before each sample: every lookup decodes from the file) and "warm"
    (the same 1,000 subjects again and again). At the smallest size only, the export loaded into
    the heap (``load_snapshot``) is measured as the baseline, in blocks of 1,000 samples
    interleaved with the compiled ones, so that ratios come from one run on a noisy host
    (targets: lookup p99 <= 10 us at 10 M rows; engine p50 at 10 M no worse than at 1 M);
  * the whole bridge: a real ``kpb serve`` (gunicorn, ``--workers``, default 2; insecure dev
    mode, no HMAC) on the live directory and the cache the compile step filled, so that it
    starts on the compiled file. A sampler reads ``/proc/PID/smaps_rollup`` of every process of
    the server's tree (master, workers, a worker's compile child) every 0.25 s: PSS, RSS, USS
    (private clean + dirty) summed, and the compiled files mapped by any of them
    (``*.kpbsnap`` in ``/proc/PID/maps``), each counted once at its size on disk. "bound" = the
    PSS of everything but those files (``/proc/PID/smaps``, mapping by mapping) + those files at
    their full size: what the bridge needs if every page of every mapped snapshot is resident,
    the conservative figure (target at 10 M rows, during a reload included: <= 4 GB). The file a
    compile child is writing (``*.partial``) goes through the page cache, reclaimable once
    written and read by no worker: its size is reported beside the bound ("being written").
    Phases: "steady" (one thread posting /v1/claims for random subjects for 5 s) and "reload"
    (from copying ``b`` into the live directory, data file first and manifest last, until 20
    consecutive /readyz answers, each on a new connection and so from any worker, carry the
    new digest and no compile child is left). Two keep-alive threads post /v1/claims during the
    whole reload phase: every non-200 answer or exception is a failure (target: 0).

The live manifests are restamped (``generated_at`` = now, as ``kpb serve``'s demo tooling does):
the seeded exports say 2026-11-28, past the acme policy's freshness limit on a later host
clock, and a bridge that denies everything as stale measures the wrong path. In-process
evaluations use ``generated_at + 6 h`` as their instant, for the compiled and in-memory
snapshot alike. Results print as a table per size and go to bench/out/entitlements.json with
the date, the commit and the machine. Every process started here is stopped by its pid (the
server's process group); the live and cache directories live in a temporary directory that is
removed after each size.
"""

from __future__ import annotations

import argparse
import csv
import gc
import hashlib
import http.client
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import commit, percentile  # noqa: E402
from keycloak_policy_bridge.engine import evaluate  # noqa: E402
from keycloak_policy_bridge.entitlements import COLUMNS, Snapshot  # noqa: E402
from keycloak_policy_bridge.policy import load_policy  # noqa: E402
from keycloak_policy_bridge.request import parse_request  # noqa: E402
from keycloak_policy_bridge.snapshot_compiler import compile_export  # noqa: E402
from keycloak_policy_bridge.snapshot_file import SUFFIX, file_size, open_snapshot_file  # noqa: E402
from keycloak_policy_bridge.snapshot_loader import load_snapshot  # noqa: E402

OUT = ROOT / "bench" / "out"
ACME = ROOT / "examples" / "acme"
MIB = 1024 * 1024
BLOCK = 1000  # samples per interleaved block; also the warm pool's size
SAMPLE_EVERY = 0.25  # seconds between memory samples
TARGETS = {
    "bytes_per_row": 200,
    "bridge_bound_bytes_10m": 4 * 1024**3,
    "compile_seconds_10m": 60.0,
    "lookup_p99_us_10m": 10.0,
    "engine_p50_10m_vs_1m": "no worse",
    "reload_failures": 0,
}


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


# -- exports -------------------------------------------------------------------------------


def ensure_export(directory: Path, rows: int, seed: int) -> int:
    """``generate(directory, rows, seed)`` unless a complete export of that size is there (its
    manifest names ``bench-<rows>`` and was written after the data file); returns its rows."""
    manifest, data = directory / "manifest.json", directory / "entitlements.csv"
    try:
        document = json.loads(manifest.read_text())
        if document["snapshot_id"] == f"bench-{rows}" and data.stat().st_mtime_ns <= manifest.stat().st_mtime_ns:
            return int(sum(f["records"] for f in document["files"]))
    except (OSError, ValueError, KeyError):
        pass
    shutil.rmtree(directory, ignore_errors=True)
    return generate(directory, rows, seed)


def drop_into(source: Path, live: Path) -> None:
    """Copy the export ``source`` into ``live`` as an IGA drop lands: data files first
    (``shutil.copy2``), then the manifest, restamped to now, by an atomic rename."""
    live.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir()):
        if item.is_file() and item.name != "manifest.json":
            shutil.copy2(item, live / item.name)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["generated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    staged = live / "manifest.json.tmp"
    staged.write_text(json.dumps(manifest))
    os.replace(staged, live / "manifest.json")


# -- compile (in a fresh interpreter) --------------------------------------------------------


def child_compile(directory: str, cache: str) -> None:
    """Runs in a fresh interpreter: compile once; print time, the compile child's peak RSS and
    the file's figures as JSON."""
    start = time.perf_counter()
    path, snapshot = compile_export(directory, cache)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "child_peak_rss_mib": peak_kib / 1024,
                "path": str(path),
                "file_bytes": file_size(path),
                "records": snapshot.record_count,
                "subjects": len(snapshot.identities),
                "digest": snapshot.digest,
            }
        )
    )


def run_child(*arguments: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *arguments], check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- in-process latency (in a fresh interpreter) --------------------------------------------


def figures(values: list[float]) -> dict[str, float]:
    return {"p50_us": percentile(values, 0.5), "p99_us": percentile(values, 0.99), "samples": len(values)}


def child_latency(path: str, baseline: str, samples: int) -> None:
    """Runs in a fresh interpreter: lookup and engine latency on the compiled file at ``path``
    and, when ``baseline`` names the export, on the export loaded into the heap, interleaved
    in blocks of ``BLOCK`` samples. Prints the figures as JSON."""
    compiled = open_snapshot_file(path)
    snapshots: dict[str, Snapshot] = {"compiled": compiled}
    if baseline:
        started = time.perf_counter()
        snapshots["memory"] = load_snapshot(baseline)
        load_seconds = time.perf_counter() - started
        assert snapshots["memory"].digest == compiled.digest, "the compiled file and the export disagree"
    now = compiled.generated_at + timedelta(hours=6)
    subjects = len(compiled.identities)
    policy = load_policy(ACME / "policy.json")
    base = json.loads((ACME / "requests" / "alice-login.json").read_text())

    def request(i: int) -> Any:
        doc = json.loads(json.dumps(base))
        doc["subject"].update(id=f"kc-{i}", username=f"user{i}", email=f"user{i}@example.test")
        doc["request_id"] = f"bench-{i}"
        return parse_request(doc)

    rng = random.Random(14)
    randoms = [rng.randrange(subjects) for _ in range(samples)]
    pool = [rng.randrange(subjects) for _ in range(BLOCK)]
    warms = [pool[j % BLOCK] for j in range(samples)]
    lookup_keys = {"cold": [f"kc-{i}" for i in randoms], "warm": [f"kc-{i}" for i in warms]}
    parsed = {i: request(i) for i in {*randoms, *pool}}
    engine_requests = {"cold": [parsed[i] for i in randoms], "warm": [parsed[i] for i in warms]}

    def lookup(snapshot: Snapshot, key: str) -> None:
        identity = snapshot.resolve(keycloak_user_id=key).identity
        assert identity is not None, key
        identity.effective_records(now)

    def decide(snapshot: Snapshot, req: Any) -> None:
        evaluate(policy, snapshot, req, now)

    def block(snapshot: Snapshot, run: Callable[[Snapshot, Any], None], inputs: list[Any], cold: bool, out: list[float]) -> None:
        cache: dict[str, Any] | None = getattr(snapshot.identities, "_cache", None)  # the file snapshot's decoded identities
        if not cold:
            for item in inputs[:BLOCK]:  # a cold block in between emptied the cache: warm the pool again, untimed
                run(snapshot, item)
        clock = time.perf_counter_ns
        for item in inputs:
            if cold and cache is not None:
                cache.clear()
            t0 = clock()
            run(snapshot, item)
            out.append((clock() - t0) / 1000)

    timings: dict[str, list[float]] = {}
    variants = [
        (f"{kind} {name} {temperature}", snapshot, run, inputs[temperature], temperature == "cold")
        for kind, run, inputs in (("lookup", lookup, lookup_keys), ("engine", decide, engine_requests))
        for name, snapshot in snapshots.items()
        for temperature in ("cold", "warm")
    ]
    gc.collect()
    for n in range(0, samples, BLOCK):
        order = variants[n // BLOCK % len(variants) :] + variants[: n // BLOCK % len(variants)]  # rotated: drift falls on all
        for label, snapshot, run, inputs, cold in order:
            block(snapshot, run, inputs[n : n + BLOCK], cold, timings.setdefault(label, []))
    result: dict[str, Any] = {label: figures(values) for label, values in timings.items()}
    result["now"] = now.isoformat()
    if baseline:
        result["memory_load_seconds"] = load_seconds
    print(json.dumps(result))


# -- the whole bridge ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(root: int) -> list[tuple[int, int]]:
    """``(pid, depth)`` of ``root`` and every descendant (depth 0 is ``root``), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    tree, frontier, depth = [(root, 0)], [root], 0
    while frontier:
        depth += 1
        frontier = [c for p in frontier for c in children.get(p, [])]
        tree += [(c, depth) for c in frontier]
    return tree


def rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss, USS (Private_Clean + Private_Dirty) of ``pid`` in bytes, and "own": the Pss of
    every mapping but compiled snapshot files (finished or being written); None if it is gone."""
    values = {"rss": 0, "pss": 0, "uss": 0, "own": 0}
    in_snapshot = False
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as smaps:
            for line in smaps:
                key, _, rest = line.partition(" ")
                if not key.endswith(":"):  # a mapping's header: address range, perms, ..., path
                    in_snapshot = SUFFIX in line or ".partial" in line
                    continue
                if key in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
                    size = int(rest.split()[0]) * 1024
                    if key == "Rss:":
                        values["rss"] += size
                    elif key == "Pss:":
                        values["pss"] += size
                        values["own"] += 0 if in_snapshot else size
                    else:
                        values["uss"] += size
    except (OSError, ValueError, IndexError):
        return None
    return values


def mapped_snapshots(pid: int) -> set[str]:
    """The compiled snapshot files ``pid`` maps (a pruned one still mapped is named ``... (deleted)``)."""
    found = set()
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            if SUFFIX in line:
                found.add(line.split(None, 5)[5].removesuffix(" (deleted)"))
    except (OSError, IndexError):
        pass
    return found


class MemorySampler:
    """Samples the server's process tree every ``SAMPLE_EVERY`` s; keeps each phase's maxima."""

    def __init__(self, root: int, cache: Path) -> None:
        self.root, self.cache = root, cache
        self.phase: str | None = None
        self.phases: dict[str, dict[str, Any]] = {}
        self.sizes: dict[str, int] = {}  # snapshot file -> bytes on disk, remembered after it is pruned
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, phase: str) -> None:
        self.phase = phase
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> dict[str, Any]:
        for file in self.cache.glob(f"*{SUFFIX}"):
            try:
                self.sizes[str(file)] = file_size(file)
            except OSError:
                pass
        totals = {"rss": 0, "pss": 0, "uss": 0, "own": 0}
        processes: dict[str, int] = {}
        mapped: set[str] = set()
        for pid, depth in process_tree(self.root):
            own = rollup(pid)
            if own is None:
                continue
            role = ("master", "worker", "compile child")[min(depth, 2)]
            processes[role] = processes.get(role, 0) + 1
            for key in totals:
                totals[key] += own[key]
            mapped |= mapped_snapshots(pid)
        for path in mapped - self.sizes.keys():
            try:
                self.sizes[path] = file_size(path)
            except OSError:
                self.sizes[path] = 0  # pruned before this sampler saw it: counted in USS only
        # A compile child's file in the making: written through the page cache (reclaimable once
        # written back, and not read by any worker), so reported beside the bound, not in it.
        partial = 0
        for file in self.cache.glob("*.partial"):
            try:
                partial += file_size(file)
            except OSError:
                pass
        mapped_bytes = sum(self.sizes[p] for p in mapped)
        return {
            **totals,
            "mapped_files": len(mapped),
            "mapped_bytes": mapped_bytes,
            "partial_bytes": partial,
            "bound": totals["own"] + mapped_bytes,
            "processes": processes,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            if phase is not None:
                now = self.sample()
                top = self.phases.setdefault(phase, {"samples": 0})
                top["samples"] += 1
                for key in ("rss", "pss", "uss", "own", "mapped_bytes", "partial_bytes", "bound"):
                    top[f"max_{key}"] = max(top.get(f"max_{key}", 0), now[key])
                if now["bound"] >= top.get("at_max_bound", {}).get("bound", -1):
                    top["at_max_bound"] = now
                top["compile_child_seen"] = top.get("compile_child_seen", False) or "compile child" in now["processes"]
            self._stop.wait(SAMPLE_EVERY)


class ClaimsLoad:
    """``threads`` keep-alive connections posting /v1/claims for random subjects until stopped;
    counts answered evaluations and failures (a non-200 answer or an exception)."""

    def __init__(self, port: int, threads: int, subjects: int, tag: str) -> None:
        self.port, self.subjects, self.tag = port, subjects, tag
        self.base = json.loads((ACME / "requests" / "alice-login.json").read_text())
        self.evaluations = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        self._started = 0.0

    def start(self) -> ClaimsLoad:
        self._started = time.perf_counter()
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        seconds = time.perf_counter() - self._started
        return {
            "evaluations": self.evaluations,
            "failures": len(self.failures),
            "per_s": self.evaluations / seconds,
            "seconds": seconds,
            "failures_sample": self.failures[:3],
        }

    def _run(self, n: int) -> None:
        rng = random.Random(f"{self.tag}-{n}")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        count = 0
        while not self._stop.is_set():
            i = rng.randrange(self.subjects)
            doc = {**self.base, "request_id": f"bench-{self.tag}-{n}-{count}"}
            doc["subject"] = {**self.base["subject"], "id": f"kc-{i}", "username": f"user{i}", "email": f"user{i}@example.test"}
            count += 1
            try:
                conn.request("POST", "/v1/claims", body=json.dumps(doc).encode(), headers=headers)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}: {body[:200]!r}")
                with self._lock:
                    self.evaluations += 1
            except Exception as exc:  # noqa: BLE001 - any failure is the result we count
                with self._lock:
                    self.failures.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """One /readyz on a new connection (so any worker may answer): status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def served(body: dict[str, Any]) -> tuple[str | None, int]:
    entitlements = body.get("entitlements", {}).get("entitlements", {})
    return entitlements.get("digest"), int(entitlements.get("records") or 0)


def measure_bridge(live: Path, cache: Path, work: Path, export_b: Path, subjects: int, rows_b: int, workers: int) -> dict[str, Any]:
    """Start ``kpb serve`` on ``live`` (compiled into ``cache`` already), sample its memory while
    steady and through a hot reload to ``export_b``, with load; stop it. See the module docstring."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(
        KPB_INSECURE_DEV="1",
        KPB_POLICY=str(ACME / "policy.json"),
        KPB_ENTITLEMENTS=str(live),
        KPB_SNAPSHOT_CACHE=str(cache),
        KPB_DECISION_LOG=str(work / "d.db"),
        KPB_WATCH_INTERVAL_SECONDS="1",
    )
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.log", "wb"),  # noqa: SIM115 - the child holds it; closed when the child exits
        start_new_session=True,
    )
    sampler = MemorySampler(server.pid, cache)
    sampler.start("startup")
    result: dict[str, Any] = {"workers": workers}
    try:
        deadline = time.time() + 120 + 60 * subjects / 100_000  # generous: a bridge without a compiled file compiles first
        while True:
            try:
                status, body = readyz(port)
                if status == 200:
                    break
            except (OSError, ValueError):
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"kpb serve did not become ready; see {work / 'server.log'}")
            time.sleep(0.2)
        result["ready_seconds"] = time.perf_counter() - started
        old_digest, _ = served(body)
        sampler.phase = "steady"
        load = ClaimsLoad(port, 1, subjects, "steady").start()
        time.sleep(5.0)
        result["steady_load"] = load.stop()
        sampler.phase = None

        load = ClaimsLoad(port, 2, subjects, "reload")
        sampler.phase = "reload"
        load.start()
        t0 = time.perf_counter()
        drop_into(export_b, live)
        result["copy_seconds"] = time.perf_counter() - t0
        streak, streak_started, polls = 0, 0.0, 0
        deadline = time.time() + 120 + 60 * subjects / 100_000
        while True:
            polls += 1
            at = time.perf_counter()
            try:
                status, body = readyz(port)
                digest, records = served(body)
            except (OSError, ValueError):
                status, digest, records = 0, None, 0
            if status == 200 and digest is not None and digest != old_digest:
                if streak == 0:
                    streak_started = at
                streak += 1
            else:
                streak = 0
            if streak >= 20 and not any(depth >= 2 for _, depth in process_tree(server.pid)):
                break
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the bridge did not serve the new export in time; see {work / 'server.log'}")
            time.sleep(0.05)
        result["reload_seconds"] = streak_started - t0  # copy start -> first answer after the last old one
        result["reload_confirmed_seconds"] = time.perf_counter() - t0
        result["reload_polls"] = polls
        result["reload_load"] = load.stop()
        sampler.phase = None
        result["new_digest"], result["new_records"] = digest, records
        assert records == rows_b, f"the bridge serves {records} records, export b has {rows_b}"
    finally:
        sampler.stop()
        os.killpg(server.pid, signal.SIGTERM)  # the process group this script started (gunicorn master and workers)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    result["memory"] = sampler.phases
    return result


# -- one size, the report ------------------------------------------------------------------


def measure_size(rows: int, baseline: bool, samples: int, workers: int) -> dict[str, Any]:
    exports = OUT / f"entitlements-{rows}"
    rows_a = ensure_export(exports / "a", rows, 20261128)
    rows_b = ensure_export(exports / "b", int(rows * 0.95), 99)  # the next day's export: 5% fewer rows
    work = Path(tempfile.mkdtemp(prefix=f"kpb-bench-entitlements-{rows}-")).resolve()
    try:
        live, cache = work / "live", work / "cache"
        drop_into(exports / "a", live)  # before the compile: the key holds each file's mtime and inode
        compiled = run_child("--child-compile", str(live), str(cache))
        compiled["bytes_per_row"] = compiled["file_bytes"] / compiled["records"]
        latency = run_child("--child-latency", compiled["path"], str(live) if baseline else "", str(samples))
        bridge = measure_bridge(live, cache, work, exports / "b", compiled["subjects"], rows_b, workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows_a, "rows_b": rows_b, "compile": compiled, "latency": latency, "bridge": bridge}


def report(size: dict[str, Any]) -> None:
    c, lat, b = size["compile"], size["latency"], size["bridge"]
    print(f"\n== {size['rows']:,} rows ({c['subjects']:,} subjects); reload to {size['rows_b']:,} rows; {b['workers']} workers")
    print(
        f"  compile            {c['seconds']:7.2f} s, compile child peak RSS {c['child_peak_rss_mib']:,.0f} MiB; "
        f"file {c['file_bytes'] / MIB:,.1f} MiB = {c['bytes_per_row']:.0f} B/row   targets: <= 60 s at 10 M, <= 200 B/row"
    )
    for kind in ("lookup", "engine"):
        for name in ("compiled", "memory"):
            for temperature in ("cold", "warm"):
                f = lat.get(f"{kind} {name} {temperature}")
                if f is None:
                    continue
                what = {"cold": "random, cache cleared" if name == "compiled" else "random", "warm": "same 1,000"}[temperature]
                target = {"lookup": "target p99 <= 10 us at 10 M", "engine": "target p50 at 10 M <= at 1 M"}[kind]
                print(
                    f"  {kind} {name:8s} {temperature} p50 {f['p50_us']:7.2f} us, p99 {f['p99_us']:7.2f} us  ({what}; {f['samples']:,})"
                    + (f"   {target}" if name == "compiled" and temperature == "cold" else "")
                )
        if f"{kind} memory cold" in lat:
            ratios = [
                f"{t} p50 {lat[f'{kind} compiled {t}']['p50_us'] / lat[f'{kind} memory {t}']['p50_us']:.2f}x, "
                f"p99 {lat[f'{kind} compiled {t}']['p99_us'] / lat[f'{kind} memory {t}']['p99_us']:.2f}x"
                for t in ("cold", "warm")
            ]
            print(f"  {kind} compiled/memory   {'; '.join(ratios)} (interleaved blocks, one run)")
    print(
        f"  bridge ready       {b['ready_seconds']:.1f} s after start (compile child seen: {b['memory']['startup']['compile_child_seen']})"
    )
    for phase in ("steady", "reload"):
        m = b["memory"][phase]
        at = m["at_max_bound"]
        print(
            f"  memory {phase:7s}     bound {m['max_bound'] / MIB:7,.0f} MiB (PSS w/o snapshots {at['own'] / MIB:,.0f} + snapshots "
            f"{at['mapped_bytes'] / MIB:,.0f} MiB x {at['mapped_files']}), PSS {m['max_pss'] / MIB:,.0f} MiB, "
            f"being written {m['max_partial_bytes'] / MIB:,.0f} MiB, "
            f"RSS {m['max_rss'] / MIB:,.0f} MiB (maxima of {m['samples']} samples; at max bound: "
            + ", ".join(f"{n} {r}" for r, n in at["processes"].items())
            + ")"
            + ("   target at 10 M: bound <= 4,096 MiB" if phase == "reload" else "")
        )
    s, r = b["steady_load"], b["reload_load"]
    print(f"  steady load        {s['evaluations']:,} evaluations ({s['per_s']:,.0f}/s, 1 thread), failed {s['failures']}")
    print(
        f"  reload             {b['reload_seconds']:.1f} s copy -> every worker on the new digest (copy {b['copy_seconds']:.1f} s, "
        f"confirmed at {b['reload_confirmed_seconds']:.1f} s; compile child seen: {b['memory']['reload']['compile_child_seen']}); "
        f"{r['evaluations']:,} evaluations ({r['per_s']:,.0f}/s, 2 threads), failed {r['failures']}   target: 0 failed"
    )
    for failure in r["failures_sample"]:
        print(f"    failure: {failure}")


def machine() -> dict[str, Any]:
    model, mem_kib = "unknown", 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "uname": " ".join(platform.uname()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows and 5,000 samples (a smoke run)")
    parser.add_argument("--rows", help="comma-separated sizes (default 1000000,3000000,10000000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of the bridge (default 2, kpb serve's)")
    parser.add_argument("--child-compile", nargs=2, metavar=("DIR", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-latency", nargs=3, metavar=("FILE", "BASELINE", "SAMPLES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_compile:
        child_compile(*args.child_compile)
        return
    if args.child_latency:
        child_latency(args.child_latency[0], args.child_latency[1], int(args.child_latency[2]))
        return
    sizes = [int(r) for r in args.rows.split(",")] if args.rows else [100_000] if args.quick else [1_000_000, 3_000_000, 10_000_000]
    samples = 5_000 if args.quick else 20_000
    started = datetime.now(UTC)
    info = machine()
    head = commit(ROOT)
    print(
        f"entitlements benchmark: {', '.join(f'{r:,}' for r in sizes)} rows; {started:%Y-%m-%d %H:%M}Z, commit {head}; "
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['mem_total_gib']} GiB, Python {info['python']}"
    )
    results = []
    for rows in sizes:
        size = measure_size(rows, baseline=rows == min(sizes), samples=samples, workers=args.workers)
        report(size)
        results.append(size)
    by_rows = {r["rows"]: r for r in results}
    if 1_000_000 in by_rows and 10_000_000 in by_rows:
        p50 = [by_rows[n]["latency"]["engine compiled cold"]["p50_us"] for n in (1_000_000, 10_000_000)]
        print(f"\nengine p50 (cold): {p50[0]:.1f} us at 1 M, {p50[1]:.1f} us at 10 M ({p50[1] / p50[0]:.2f}x)   target: no worse at 10 M")
    OUT.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "entitlements",
        "issue": 14,
        "date": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": head,
        "machine": info,
        "quick": args.quick,
        "samples": samples,
        "targets": TARGETS,
        "sizes": results,
    }
    (OUT / "entitlements.json").write_text(json.dumps(document, indent=2))
    print(f"results written to {OUT / 'entitlements.json'}")


if __name__ == "__main__":
    main()
