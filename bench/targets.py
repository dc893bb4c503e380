"""Every target figure of issue 13 in one table: runs the benchmarks, reads their JSON, prints it.

    python bench/targets.py            the quick variants, a few minutes (`make bench-quick`)
    python bench/targets.py --full     the full variants (`make bench`; the engine's 1 M-row estate alone takes minutes)
    python bench/targets.py --table    no run: the table of the JSON already in bench/out/

Runs, one after the other, with this interpreter, each writing its JSON to bench/out/:
  * bench/engine.py [--quick]: `evaluate` p50/p99 with the 200-rule policy (quick: 20,000-row
    estate; full: 1,000,000 rows) -> engine-quick.json / engine.json;
  * bench/decision_log.py [--quick]: durable appends/s and the ratio to bare SQLite of the same
    bytes, replay streamed from the log -> decision_log.json;
  * bench/service.py [--quick]: /v1/claims decisions/s, its ratio to /healthz on the same server,
    p99 at 500 signed decisions/s -> service.json;
  * bench/keycloak_tokens.py [--quick]: Keycloak tokens/s governed/ungoverned (8 clients) and the
    added latency per governed token (1 client) -> keycloak.json. It does not run when Keycloak
    or the mapper jar is missing or port 8080 is taken; its rows then say "not run" and why.

Then prints one table: figure | measured (median and min-max over the rounds of that benchmark)
| target | verdict (``ok`` when the median meets the target, ``MISSED`` when not, ``not run`` with
the reason when the benchmark did not produce it, ``invalid`` when its run had failed requests),
with the machine (CPU model, cores, load), the date (UTC) and the git commit (short hash,
"dirty" when the tree has uncommitted changes). The table and the figures go to
bench/out/quick.json (bench/out/full.json with --full). Only JSON written during this run is read
(``--table`` reads whatever is there and shows each file's date). Exit status 0 whatever the
verdicts: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchutil import commit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
OUT = BENCH / "out"


@dataclass(frozen=True)
class Run:
    """One benchmark script of the table."""

    name: str
    script: str
    quick_out: str
    full_out: str

    def out(self, full: bool) -> Path:
        return OUT / (self.full_out if full else self.quick_out)


RUNS = (
    Run("engine", "engine.py", "engine-quick.json", "engine.json"),
    Run("decision_log", "decision_log.py", "decision_log.json", "decision_log.json"),
    Run("service", "service.py", "service.json", "service.json"),
    Run("keycloak", "keycloak_tokens.py", "keycloak.json", "keycloak.json"),
)


@dataclass(frozen=True)
class Figure:
    """A measured figure: the median and range over rounds, or why there is none."""

    median: float | None = None
    low: float | None = None
    high: float | None = None
    rounds: int = 0
    not_run: str | None = None
    invalid: str | None = None


@dataclass(frozen=True)
class Row:
    """One line of issue 13's targets table."""

    figure: str
    source: str  # a Run name
    extract: Callable[[dict[str, Any]], Figure]
    target: str
    meets: Callable[[float], bool]
    unit: str  # how to print the value


def over(values: list[float]) -> Figure:
    """The median and range of per-round values."""
    return Figure(statistics.median(values), min(values), max(values), len(values))


def from_spread(spread: dict[str, Any], invalid: str | None = None) -> Figure:
    """A ``benchutil.spread`` dict as a Figure."""
    return Figure(spread["median"], spread["min"], spread["max"], len(spread.get("rounds", [])), invalid=invalid)


def engine_latency(key: str) -> Callable[[dict[str, Any]], Figure]:
    def extract(doc: dict[str, Any]) -> Figure:
        evaluation = doc["evaluation"]
        rounds = [r[key] for r in evaluation.get("rounds", []) if key in r]
        return over(rounds) if rounds else Figure(evaluation["latency"][key], rounds=1)

    return extract


def service_figure(key: str) -> Callable[[dict[str, Any]], Figure]:
    def extract(doc: dict[str, Any]) -> Figure:
        summary = doc["summary"]
        bad = summary.get("errors", 0) + summary.get("pool_exhausted", 0)
        return from_spread(summary[key], f"{bad} failed requests" if bad else None)

    return extract


