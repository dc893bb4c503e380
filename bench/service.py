"""Service benchmark (issues 5 and 13): `kpb serve` under load on loopback.

    python bench/service.py [--quick] [--rounds 3] [--seconds S] [--clients 16] [--generator wrk|python]
                            [--workers N] [--worker-class sync|gthread] [--threads T] [--log-dir DIR]

Starts `kpb serve` (gunicorn with `kpb serve`'s own defaults for the worker class, workers and
threads unless a flag says otherwise; decision log on, durable; HMAC caller authentication) on a
free loopback port with fresh copies of the acme snapshot and risk feed, warms it up, then runs R
rounds (default 3) on the SAME server, each of:
  * /healthz saturation: C keep-alive connections send GET /healthz back to back for D seconds:
    req/s, the calibration (what this server and this machine answer when a request costs nothing);
  * /v1/claims saturation: C connections send signed acme claims requests (the ten acme requests
    in turn, each with its own request_id, so each is a new signed request, with the mapper's
    ``Prefer: return=minimal``) back to back:
    decisions/s (target >= 2,000/s) and server CPU per decision;
  * the ratio claims decisions/s / healthz req/s of the round (target >= 0.45); the two
    saturation phases alternate order from round to round, so drift falls on both;
  * fixed rate: 500 signed decisions/s paced across C client threads: latency p50/p99
    (target p99 <= 10 ms), and how far behind its schedule the generator sent.
Each figure is reported per round with its median and min-max.

Load generator: `wrk` (Debian package, one thread) for the saturation phases when installed,
else (or with ``--generator python``) Python threads. The Python generator cannot saturate this
server on a 2-core machine (see bench/README.md); wrk cannot compute an HMAC, so the claims
requests are signed beforehand in Python (a pool of distinct requests with timestamps valid for
the phase, ``benchutil.write_pool``) and wrk's Lua script sends them in turn. The paced phase
runs in Python threads from pre-signed requests (wrk cannot pace). Every process started here is
stopped by its pid (the server's process group, wrk by ``subprocess``).
Results go to bench/out/service.json.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import have_wrk, percentile, run_threads, run_wrk, spread, write_pool  # noqa: E402
from keycloak_policy_bridge.cli.serve import restamped_copy  # noqa: E402
from keycloak_policy_bridge.cli.serve import serve as serve_command  # noqa: E402
from keycloak_policy_bridge.signature import signing_headers  # noqa: E402

ACME = ROOT / "examples" / "acme"
OUT = ROOT / "bench" / "out"
SECRET = bytes(range(32))
KEY_ID = "k1"
PACED_RATE = 500.0
TARGETS = {"ratio": 0.45, "decisions_per_s": 2000.0, "paced_p99_ms": 10.0}
Signed = tuple[dict[str, str], bytes]  # (headers, body) of one signed claims request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def server_pids(parent: int) -> list[int]:
    pids = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(parent):
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return pids


def bodies() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((ACME / "requests").glob("*.json"))]


def signed_requests(tag: str) -> Iterator[Signed]:
    """Endless distinct signed claims requests: the acme requests in turn, each with its own
    ``request_id`` (as the mapper sends: identical signed requests are replays), all signed now."""
    # The body is the compact JSON of the request with the request_id spliced in at the end:
    # one json.dumps per acme request, not per signed request.
    prefixes = []
    for payload in bodies():
        payload.pop("request_id", None)
        prefixes.append(json.dumps(payload, separators=(",", ":"))[:-1].encode() + b',"request_id":"')
    now = int(time.time())
    for i in itertools.count():
        body = prefixes[i % len(prefixes)] + f"bench-{tag}-{i}".encode() + b'"}'
        headers = signing_headers(SECRET, KEY_ID, "POST", "/v1/claims", body, now)
        headers["Content-Type"] = "application/json"
        headers["Prefer"] = "return=minimal"  # as the mapper sends it (docs/service.md section 3.2)
        yield headers, body


def run_clients(
    port: int, clients: int, seconds: float, rate: float | None, path: str = "/v1/claims", pool: Iterator[Signed] | None = None
) -> dict[str, Any]:
    """Python load: ``clients`` threads, one keep-alive connection each, for ``seconds``; back to
    back, or paced at ``rate`` requests/s in all (each thread keeps its own schedule). Claims
    requests come from ``pool`` (pre-signed) or are signed just before they are sent. Returns
    counts, latency percentiles (from send to the end of the answer), the generator's own CPU
    per request (this process) and, when paced, ``lag_ms``: how far behind its schedule a request
    was sent (p50/p99; a thread waits for its answer, so a server slower than the rate shows here
    as well as a starved generator)."""
    payloads = bodies()
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    interval = clients / rate if rate else 0.0

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = n
        next_at = time.perf_counter() + (interval * n / clients if rate else 0)
        mine, late = [], []
        while time.perf_counter() < stop_at:
            if rate:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                late.append(max(0.0, time.perf_counter() - next_at))
                next_at += interval
            method, body, headers = "GET", None, dict[str, str]()
            if path == "/v1/claims":
                method = "POST"
                if pool is not None:
                    with lock:
                        headers, body = next(pool)
                else:
                    # a unique request_id, as the mapper sends: identical signed requests are replays
                    body = json.dumps({**payloads[i % len(payloads)], "request_id": f"bench-{n}-{i}"}).encode()
                    i += clients
                    headers = signing_headers(SECRET, KEY_ID, "POST", "/v1/claims", body, int(time.time()))
                    headers["Content-Type"] = "application/json"
                    headers["Prefer"] = "return=minimal"
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                mine.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted
                with lock:
                    errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with lock:
            latencies.extend(mine)
            lags.extend(late)
        conn.close()

    cpu0 = time.process_time()
    elapsed = run_threads(client, [(n,) for n in range(clients)])
    cpu = time.process_time() - cpu0

    def pick(values: list[float], q: float) -> float | None:
        return percentile(values, q) * 1000 if values else None

    result: dict[str, Any] = {
        "requests": len(latencies),
        "seconds": elapsed,
        "per_s": len(latencies) / elapsed,
        "errors": len(errors),
        "p50_ms": pick(latencies, 0.5),
        "p99_ms": pick(latencies, 0.99),
        "max_ms": max(latencies) * 1000 if latencies else None,
        "generator_cpu_ms": cpu * 1000 / max(len(latencies) + len(errors), 1),
    }
    if rate:
        result["lag_ms"] = {"p50": pick(lags, 0.5), "p99": pick(lags, 0.99)}
    return result


def saturate(port: int, path: str, args: argparse.Namespace, seconds: float, work: Path, expected_per_s: float, tag: str) -> dict[str, Any]:
    """One saturation phase of ``path`` with the chosen generator; with wrk, claims requests come
    from a pool of ``2 * seconds * max(expected_per_s, 3000)`` freshly signed requests (decisions
    cannot outrun ``/healthz``, which ``expected_per_s`` is)."""
    if args.generator == "python":
        return run_clients(port, args.clients, seconds, None, path)
    url = f"http://127.0.0.1:{port}{path}"
    if path != "/v1/claims":
        return run_wrk(url, args.clients, seconds)
    pool_file = work / "pool.txt"
    write_pool(pool_file, itertools.islice(signed_requests(tag), int(2 * seconds * max(expected_per_s, 3000.0))))
    try:
        return run_wrk(url, args.clients, seconds, method="POST", pool=pool_file)
    finally:
        pool_file.unlink()


def measured(name: str, phase: dict[str, Any], cpu: float) -> dict[str, Any]:
    """``phase`` with the server CPU per answered request; prints one line."""
    phase["server_cpu_ms_per_request"] = cpu / phase["requests"] * 1000 if phase["requests"] else None
    generator = f", generator CPU {phase['generator_cpu_ms']:.3f} ms/req" if "generator_cpu_ms" in phase else ""
    warning = f" POOL RAN OUT {phase['exhausted']} TIMES" if phase.get("exhausted") else ""
    print(
        f"    {name:<10} {phase['per_s']:>8,.0f}/s ({phase['errors']} errors{warning}), p50 {phase['p50_ms']:.2f} ms, "
        f"p99 {phase['p99_ms']:.2f} ms; server CPU {phase['server_cpu_ms_per_request'] or 0:.3f} ms/req{generator}"
    )
    return phase


def serve_defaults() -> dict[str, Any]:
    """`kpb serve`'s own defaults for the worker model (read from its click options)."""
    return {p.name: p.default for p in serve_command.params if p.name in ("workers", "threads", "worker_class")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases instead of 20 s")
    parser.add_argument("--seconds", type=float, help="seconds per phase (overrides --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of /healthz, /v1/claims and the paced phase")
    parser.add_argument("--workers", type=int, help="gunicorn workers (default: kpb serve's)")
    parser.add_argument("--threads", type=int, help="threads per gthread worker (default: kpb serve's)")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], help="worker class (default: kpb serve's)")
    parser.add_argument("--clients", type=int, default=16, help="connections of the saturation phases; threads of the paced phase")
    parser.add_argument(
        "--generator", choices=["wrk", "python"], help="saturation load generator (default: wrk when installed, else python threads)"
    )
    parser.add_argument("--log-dir", type=Path, help="where the decision log lives (default: a temp dir; /dev/shm shows the cost of fsync)")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    args.generator = args.generator or ("wrk" if have_wrk() else "python")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    defaults = serve_defaults()
    config = {
        "workers": args.workers or defaults["workers"],
        "worker_class": args.worker_class or defaults["worker_class"],
        "threads": args.threads or defaults["threads"],
    }
    flags = [
        *(["--workers", str(args.workers)] if args.workers else []),
        *(["--threads", str(args.threads)] if args.threads else []),
        *(["--worker-class", args.worker_class] if args.worker_class else []),
    ]
    work = Path(tempfile.mkdtemp(prefix="kpb-bench-service-"))
    entitlements = restamped_copy(ACME / "entitlements", work / "entitlements")
    risk = restamped_copy(ACME / "feeds" / "risk", work / "risk")
    port = free_port()
    env = {
        **os.environ,
        "KPB_HMAC_SECRETS": f"{KEY_ID}={SECRET.hex()}",
        "KPB_FEEDS": f"risk={risk}",
        "KPB_DECISION_LOG": str((args.log_dir or work) / f"d-{os.getpid()}.db"),
        "KPB_POLICY": str(ACME / "policy.json"),
        "KPB_ENTITLEMENTS": str(entitlements),
    }
    env.pop("KPB_INSECURE_DEV", None)
    env.pop("KPB_DECISION_LOG_SYNC", None)  # the durable default
    server = subprocess.Popen(
        [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve", "--bind", f"127.0.0.1:{port}", *flags],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("kpb serve did not become ready")
            time.sleep(0.2)
        print(
            f"service benchmark: kpb serve, {config['workers']} {config['worker_class']} workers"
            + (f" x {config['threads']} threads" if config["worker_class"] == "gthread" else "")
            + f" ({'flags: ' + ' '.join(flags) if flags else 'its defaults'}), HMAC on, durable decision log; "
            f"{args.clients} connections, generator {args.generator}, {args.rounds} rounds of {seconds:.0f} s phases; {os.cpu_count()} CPUs"
        )
        pids = server_pids(server.pid)
        warm_healthz = saturate(port, "/healthz", args, 2.0, work, 0.0, "warm-h")  # warm-up: imports, connections, caches
        saturate(port, "/v1/claims", args, 2.0, work, warm_healthz["per_s"], "warm-c")
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            print(f"  round {r + 1}")
            result: dict[str, Any] = {}
            for name in ("healthz", "claims") if r % 2 == 0 else ("claims", "healthz"):
                cpu0 = cpu_seconds(pids)
                phase = saturate(
                    port, f"/{'healthz' if name == 'healthz' else 'v1/claims'}", args, seconds, work, warm_healthz["per_s"], f"r{r}"
                )
                result[name] = measured(name, phase, cpu_seconds(pids) - cpu0)
            result["ratio"] = result["claims"]["per_s"] / result["healthz"]["per_s"]
            pool = signed_requests(f"p{r}")
            result["paced_500"] = paced = run_clients(port, args.clients, seconds, PACED_RATE, pool=pool)
            print(
                f"    500/s paced {paced['per_s']:,.0f}/s achieved ({paced['errors']} errors), p50 {paced['p50_ms']:.2f} ms, "
                f"p99 {paced['p99_ms']:.2f} ms, max {paced['max_ms']:.1f} ms; generator lag p99 {paced['lag_ms']['p99']:.2f} ms"
            )
            print(f"    ratio claims/healthz {result['ratio']:.3f}")
            rounds.append(result)
        summary = {
            "ratio": spread([r["ratio"] for r in rounds]),
            "decisions_per_s": spread([r["claims"]["per_s"] for r in rounds]),
            "healthz_per_s": spread([r["healthz"]["per_s"] for r in rounds]),
            "server_cpu_ms_per_decision": spread([r["claims"]["server_cpu_ms_per_request"] or 0.0 for r in rounds]),
            "paced_p50_ms": spread([r["paced_500"]["p50_ms"] for r in rounds]),
            "paced_p99_ms": spread([r["paced_500"]["p99_ms"] for r in rounds]),
            "errors": sum(r[k]["errors"] for r in rounds for k in ("healthz", "claims", "paced_500")),
            "pool_exhausted": sum(r["claims"].get("exhausted", 0) for r in rounds),
        }

        def line(label: str, figure: dict[str, Any], fmt: str, target: str) -> None:
            low, high, each = format(figure["min"], fmt), format(figure["max"], fmt), ", ".join(format(v, fmt) for v in figure["rounds"])
            print(f"  {label:<34} median {figure['median']:{fmt}} (min {low}, max {high}; rounds {each})   {target}")

        print("summary")
        line("/v1/claims decisions/s", summary["decisions_per_s"], ",.0f", "target >= 2,000/s")
        line("/healthz req/s (calibration)", summary["healthz_per_s"], ",.0f", "")
        line("ratio claims/healthz", summary["ratio"], ".3f", "target >= 0.45")
        line("server CPU ms per decision", summary["server_cpu_ms_per_decision"], ".3f", "")
        line("p50 at 500 signed decisions/s, ms", summary["paced_p50_ms"], ".2f", "")
        line("p99 at 500 signed decisions/s, ms", summary["paced_p99_ms"], ".2f", "target <= 10 ms")
        if summary["errors"] or summary["pool_exhausted"]:
            failed, exhausted = summary["errors"], summary["pool_exhausted"]
            print(f"  WARNING: {failed} failed requests, the signed pool ran out {exhausted} times: the figures are not valid")
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "service.json").write_text(
            json.dumps(
                {
                    "benchmark": "service",
                    "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "config": {**config, "serve_flags": flags, "clients": args.clients, "generator": args.generator, "seconds": seconds},
                    "targets": TARGETS,
                    "summary": summary,
                    "rounds": rounds,
                    # the pre-issue-13 keys, from the median round of the ratio
                    "saturation": sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]["claims"],
                    "paced_500": sorted(rounds, key=lambda r: r["paced_500"]["p99_ms"])[len(rounds) // 2]["paced_500"],
                    "workers": config["workers"],
                    "threads": config["threads"],
                    "clients": args.clients,
                },
                indent=2,
            )
        )
        print(f"  results written to {OUT / 'service.json'}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the process group this script started (gunicorn master and workers)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
