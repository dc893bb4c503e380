"""What the benchmark scripts share: their percentile, their spread over rounds, their way of
running load threads, and their wrk driver (the load generator that is not the bottleneck).

``run_wrk`` runs Debian's ``wrk`` (4.1) with one thread against one URL for a fixed time. For a
POST it streams the requests from a pool file (``write_pool``: one pre-built request per line),
so each request can carry its own signature and nonce, which wrk's Lua cannot compute. wrk's
Lua ``done`` hook writes the summary as JSON; nothing is scraped from its text output.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

WRK = "/usr/bin/wrk"


def percentile(values: Sequence[float], q: float) -> float:
    """The value at rank ``int(q * n)`` of the sorted values (clamped to the last); 0 < q < 1."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "rounds"}`` of one figure measured once per round.

    Raises ``ValueError`` when ``values`` is empty."""
    if not values:
        raise ValueError("no rounds measured")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": list(values)}


def run_threads(target: Callable[..., Any], arguments: Sequence[tuple[Any, ...]]) -> float:
    """Run ``target(*args)`` in one thread per entry of ``arguments``, all at once; return the
    wall-clock seconds from the first start to the last join."""
    threads = [threading.Thread(target=target, args=args) for args in arguments]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def have_wrk() -> bool:
    """True when ``wrk`` is installed where Debian puts it."""
    return os.access(WRK, os.X_OK) or shutil.which("wrk") is not None


def write_pool(path: Path, lines: Iterable[tuple[dict[str, str], bytes]]) -> int:
    """Write requests for ``run_wrk``'s pool: one ``headers-json<TAB>body`` line each (the body
    must not contain a newline or a tab; compact JSON does not). Returns the number written."""
    count = 0
    with open(path, "wb") as out:
        for headers, body in lines:
            if b"\n" in body or b"\t" in body:
                raise ValueError("a pooled body must be one line without tabs")
            out.write(json.dumps(headers, separators=(",", ":")).encode() + b"\t" + body + b"\n")
            count += 1
    return count


# The pool line's headers are a flat JSON object of strings; Lua has no JSON parser, so the
# script reads the pairs with a pattern (header names and values here never hold quotes).
_LUA = r"""
local out_path = [[%(out)s]]
local pool_path = [[%(pool)s]]
local method, path = "%(method)s", "%(path)s"
local threads = {}
exhausted = 0
setup = function(thread) table.insert(threads, thread) end
if pool_path ~= "" then
  local pool
  init = function(args) pool = assert(io.open(pool_path, "rb")) end
  request = function()
    local line = pool:read("*l")
    if line == nil then
      -- more requests than pooled: start over (the server answers a repeat as a replay, counted
      -- as a non-2xx) and say so; the caller sizes the pool to make this not happen
      exhausted = exhausted + 1
      pool:seek("set", 0)
      line = pool:read("*l")
    end
    local tab = line:find("\t", 1, true)
    local headers = {}
    for name, value in line:sub(1, tab - 1):gmatch('"([^"]+)":"([^"]*)"') do headers[name] = value end
    return wrk.format(method, path, headers, line:sub(tab + 1))
  end
end
done = function(summary, latency, requests)
  local ex = 0
  for _, t in ipairs(threads) do ex = ex + (t:get("exhausted") or 0) end
  local e = summary.errors
  local f = assert(io.open(out_path, "w"))
  f:write(string.format(
    '{"requests": %%d, "duration_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, ' ..
    '"non_2xx": %%d, "timeouts": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d, "exhausted": %%d}',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, ex))
  f:close()
end
"""


def run_wrk(url: str, connections: int, seconds: float, *, method: str = "GET", pool: Path | None = None) -> dict[str, Any]:
    """Run wrk (one thread, ``connections`` keep-alive connections) for ``seconds`` against ``url``.

    With ``pool`` (see ``write_pool``), each request is the next pooled line sent as ``method``
    to ``url``'s path. Returns wrk's counts and latency percentiles (``p50_ms``, ``p99_ms``,
    ...), ``ok`` (2xx answers), ``per_s`` (2xx answers per second), ``errors`` (socket errors,
    timeouts and non-2xx), ``exhausted`` (times the pool ran out), and ``generator_cpu_ms``
    (wrk's own user+system CPU per request: it shows whether the generator could be the limit).

    Raises:
        RuntimeError: wrk is not installed, failed, or wrote no summary.
    """
    wrk = WRK if os.access(WRK, os.X_OK) else shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    path = urlsplit(url).path or "/"
    with tempfile.TemporaryDirectory(prefix="kpb-wrk-") as work:
        out, script = Path(work) / "summary.json", Path(work) / "script.lua"
        script.write_text(_LUA % {"out": out, "pool": pool or "", "method": method, "path": path})
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        completed = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if completed.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed (exit {completed.returncode}): {completed.stderr.strip() or completed.stdout.strip()}")
        summary: dict[str, Any] = json.loads(out.read_text())
    duration = summary["duration_us"] / 1e6
    socket_errors = summary["connect_errors"] + summary["read_errors"] + summary["write_errors"] + summary["timeouts"]
    ok = summary["requests"] - summary["non_2xx"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "requests": summary["requests"],
        "ok": ok,
        "seconds": duration,
        "per_s": ok / duration if duration else 0.0,
        "errors": socket_errors + summary["non_2xx"],
        "non_2xx": summary["non_2xx"],
        "exhausted": summary["exhausted"],
        "p50_ms": summary["p50_us"] / 1000,
        "p90_ms": summary["p90_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "max_ms": summary["max_us"] / 1000,
        "generator_cpu_ms": cpu * 1000 / max(summary["requests"], 1),
    }


def commit(root: Path) -> str:
    """Short hash of HEAD, plus " dirty" when the working tree has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head} dirty" if dirty else head