def keycloak_figure(key: str) -> Callable[[dict[str, Any]], Figure]:
    def extract(doc: dict[str, Any]) -> Figure:
        summary = doc["summary"]
        return from_spread(summary[key], f"{summary['errors']} failed token requests" if summary.get("errors") else None)

    return extract


def append_figure(key: str) -> Callable[[dict[str, Any]], Figure]:
    def extract(doc: dict[str, Any]) -> Figure:
        append = doc["append"]
        return from_spread(append[key], f"{append['errors']} failed appends" if append.get("errors") else None)

    return extract


def replay_figure(mode: str) -> Callable[[dict[str, Any]], Figure]:
    """``kpb replay --policy`` (mode ``policy``: the recorded decisions against their recorded
    policy) or ``--recorded``: records/s streamed from the log, over the runs of the phase."""

    def extract(doc: dict[str, Any]) -> Figure:
        replay = doc.get("replay")
        if not replay or mode not in replay:
            return Figure(not_run="bench/decision_log.py wrote no replay figure")
        return from_spread(replay[mode]["per_s"])

    return extract


ROWS = (
    Row(
        "Keycloak client-credentials tokens/s, governed / ungoverned, 8 clients",
        "keycloak",
        keycloak_figure("throughput_ratio"),
        ">= 0.85",
        lambda v: v >= 0.85,
        ".3f",
    ),
    Row(
        "added latency per governed token, 1 client, p50 (ms)", "keycloak", keycloak_figure("added_p50_ms"), "<= 2", lambda v: v <= 2, ".2f"
    ),
    Row(
        "added latency per governed token, 1 client, p99 (ms)", "keycloak", keycloak_figure("added_p99_ms"), "<= 5", lambda v: v <= 5, ".2f"
    ),
    Row("/v1/claims decisions/s / /healthz req/s, same server", "service", service_figure("ratio"), ">= 0.45", lambda v: v >= 0.45, ".3f"),
    Row(
        "/v1/claims decisions/s (HMAC on, durable log)",
        "service",
        service_figure("decisions_per_s"),
        ">= 2,000",
        lambda v: v >= 2000,
        ",.0f",
    ),
    Row("p99 at 500 signed decisions/s (ms)", "service", service_figure("paced_p99_ms"), "<= 10", lambda v: v <= 10, ".2f"),
    Row("engine evaluate, 200-rule policy, p50 (us)", "engine", engine_latency("p50_us"), "<= 50", lambda v: v <= 50, ".1f"),
    Row("engine evaluate, 200-rule policy, p99 (us)", "engine", engine_latency("p99_us"), "<= 250", lambda v: v <= 250, ".1f"),
    Row(
        "durable appends with the chain / bare SQLite, same bytes",
        "decision_log",
        append_figure("ratio"),
        ">= 0.5",
        lambda v: v >= 0.5,
        ".3f",
    ),
    Row(
        "durable appends/s (64 appenders, group commit)",
        "decision_log",
        append_figure("log_per_s"),
        ">= 5,000",
        lambda v: v >= 5000,
        ",.0f",
    ),
    Row(
        "replay streamed from the log, one core, --policy (/s)",
        "decision_log",
        replay_figure("policy"),
        ">= 10,000",
        lambda v: v >= 10000,
        ",.0f",
    ),
    Row(
        "replay streamed from the log, one core, --recorded (/s)",
        "decision_log",
        replay_figure("recorded"),
        ">= 10,000",
        lambda v: v >= 10000,
        ",.0f",
    ),
)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            model,
        )
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def run(bench: Run, full: bool) -> dict[str, Any]:
    """Run one benchmark script (its output goes to this terminal); return its exit status and time."""
    command = [sys.executable, str(BENCH / bench.script), *([] if full else ["--quick"])]
    print(f"\n== {' '.join(['python', f'bench/{bench.script}', *command[2:]])}", flush=True)
    started = time.monotonic()
    status = subprocess.run(command, cwd=ROOT, check=False).returncode
    return {
        "command": " ".join(["python", f"bench/{bench.script}", *command[2:]]),
        "exit": status,
        "seconds": round(time.monotonic() - started, 1),
    }


