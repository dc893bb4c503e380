"""``kpb``: the command-line adapter. Parses arguments, calls the core, formats output.

Exit codes: 0 success; 1 a validation failure or a failing policy test; 2 a usage error or an
input that cannot be read (click's convention).
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from keycloak_policy_bridge import __version__
from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.context_feed import FEED_SPEC, load_feed
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import ownership_warnings
from keycloak_policy_bridge.errors import BridgeError, RequestError
from keycloak_policy_bridge.policy import load_policy, load_schema
from keycloak_policy_bridge.policy_suite import run_suite
from keycloak_policy_bridge.profile import load_profile, shipped_profiles
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import DEFAULT_MAX_DROP, LoadOptions, load_snapshot, read_manifest
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339
from keycloak_policy_bridge.ulid import make_ulid


def _fail(exc: BridgeError, code: int = 1) -> None:
    click.echo(f"error [{exc.code}]: {exc}", err=True)
    sys.exit(code)


def _now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(timezone.utc)  # the adapter owns the clock; the engine never reads it
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise click.BadParameter("must be an RFC 3339 timestamp with an offset, e.g. 2026-11-28T08:00:00Z", param_hint="--now") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpb")
def main() -> None:
    """keycloak-policy-bridge: governed, recorded token claims for Keycloak."""


@main.group()
def policy() -> None:
    """Validate, test and inspect policy documents."""


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def policy_validate(files: tuple[str, ...]) -> None:
    """Validate policy FILES: schema, CEL, references, reserved claims.

    Prints every problem with its JSON path and exits 1; prints a one-line summary per valid
    file and exits 0.

    \b
    Example:
      kpb policy validate examples/acme/policy.json
    """
    failed = False
    for name in files:
        try:
            compiled = load_policy(name)
        except BridgeError as exc:
            failed = True
            click.echo(f"{name}: INVALID: {exc.message}")
            for issue in exc.issues:
                click.echo(f"  {issue.path}: {issue.message}")
            continue
        click.echo(f"{name}: OK: {compiled.summary()}")
        for warning in compiled.warnings:
            click.echo(f"  warning: {warning.path}: {warning.message}", err=True)
    sys.exit(1 if failed else 0)


@policy.command("test")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@click.argument("suites", nargs=-1, required=True, type=click.Path())
@click.option("--verbose", "-v", is_flag=True, help="Also list passing cases.")
def policy_test(policy_file: str, suites: tuple[str, ...], verbose: bool) -> None:
    """Run policy test SUITES (files, or directories of *.json) against POLICY_FILE.

    \b
    Example:
      kpb policy test examples/acme/policy.json examples/acme/tests/
    """
    try:
        compiled = load_policy(policy_file)
    except BridgeError as exc:
        _fail(exc, 2)
    paths: list[Path] = []
    for suite in suites:
        path = Path(suite)
        paths.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    passed = failed = 0
    for path in paths:
        try:
            results = run_suite(compiled, path)
        except BridgeError as exc:
            _fail(exc, 2)
        for result in results:
            if result.passed:
                passed += 1
                if verbose:
                    click.echo(f"PASS {path.name} :: {result.name}")
                continue
            failed += 1
            click.echo(f"FAIL {path.name} :: {result.name}")
            for failure in result.failures:
                click.echo(f"  {failure}")
            reasons = [f"{r['rule']}({r['kind']}): {r['message']}" for r in result.actual["reasons"]]
            if reasons:
                click.echo("  reasons: " + "; ".join(reasons))
    click.echo(f"policy-tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


@policy.command("schema")
def policy_schema() -> None:
    """Print the policy JSON Schema (point an editor's $schema at a saved copy)."""
    click.echo(json.dumps(load_schema("policy.v1.schema.json"), indent=2))


@main.group()
def entitlements() -> None:
    """Check entitlement exports and context feeds before the bridge loads them."""


@entitlements.command("check")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--profile", help="Vendor profile: a shipped name (see `kpb entitlements profiles`) or a file.")
@click.option("--baseline", type=click.Path(file_okay=False), help="The last good snapshot, for the record-drop guard.")
@click.option("--baseline-records", type=click.IntRange(min=1), help="Record count of the last good snapshot (instead of --baseline).")
@click.option("--max-drop", type=click.FloatRange(0, 1), default=DEFAULT_MAX_DROP, show_default=True, help="Largest accepted drop in records, as a share.")
@click.option("--allow-drop", is_flag=True, help="Accept a larger drop (an operator's explicit decision).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
def entitlements_check(
    directory: str, profile: str | None, baseline: str | None, baseline_records: int | None, max_drop: float, allow_drop: bool, as_json: bool
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
            report.update(kind="context_feed", feed=feed.name, accepted=True, digest=feed.digest, records=feed.record_count,
                          subjects=len(feed.rows), generated_at=format_rfc3339(feed.generated_at), warnings=[])  # fmt: skip
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
            report.update(kind="entitlements", accepted=True, digest=snapshot.digest, snapshot_id=snapshot.snapshot_id,
                          source_system=snapshot.source_system, generated_at=format_rfc3339(snapshot.generated_at),
                          records=snapshot.record_count, subjects=len(snapshot.identities), counts=snapshot.counts(),
                          warnings=[{"path": w.path, "code": w.code, "message": w.message} for w in warnings])  # fmt: skip
    except BridgeError as exc:
        report.update(accepted=False, message=exc.message, issues=[{"path": i.path, "code": i.code, "message": i.message} for i in exc.issues])
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
        return (f"{report['directory']}: OK: context feed '{report['feed']}', {report['records']} records for "
                f"{report['subjects']} subjects, generated {report['generated_at']} ({report['digest'][:19]})")  # fmt: skip
    lines = [
        f"{report['directory']}: OK: {report['snapshot_id']} from {report['source_system'] or 'unknown source'}, generated {report['generated_at']}",
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


@main.command("evaluate")
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False), help="Policy JSON file.")
@click.option("--entitlements", "snapshot_dir", required=True, type=click.Path(file_okay=False), help="Snapshot directory.")
@click.option("--request", "request_file", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="Request JSON file, or - for stdin.")
@click.option("--now", "now_text", help="Evaluation instant (RFC 3339); default: the current time.")
@click.option("--feed", "feed_dirs", multiple=True, type=click.Path(file_okay=False), help="A context feed directory (repeatable).")
@click.option("--format", "output", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="json: the contract-v1 response; text: a short human summary.")
def evaluate_command(
    policy_file: str, snapshot_dir: str, request_file: str, now_text: str | None, feed_dirs: tuple[str, ...], output: str
) -> None:
    """Evaluate one claims request offline, with the engine the service uses.

    Prints the contract-v1 response on stdout and exits 0 for permit and deny alike; an
    invalid input exits 2 with the problem on stderr. The decision id is derived from the
    inputs, so the same inputs and --now print the same document.

    \b
    Example:
      kpb evaluate --policy examples/acme/policy.json --entitlements examples/acme/entitlements \\
          --request examples/acme/requests/alice-login.json --now 2026-11-28T08:00:00Z
    """
    now = _now(now_text)
    try:
        compiled = load_policy(policy_file)
        snapshot = load_snapshot(snapshot_dir)
        feeds = {feed.name: feed for feed in map(load_feed, feed_dirs)}
        document = _read_request(request_file)
        request = parse_request(document)
    except BridgeError as exc:
        _fail(exc, 2)
    decision = evaluate(compiled, snapshot, request, now, feeds)
    seed = hashlib.sha256(canonical_json([compiled.digest, snapshot.digest, sorted(f.digest for f in feeds.values()), document])).digest()
    response = decision.response(make_ulid(now, seed))
    if output == "json":
        click.echo(json.dumps(response, indent=2, ensure_ascii=False))
        return
    click.echo(_summary(response))


def _summary(response: dict[str, Any]) -> str:
    """A few lines a person reads at a glance: effect, claims, lifetime cap, reasons."""
    lines = [f"{response['effect'].upper()}  decision {response['decision_id']}"]
    for claim, value in response["claims"].items():
        lines.append(f"  {claim} = {json.dumps(value, ensure_ascii=False)}")
    if "max_ttl_seconds" in response:
        lines.append(f"  max_ttl_seconds = {response['max_ttl_seconds']}")
    if response["remove_claims"]:
        lines.append(f"  remove_claims = {', '.join(response['remove_claims'])}")
    for reason in response["reasons"]:
        lines.append(f"  [{reason['kind']}] {reason['rule']}: {reason['message']}")
    return "\n".join(lines)


def _read_request(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RequestError(f"{path}: cannot read request ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno})") from None


if __name__ == "__main__":  # pragma: no cover
    main()
