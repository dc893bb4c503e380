"""gunicorn worker models for `kpb serve`, side by side (security defect 2: slow clients).

    python bench/worker_models.py [--rounds 3] [--seconds 8] [--connections 8] [--slow 60]

Each round starts every candidate in turn (interleaved, so the noise of a shared 2-core VM falls
on all of them), on a free loopback port, insecure dev mode (wrk cannot sign), 2 workers, the
acme alice request, the decision log on disk:

  * ``sync-stock``: ``gunicorn -w 2 -k sync keycloak_policy_bridge.wsgi:app``, the default before
    this change (gunicorn's own sync worker, no read deadlines);
  * ``sync``, ``gthread`` (64 threads, the default): ``kpb serve --worker-class ...`` (the workers
    of ``keycloak_policy_bridge.workers``: read deadlines, JSON errors);
  * ``gevent-stock``: ``gunicorn -w 2 -k gevent ...``, when gevent is installed (it is not a
    dependency of the bridge; measured as the other way not to give a worker to a slow client).

Two phases per start: ``plain`` (wrk alone) and ``slow`` (``--slow`` sockets first sent part of
a request and are held open, half stopping inside the headers and half inside a declared body;
then wrk). Each phase gives wrk's requests/s and latency, the non-2xx and socket errors, and
the server's CPU per request (utime + stime of the master and workers from /proc). Only
loopback traffic; every process started is stopped by its pid. Needs `wrk` (Debian package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from keycloak_policy_bridge.cli.serve import restamped_copy  # noqa: E402

ACME = ROOT / "examples" / "acme"
VENV = ROOT / ".venv" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def candidates(bind: str) -> dict[str, list[str]]:
    serve = [str(VENV / "kpb"), "serve", "--insecure-dev", "--bind", bind, "--workers", "2"]
    return {
        "sync-stock": [
            str(VENV / "gunicorn"),
            "-w",
            "2",
            "-k",
            "sync",
            "-b",
            bind,
            "--keep-alive",
            "75",
            "--graceful-timeout",
            "20",
            "keycloak_policy_bridge.wsgi:app",
        ],
        "sync": [*serve, "--worker-class", "sync"],
        "gthread": [*serve, "--worker-class", "gthread", "--threads", "64"],
        # gunicorn's own gevent worker (no read deadlines; gevent is not a dependency of the bridge)
        "gevent-stock": [
            str(VENV / "gunicorn"),
            "-w",
            "2",
            "-k",
            "gevent",
            "-b",
            bind,
            "--keep-alive",
            "75",
            "--graceful-timeout",
            "20",
            "keycloak_policy_bridge.wsgi:app",
        ],
    }


def has_gevent() -> bool:
    return subprocess.run([str(VENV / "python"), "-c", "import gevent"], capture_output=True).returncode == 0


def cpu_ticks(parent: int) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == parent or fields[1] == str(parent):
            total += int(fields[11]) + int(fields[12])
    return total


def slow_sockets(port: int, count: int) -> list[socket.socket]:
    held = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        if i % 2:
            s.sendall(b"POST /v1/claims HTTP/1.1\r\nHost: bench\r\nContent-Ty")
        else:
            s.sendall(b'POST /v1/claims HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"a":')
        held.append(s)
    return held


def wrk(port: int, connections: int, seconds: int, script: Path) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}/v1/claims"],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout

    def unit_ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
        return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    requests = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,  # wrk prints no rate when nothing was answered
        "requests": int(requests.group(1)) if requests else 0,
        "avg_ms": unit_ms(latency.group(1)) if latency else 0.0,
        "max_ms": unit_ms(latency.group(3)) if latency else 0.0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def run(
    name: str, command: list[str], env: dict[str, str], port: int, args: argparse.Namespace, script: Path
) -> dict[str, dict[str, float]]:
    log = open(Path(env["KPB_DECISION_LOG"]).with_suffix(".log"), "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if json.load(r)["ready"]:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.2)
        for phase in ("plain", "slow"):
            held = slow_sockets(port, args.slow) if phase == "slow" else []
            time.sleep(0.3)
            c0 = cpu_ticks(process.pid)
            figures = wrk(port, args.connections, args.seconds, script)
            ticks = cpu_ticks(process.pid) - c0
            figures["cpu_ms"] = ticks / os.sysconf("SC_CLK_TCK") / max(1, figures["requests"]) * 1000
            for s in held:
                s.close()
            results[phase] = figures
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--slow", type=int, default=60)
    parser.add_argument("--only", nargs="*", help="candidate names (default: all)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kpb-bench-workers-"))
    entitlements = restamped_copy(ACME / "entitlements", work / "entitlements")
    script = work / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{ACME / "requests" / "alice-login.json"}", "rb"); wrk.body = f:read("*a"); f:close()\n'
    )
    print(
        f"{time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
        f"wrk -c{args.connections} {args.seconds}s, {args.slow} slow sockets in the slow phase",
        flush=True,
    )
    table: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(1, args.rounds + 1):
        for name in [n for n in candidates("x") if (not args.only or n in args.only) and (n != "gevent-stock" or has_gevent())]:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
            env.update(
                KPB_INSECURE_DEV="1",
                KPB_POLICY=str(ACME / "policy.json"),
                KPB_ENTITLEMENTS=str(entitlements),
                KPB_DECISION_LOG=str(work / f"{name}-{round_}.db"),
                KPB_LOG_LEVEL="WARNING",
            )
            for phase, figures in run(name, candidates(f"127.0.0.1:{port}")[name], env, port, args, script).items():
                table.setdefault((name, phase), []).append(figures)
                print(
                    f"round {round_} {name:10} {phase:5}: {figures['rps']:7.1f} req/s, avg/max {figures['avg_ms']:.1f} / "
                    f"{figures['max_ms']:.0f} ms, non-2xx {figures['non2xx']}, socket errors {figures['socket_errors']}, "
                    f"CPU {figures['cpu_ms']:.2f} ms/req",
                    flush=True,
                )
    print("\nmedian (min-max) over rounds:")
    for (name, phase), runs in table.items():
        rps = [r["rps"] for r in runs]
        cpu = [r["cpu_ms"] for r in runs]
        print(
            f"{name:10} {phase:5}: {statistics.median(rps):7.1f} req/s ({min(rps):.0f}-{max(rps):.0f}), "
            f"CPU {statistics.median(cpu):.2f} ms/req, max latency {max(r['max_ms'] for r in runs):.0f} ms, "
            f"errors {sum(r['non2xx'] + r['socket_errors'] for r in runs)}"
        )


if __name__ == "__main__":
    main()
