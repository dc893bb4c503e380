"""`kpb replay` (impact of a candidate policy, or reproduction) and `kpb drift` (live tokens the
current entitlements no longer justify)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import click

from keycloak_policy_bridge.cli.app import fail, load_export, main, parse_now
from keycloak_policy_bridge.cli.decisions import LOG_OPTION, open_log, open_policies, parse_instant
from keycloak_policy_bridge.context_feed import load_feeds
from keycloak_policy_bridge.decision_log import Query
from keycloak_policy_bridge.drift import DriftReport, drift
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import Masker
from keycloak_policy_bridge.reevaluate import RECORDED, Entitlements, Feeds
from keycloak_policy_bridge.replay import ReplayReport, replay, reproduce
from keycloak_policy_bridge.replay_html import render_html
from keycloak_policy_bridge.revoke import UserLogout, keycloak_admin
from keycloak_policy_bridge.revoke import revoke as revoke_subjects

_SHOWN = 20  # changed decisions and errors listed in the human output
MASK_KEY_OPTION = click.option(
    "--mask-key-env",
    default="KPB_MASK_KEY",
    show_default=True,
    help="Environment variable holding the key records were masked with (needed for subjects joined by a masked key).",
)


@main.command("replay")
@LOG_OPTION
@click.option("--policy", "policy_file", type=click.Path(dir_okay=False), help="Candidate policy JSON file.")
@click.option("--recorded", is_flag=True, help="Replay each decision with its own recorded policy (a reproduction check).")
@click.option(
    "--entitlements",
    default=RECORDED,
    show_default=True,
    metavar="recorded|current|DIR",
    help="recorded: each decision's recorded identities; current: the snapshot given by --snapshot; DIR: that snapshot.",
)
@click.option("--snapshot", "snapshot_dir", type=click.Path(file_okay=False), help="The current snapshot (with --entitlements current).")
@click.option(
    "--feed",
    "feed_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="Use this context feed instead of the recorded rows (repeatable).",
)
@click.option("--subject", help="IGA subject id or Keycloak user id.")
@click.option("--client", help="Requesting client id.")
@click.option("--since", help="From this instant (RFC 3339, or an age: 3h, 2d).")
@click.option("--until", help="Before this instant (RFC 3339, or an age).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write a self-contained HTML report to this file.")
@MASK_KEY_OPTION
def replay_command(
    log_path: str | None,
    policy_file: str | None,
    recorded: bool,
    entitlements: str,
    snapshot_dir: str | None,
    feed_dirs: tuple[str, ...],
    subject: str | None,
    client: str | None,
    since: str | None,
    until: str | None,
    as_json: bool,
    html_file: str | None,
    mask_key_env: str,
) -> None:
    """Re-run recorded decisions under a candidate policy and report what would change.

    Each recorded request is evaluated again at its own evaluated_at. Exit 0 when nothing
    changed, 1 when some decision changed (a CI gate for policy pull requests), 2 when an
    input cannot be read or some record could not be replayed.

    \b
    Examples:
      kpb replay --log var/decisions.db --policy candidate.json --html impact.html
      kpb replay --log var/decisions.db --policy policy.json --entitlements current --snapshot exports/today
      kpb replay --log var/decisions.db --recorded          # every decision reproduces exactly?
    """
    if recorded == (policy_file is not None):
        raise click.UsageError("give exactly one of --policy CANDIDATE.json and --recorded")
    if recorded and (entitlements != RECORDED or feed_dirs):
        raise click.UsageError("--recorded replays with the recorded inputs; it takes no --entitlements or --feed")
    if snapshot_dir is not None and entitlements != "current":
        raise click.UsageError("--snapshot is the current snapshot for --entitlements current")
    if entitlements == "current" and snapshot_dir is None:
        raise click.UsageError("--entitlements current needs --snapshot DIR")
    now = parse_now(None)  # relative --since/--until are relative to the wall clock, in the adapter
    query = Query(
        subject=subject, client=client, since=parse_instant(since, now, "--since"), until=parse_instant(until, now, "--until"), limit=None
    )
    log = open_log(log_path)
    masker = masker_from_env(mask_key_env)
    try:
        if recorded:
            report = reproduce(log.iterate(query), open_policies(log_path), masker=masker)
        else:
            assert policy_file is not None
            candidate = load_policy(policy_file)
            snapshot: Entitlements = RECORDED
            if entitlements != RECORDED:
                snapshot = load_export(snapshot_dir if entitlements == "current" and snapshot_dir is not None else entitlements)
            feeds: Feeds = load_feeds(feed_dirs) if feed_dirs else RECORDED
            report = replay(log.iterate(query), candidate, entitlements=snapshot, feeds=feeds, masker=masker)
    except BridgeError as exc:
        fail(exc, 2)
    except (sqlite3.Error, ValueError) as exc:  # a corrupt record body or database page, met mid-run
        fail(BridgeError(f"{log.location}: cannot read the decision log ({exc})"), 2)
    if html_file:
        try:
            Path(html_file).write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            fail(BridgeError(f"{html_file}: cannot write the HTML report ({exc.strerror})"), 2)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(_replay_text(report, mask_key_env))
    raise SystemExit(2 if report.errors else 1 if report.changed else 0)


@main.command("drift")
@LOG_OPTION
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False), help="The current policy JSON file.")
@click.option("--entitlements", "snapshot_dir", required=True, type=click.Path(file_okay=False), help="The current snapshot directory.")
@click.option("--feed", "feed_dirs", multiple=True, type=click.Path(file_okay=False), help="A current context feed directory (repeatable).")
@click.option("--now", "now_text", help="The instant to judge at (RFC 3339); default: the current time.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--revoke", is_flag=True, help="Log the drifted subjects out of Keycloak (ends their sessions; refresh tokens stop working).")
@click.option("--keycloak-url", envvar="KPB_KEYCLOAK_URL", help="Keycloak base URL, e.g. http://127.0.0.1:8080 (env KPB_KEYCLOAK_URL).")
@click.option("--realm", envvar="KPB_KEYCLOAK_REALM", help="Realm of the drifted users (env KPB_KEYCLOAK_REALM).")
@click.option(
    "--admin-client",
    envvar="KPB_KEYCLOAK_ADMIN_CLIENT_ID",
    help="Confidential client with manage-users (env KPB_KEYCLOAK_ADMIN_CLIENT_ID).",
)
@click.option(
    "--admin-secret-env",
    default="KPB_KEYCLOAK_ADMIN_SECRET",
    show_default=True,
    help="Environment variable holding that client's secret (never a flag).",
)
@MASK_KEY_OPTION
def drift_command(
    log_path: str | None,
    policy_file: str,
    snapshot_dir: str,
    feed_dirs: tuple[str, ...],
    now_text: str | None,
    as_json: bool,
    revoke: bool,
    keycloak_url: str | None,
    realm: str | None,
    admin_client: str | None,
    admin_secret_env: str,
    mask_key_env: str,
) -> None:
    """List subjects whose live tokens carry claims the current policy and snapshot no longer give.

    A token is live while evaluated_at + its TTL is after --now. With --revoke, each drifted
    subject is logged out of Keycloak: its refresh tokens fail from then on and its next token
    comes from a new login under the current entitlements. Exit 0 when done (whatever is found);
    2 when an input cannot be read; 3 when a revocation failed.

    \b
    Example:
      kpb drift --log var/decisions.db --policy policy.json --entitlements exports/today --feed feeds/risk
      KPB_KEYCLOAK_ADMIN_SECRET=... kpb drift ... --revoke --keycloak-url http://127.0.0.1:8080 \\
          --realm acme --admin-client kpb-admin-client
    """
    admin = _revocation_client(keycloak_url, realm, admin_client, admin_secret_env) if revoke else None
    now = parse_now(now_text)
    log = open_log(log_path)
    masker = masker_from_env(mask_key_env)
    try:
        report = drift(log, load_policy(policy_file), load_export(snapshot_dir), load_feeds(feed_dirs), now, masker=masker)
    except BridgeError as exc:
        fail(exc, 2)
    except (sqlite3.Error, ValueError) as exc:
        fail(BridgeError(f"{log.location}: cannot read the decision log ({exc})"), 2)
    revocations = revoke_subjects(report.subjects, admin) if admin is not None else None
    if as_json:
        document = report.to_dict()
        if revocations is not None:
            document["revocations"] = [r.to_dict() for r in revocations]
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        click.echo(_drift_text(report))
        for r in revocations or ():
            click.echo(f"revoke {r.subject_id} (keycloak user {r.keycloak_user_id}): {r.outcome}" + (f": {r.error}" if r.error else ""))
    if revocations and any(r.outcome == "failed" for r in revocations):
        raise SystemExit(3)


def _revocation_client(url: str | None, realm: str | None, client: str | None, secret_env: str) -> UserLogout:
    missing = [name for name, value in (("--keycloak-url", url), ("--realm", realm), ("--admin-client", client)) if not value]
    secret = os.environ.get(secret_env, "")
    if not secret:
        missing.append(f"the secret in ${secret_env}")
    if missing:
        fail(BridgeError("--revoke needs " + ", ".join(missing)), 2)
    assert url and realm and client  # narrowed by the check above
    try:
        return keycloak_admin(url, realm, client, secret)
    except BridgeError as exc:
        fail(exc, 2)


def masker_from_env(variable: str) -> Masker | None:
    """The masking key from the environment variable ``variable`` (``--mask-key-env``), or None."""
    # Only the key matters: each record lists the paths it masked.
    key = os.environ.get(variable, "")
    return Masker((), key.encode("utf-8")) if key else None


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _replay_text(report: ReplayReport, mask_key_env: str) -> str:
    if report.mode == "recorded":
        head = "replay with each decision's recorded policy and inputs (reproduction check)"
    else:
        policy = report.policy or {}
        head = f"replay of {policy.get('id')} {policy.get('version')} ({policy.get('digest')})"
    lines = [
        head,
        f"  entitlements: {report.entitlements}",
        f"  feeds: {report.feeds}",
        f"replayed {report.replayed}  unchanged {report.unchanged}  changed {report.changed}  errors {report.errors}",
    ]
    if report.by_rule:
        lines += ["", "by rule:", f"  {'rule':40} {'decisions':>9} {'added':>7} {'removed':>7} {'effect':>6}"]
        for rule, c in report.by_rule.items():
            lines.append(f"  {rule:40} {c['decisions']:>9} {c['added']:>7} {c['removed']:>7} {c['effect']:>6}")
    if report.by_claim:
        lines += ["", "by claim:"]
        for claim, slots in report.by_claim.items():
            changes = [f"+{v} x{n}" for v, n in slots["added"].items()] + [f"-{v} x{n}" for v, n in slots["removed"].items()]
            lines.append(f"  {claim}: {', '.join(changes)}")
    if report.changed_decisions:
        lines += ["", f"changed decisions ({min(_SHOWN, report.changed)} of {report.changed}):"]
        for d in report.changed_decisions[:_SHOWN]:
            effect = d.effect_before if d.effect_before == d.effect_after else f"{d.effect_before} -> {d.effect_after}"
            parts = [f"+{c}: {_show(v)}" for c, vs in d.added.items() for v in vs]
            parts += [f"-{c}: {_show(v)}" for c, vs in d.removed.items() for v in vs]
            # A deny carries no TTL cap or remove_claims: after an effect change those follow.
            if d.ttl_before != d.ttl_after and d.effect_before == d.effect_after:
                parts.append(f"max_ttl {d.ttl_before} -> {d.ttl_after}")
            if d.remove_claims_before != d.remove_claims_after and d.effect_before == d.effect_after:
                parts.append(f"remove_claims {list(d.remove_claims_before)} -> {list(d.remove_claims_after)}")
            if not parts:
                parts.append("differs in " + ", ".join(d.differences))
            lines.append(f"  {d.decision_id}  {d.subject_id or '-'}  {d.client_id}  {effect}  {'  '.join(parts)}")
    if report.failed_decisions:
        lines += ["", f"errors ({min(_SHOWN, report.errors)} of {report.errors}):"]
        lines += [f"  {d.decision_id}: {d.error}" for d in report.failed_decisions[:_SHOWN]]
        if any("masking key" in (d.error or "") for d in report.failed_decisions):
            lines.append(f"  (the masking key is read from the environment variable {mask_key_env})")
    return "\n".join(lines)


def _drift_text(report: DriftReport) -> str:
    lines = [
        f"drift at {report.now} against {report.policy['id']} {report.policy['version']} and snapshot {report.snapshot['id']}",
        (
            f"  {report.checked} live decision(s) checked, {len(report.subjects)} subject(s) with claims no longer justified, "
            f"{len(report.unresolvable)} unresolvable, {len(report.errors)} error(s)"
        ),
    ]
    for s in report.subjects:
        who = f"{s.subject_id or '-'} (keycloak {s.keycloak_user_id or '-'})"
        lines.append(f"  {who}  tokens live until {s.token_expires_at}  decisions {', '.join(s.decisions)}")
        if s.denied_now:
            lines.append(f"    would now be DENIED: {'; '.join(s.reasons)}")
        for claim, values in s.claims.items():
            lines.append(f"    {claim}: {', '.join(_show(v) for v in values)}")
    for title, items in (("unresolvable", report.unresolvable), ("errors", report.errors)):
        if items:
            lines.append(f"{title}:")
            lines += [f"  {u.decision_id} ({u.subject_id or u.keycloak_user_id or '-'}): {u.reason}" for u in items]
    return "\n".join(lines)
