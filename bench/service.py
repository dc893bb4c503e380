"""Service benchmark (issue 5): `kpb serve` under load on loopback.

    python bench/service.py [--quick] [--workers 2] [--worker-class sync|gthread] [--threads 8]

Starts `kpb serve` (gunicorn, sync workers by default, decision log on, HMAC caller authentication)
on a free loopback port with fresh copies of the acme snapshot and risk feed, then:
  * saturation: C client threads, each on one keep-alive connection, sign and send acme claims
    requests back to back for D seconds: decisions/s (target >= 1,500/s);
  * fixed rate: 500 requests/s paced across the clients for D seconds: latency p50/p99
    (target p99 <= 20 ms);
  * CPU per decision: the server processes' user+system CPU time (from /proc) over the
    saturation phase divided by the decisions answered.
The load generator runs on the same 2-core machine and competes with the server for CPU; its
figures are a floor, not the server's ceiling. Results go to bench/out/service.json.
"""

from __future__ import annotations

import argparse
import http.client
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchutil import percentile, run_threads  # noqa: E402
from keycloak_policy_bridge.cli.serve import restamped_copy  # noqa: E402
from keycloak_policy_bridge.signature import signing_headers  # noqa: E402

ACME = ROOT / "examples" / "acme"
OUT = ROOT / "bench" / "out"
SECRET = bytes(range(32))


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


def run_clients(port: int, clients: int, seconds: float, rate: float | None) -> dict[str, Any]:
    payloads = bodies()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    interval = clients / rate if rate else 0.0

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        i = n
        next_at = time.perf_counter() + (interval * n / clients if rate else 0)
        mine = []
        while time.perf_counter() < stop_at:
            if rate:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_at += interval
            # a unique request_id, as the mapper sends: identical signed requests are replays
            body = json.dumps({**payloads[i % len(payloads)], "request_id": f"bench-{n}-{i}"}).encode()
            i += clients
            headers = signing_headers(SECRET, "k1", "POST", "/v1/claims", body, int(time.time()))
            headers["Content-Type"] = "application/json"
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/claims", body=body, headers=headers)
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
        conn.close()

    elapsed = run_threads(client, [(n,) for n in range(clients)])
    pick = lambda q: percentile(latencies, q) * 1000 if latencies else None  # noqa: E731
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "per_s": len(latencies) / elapsed,
        "errors": len(errors),
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": max(latencies) * 1000 if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 s phases instead of 20 s")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (gthread only)")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], default="sync")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--log-dir", type=Path, help="where the decision log lives (default: a temp dir; /dev/shm shows the cost of fsync)")
    args = parser.parse_args()
    seconds = 5.0 if args.quick else 20.0
    work = Path(tempfile.mkdtemp(prefix="kpb-bench-service-"))
    entitlements = restamped_copy(ACME / "entitlements", work / "entitlements")
    risk = restamped_copy(ACME / "feeds" / "risk", work / "risk")
    port = free_port()
    env = {
        **os.environ,
        "KPB_HMAC_SECRETS": f"k1={SECRET.hex()}",
        "KPB_FEEDS": f"risk={risk}",
        "KPB_DECISION_LOG": str((args.log_dir or work) / f"d-{os.getpid()}.db"),
        "KPB_POLICY": str(ACME / "policy.json"),
        "KPB_ENTITLEMENTS": str(entitlements),
    }
    env.pop("KPB_INSECURE_DEV", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keycloak_policy_bridge.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
            "--worker-class",
            args.worker_class,
        ],
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
            if time.time() > deadline:
                raise SystemExit("kpb serve did not become ready")
            time.sleep(0.2)
        print(
            f"service benchmark: kpb serve, {args.workers} {args.worker_class} workers"
            + (f" x {args.threads} threads" if args.worker_class == "gthread" else "")
            + f", {args.clients} clients, "
            f"{seconds:.0f} s phases; {os.cpu_count()} CPUs"
        )
        run_clients(port, args.clients, 2.0, None)  # warm-up
        pids = server_pids(server.pid)
        cpu0 = cpu_seconds(pids)
        saturation = run_clients(port, args.clients, seconds, None)
        cpu = cpu_seconds(pids) - cpu0
        saturation["server_cpu_ms_per_decision"] = cpu / saturation["requests"] * 1000 if saturation["requests"] else None
        print(
            f"  saturation   {saturation['per_s']:,.0f} decisions/s ({saturation['errors']} errors), p50 {saturation['p50_ms']:.1f} ms, "
            f"p99 {saturation['p99_ms']:.1f} ms; server CPU {saturation['server_cpu_ms_per_decision']:.2f} ms/decision   "
            "target >= 1,500/s"
        )
        paced = run_clients(port, args.clients, seconds, 500.0)
        print(
            f"  500/s paced  {paced['per_s']:,.0f}/s achieved ({paced['errors']} errors), p50 {paced['p50_ms']:.1f} ms, "
            f"p99 {paced['p99_ms']:.1f} ms, max {paced['max_ms']:.1f} ms   target p99 <= 20 ms"
        )
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "service.json").write_text(
            json.dumps(
                {"saturation": saturation, "paced_500": paced, "workers": args.workers, "threads": args.threads, "clients": args.clients},
                indent=2,
            )
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