def load(bench: Run, full: bool, since: float | None, runs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The benchmark's JSON, or None and why not."""
    path = bench.out(full)
    ran = runs.get(bench.name)
    if not path.exists() or (since is not None and path.stat().st_mtime < since):
        if ran is not None and ran["exit"] != 0:
            return None, f"bench/{bench.script} exited {ran['exit']}"
        return None, f"no {path.relative_to(ROOT)}" + (" from this run" if since is not None else "")
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("not_run"):
        return None, str(doc["not_run"])
    if ran is not None and ran["exit"] != 0:
        return None, f"bench/{bench.script} exited {ran['exit']}"
    return doc, None


def verdict(row: Row, figure: Figure) -> str:
    if figure.not_run is not None:
        return f"not run: {figure.not_run}"
    if figure.invalid is not None:
        return f"invalid: {figure.invalid}"
    assert figure.median is not None
    return "ok" if row.meets(figure.median) else "MISSED"


def measured_text(row: Row, figure: Figure) -> str:
    if figure.median is None:
        return "-"
    text = format(figure.median, row.unit)
    if figure.rounds > 1 and figure.low is not None and figure.high is not None:
        text += f" ({format(figure.low, row.unit)}-{format(figure.high, row.unit)}, {figure.rounds} rounds)"
    return text


def table(full: bool, since: float | None, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Read the JSON, print the table, return it as a document."""
    docs = {bench.name: load(bench, full, since, runs) for bench in RUNS}
    lines = []
    for row in ROWS:
        doc, why = docs[row.source]
        if doc is None:
            figure = Figure(not_run=why)
        else:
            try:
                figure = row.extract(doc)
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # an older JSON layout, or a run cut short
                figure = Figure(not_run=f"{row.source} JSON has no such figure ({type(exc).__name__}: {exc})")
        lines.append(
            {
                "figure": row.figure,
                "measured": measured_text(row, figure),
                "target": row.target,
                "verdict": verdict(row, figure),
                **asdict(figure),
            }
        )
    info = machine()
    header = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(ROOT),
        "machine": info,
        "variant": "full" if full else "quick",
        "engine_estate": "1,000,000 rows" if full else "20,000 rows (quick; the target is for 1,000,000)",
    }
    print(
        f"\nissue 13 targets, {header['variant']} run: {header['date']}, commit {header['commit']}, "
        f"{info['cores']} cores ({info['cpu_model']}), load average {' '.join(map(str, info['load_average']))}"
    )
    widths = [max(len(str(line[key])) for line in lines) for key in ("figure", "measured", "target")]
    titles = ("figure", "measured: median (min-max over rounds)", "target")
    widths = [max(w, len(t)) for w, t in zip(widths, titles, strict=True)]
    print(" | ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True)) + " | verdict")
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * 7)
    for line in lines:
        cells = (line["figure"], line["measured"], line["target"])
        print(" | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + f" | {line['verdict']}")
    print(f"engine estate: {header['engine_estate']}; a verdict judges the median.")
    dated = {name: doc.get("date") or doc.get("finished_at") for name, (doc, _) in docs.items() if doc is not None}
    return {**header, "runs": runs, "json_dates": dated, "rows": lines}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full variants (make bench)")
    parser.add_argument("--table", action="store_true", help="run nothing: print the table of the JSON already in bench/out/")
    parser.add_argument(
        "--skip", action="append", default=[], choices=[b.name for b in RUNS], help="do not run this benchmark (repeatable)"
    )
    args = parser.parse_args()
    runs: dict[str, dict[str, Any]] = {}
    since = None
    if not args.table:
        since = time.time()
        for bench in RUNS:
            if bench.name not in args.skip:
                runs[bench.name] = run(bench, args.full)
    document = table(args.full, since, runs)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / ("full.json" if args.full else "quick.json")
    out.write_text(json.dumps(document, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
