"""`kpb entitlements`: check exports and feeds the way the bridge loads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from keycloak_policy_bridge.cli.app import main
from keycloak_policy_bridge.context_feed import FEED_SPEC, load_feed
from keycloak_policy_bridge.entitlements import ownership_warnings
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.profile import load_profile, shipped_profiles
from keycloak_policy_bridge.snapshot_loader import DEFAULT_MAX_DROP, LoadOptions, load_snapshot, read_manifest
from keycloak_policy_bridge.timeutil import format_rfc3339


@main.group()
def entitlements() -> None:
    """Check entitlement exports and context feeds before the bridge loads them."""


@entitlements.command("check")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--profile", help="Vendor profile: a shipped name (see `kpb entitlements profiles`) or a file.")
@click.option("--baseline", type=click.Path(file_okay=False), help="The last good snapshot, for the record-drop guard.")
@click.option("--baseline-records", type=click.IntRange(min=1), help="Record count of the last good snapshot (instead of --baseline).")
@click.option(
    "--max-drop",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MAX_DROP,
    show_default=True,
    help="Largest accepted drop in records, as a share.",
)
@click.option("--allow-drop", is_flag=True, help="Accept a larger drop (an operator's explicit decision).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
def entitlements_check(
    directory: str,
    profile: str | None,
    baseline: str | None,
    baseline_records: int | None,
    max_drop: float,
    allow_drop: bool,
    as_json: bool,
) -> None:
    """Load DIRECTORY as the bridge would and report counts, warnings, or why it is rejected.

    Exits 1 when the bridge would reject the snapshot (and keep its last good one).

    \b
    Examples:
      kpb entitlements check examples/acme/entitlements
      kpb entitlements check /drops/saviynt --profile saviynt-access-report --baseline /drops/saviynt.prev
    """
    report: dict[str, Any] = {"directory": directory}
    try:
        if read_manifest(Path(directory), spec=None).get("spec") == FEED_SPEC:
            feed = load_feed(directory)
            report.update(
                kind="context_feed",
                feed=feed.name,
                accepted=True,
                digest=feed.digest,
                records=feed.record_count,
                subjects=len(feed.rows),
                generated_at=format_rfc3339(feed.generated_at),
                warnings=[],
            )
        else:
            if baseline is not None:
                baseline_records = load_snapshot(baseline).record_count
            options = LoadOptions(
                profile=load_profile(profile) if profile else None,
                baseline_records=baseline_records,
                max_drop=max_drop,
                allow_drop=allow_drop,
            )
            snapshot = load_snapshot(directory, options)
            warnings = list(snapshot.warnings) + ownership_warnings(snapshot)
            report.update(
                kind="entitlements",
                accepted=True,
                digest=snapshot.digest,
                snapshot_id=snapshot.snapshot_id,
                source_system=snapshot.source_system,
                generated_at=format_rfc3339(snapshot.generated_at),
                records=snapshot.record_count,
                subjects=len(snapshot.identities),
                counts=snapshot.counts(),
                warnings=[{"path": w.path, "code": w.code, "message": w.message} for w in warnings],
            )
    except BridgeError as exc:
        report.update(
            accepted=False, message=exc.message, issues=[{"path": i.path, "code": i.code, "message": i.message} for i in exc.issues]
        )
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(_check_text(report))
    sys.exit(0 if report["accepted"] else 1)


def _check_text(report: dict[str, Any]) -> str:
    if not report["accepted"]:
        lines = [f"{report['directory']}: REJECTED: {report['message']}"]
        lines += [f"  [{i['code']}] {i['path']}: {i['message']}" for i in report["issues"]]
        lines.append("  the bridge keeps its last good snapshot")
        return "\n".join(lines)
    if report["kind"] == "context_feed":
        return (
            f"{report['directory']}: OK: context feed '{report['feed']}', {report['records']} records for "
            f"{report['subjects']} subjects, generated {report['generated_at']} ({report['digest'][:19]})"
        )
    lines = [
        f"{report['directory']}: OK: {report['snapshot_id']} from {report['source_system'] or 'unknown source'}, "
        f"generated {report['generated_at']}",
        f"  {report['records']} records, {report['subjects']} subjects, digest {report['digest']}",
    ]
    for title, key in (("subjects by type", "subject_type"), ("records by source", "source"), ("records by kind", "entitlement_kind")):
        counts = report["counts"][key]
        lines.append(f"  {title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for warning in report["warnings"]:
        lines.append(f"  warning [{warning['code']}] {warning['path']}: {warning['message']}")
    return "\n".join(lines)


@entitlements.command("profiles")
def entitlements_profiles() -> None:
    """List the shipped vendor profiles."""
    for name in shipped_profiles():
        description = load_profile(name).description
        click.echo(f"{name}: {description.splitlines()[0] if description else ''}")
