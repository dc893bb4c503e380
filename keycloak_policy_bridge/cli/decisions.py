"""`kpb decisions`: query, export, verify, checkpoint, prune, upgrade and migrate the decision log.

Every command that reads a log finds it by one rule (``log_location``): an explicit ``--log FILE``
is a SQLite file; else ``KPB_DATABASE_URL`` (PostgreSQL, the variable ``kpb serve`` reads); else
``KPB_DECISION_LOG`` (a SQLite file). explain, replay and drift use it too (``open_log``). A
database URL may hold a password: messages name the database by its redacted location only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import click

from keycloak_policy_bridge.cli.app import fail, main, parse_now
from keycloak_policy_bridge.config import DATABASE_URL_PREFIXES, secrets_from_env
from keycloak_policy_bridge.decision_log import (
    ActivationKeys,
    Checkpoint,
    Query,
    SQLiteDecisionLog,
    SQLitePolicyStore,
    derived_activation_keys,
)
from keycloak_policy_bridge.decision_log.upgrade import UpgradedFile, Verification, upgrade_file
from keycloak_policy_bridge.errors import BridgeError, ChainError, ConfigError, DecisionLogError
from keycloak_policy_bridge.record import RECORD_SCHEMA, RECORD_SCHEMA_V1
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

if TYPE_CHECKING:  # the PostgreSQL driver is imported only when a command uses it
    from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
    from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
    from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader

LOG_OPTION = click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False),
    help="The decision log, a SQLite file. Without it: KPB_DATABASE_URL (PostgreSQL), else KPB_DECISION_LOG (a SQLite file).",
)
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
DEFAULT_TOKEN_TTL = SQLiteDecisionLog.default_token_ttl  # what every command opens a log with (the service: KPB_TOKEN_TTL_SECONDS or this)
KEPT_SHOWN = 10  # kept /1 records named in the upgrade report; the rest are counted


@dataclass(frozen=True)
class LogLocation:
    """Where a command's decision log is: a SQLite file (``path``) or a PostgreSQL database (``url``)."""

    path: Path | None
    url: str | None = field(default=None, repr=False)  # may hold a password: never shown

    @property
    def shown(self) -> str:
        """The location as messages name it: the path, or the database without its password."""
        if self.path is not None:
            return str(self.path)
        from keycloak_policy_bridge.decision_log.postgres_schema import describe

        return describe(self.url or "")


def log_location(log_path: str | None) -> LogLocation:
    """The one rule every command that reads a log follows: an explicit ``--log FILE`` is a SQLite
    file; else ``KPB_DATABASE_URL`` when set (PostgreSQL, as ``kpb serve`` uses it); else
    ``KPB_DECISION_LOG`` (a SQLite file).

    Raises:
        click.UsageError: none of them (naming the three), or a KPB_DATABASE_URL that is not a
            postgresql:// URL (its value is not shown).
    """
    if log_path:
        return LogLocation(Path(log_path))
    url = os.environ.get("KPB_DATABASE_URL", "").strip()
    if url:
        if not url.startswith(DATABASE_URL_PREFIXES):
            raise click.UsageError("KPB_DATABASE_URL must be a postgresql:// URL (its value is not shown: it may hold a password)")
        return LogLocation(None, url)
    path = os.environ.get("KPB_DECISION_LOG", "").strip()
    if path:
        return LogLocation(Path(path))
    raise click.UsageError("no decision log: give --log FILE (SQLite), or set KPB_DATABASE_URL (PostgreSQL) or KPB_DECISION_LOG (SQLite)")


@overload
def open_log(log_path: str | None, readonly: Literal[True] = True) -> SQLiteDecisionLog | PostgresDecisionReader: ...
@overload
def open_log(log_path: str | None, readonly: Literal[False]) -> SQLiteDecisionLog | PostgresDecisionLog: ...
def open_log(log_path: str | None, readonly: bool = True) -> SQLiteDecisionLog | PostgresDecisionReader:
    """Open the existing log ``log_location`` names; read-only unless the command writes
    (checkpoint, prune). Never creates a log (a file, or a database without the log's schema, is
    refused). Closed when the command ends. Exits 2 (naming the location, never a password) when
    it cannot be opened."""
    where = log_location(log_path)
    try:
        if where.path is not None:
            if not where.path.is_file():
                raise DecisionLogError(f"{where.path}: no decision log there")
            log: SQLiteDecisionLog | PostgresDecisionReader = SQLiteDecisionLog(where.path, readonly=readonly)
        else:
            assert where.url is not None
            from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
            from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader

            log = PostgresDecisionReader(where.url, default_token_ttl=DEFAULT_TOKEN_TTL, pool_size=1, create=False)
            if not readonly:
                log.close()
                log = PostgresDecisionLog(where.url, default_token_ttl=DEFAULT_TOKEN_TTL, pool_size=1)
    except BridgeError as exc:
        fail(_without_secrets(exc, where), 2)
    _close_at_exit(log)
    return log


def open_policies(log_path: str | None) -> SQLitePolicyStore | PostgresPolicyStore:
    """The policy store of the log ``log_location`` names (replay and explain look policies up);
    read-only for a file. Exits 2 when it cannot be opened."""
    where = log_location(log_path)
    try:
        if where.path is not None:
            store: SQLitePolicyStore | PostgresPolicyStore = SQLitePolicyStore(where.path, readonly=True)
        else:
            from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore

            assert where.url is not None
            store = PostgresPolicyStore(where.url)
    except BridgeError as exc:
        fail(_without_secrets(exc, where), 2)
    _close_at_exit(store)
    return store


def _close_at_exit(resource: Any) -> None:
    """Close ``resource`` when the command's click context ends (its exit code or error included)."""
    context = click.get_current_context(silent=True)
    if context is not None:
        context.call_on_close(resource.close)


def _without_secrets(exc: BridgeError, where: LogLocation) -> BridgeError:
    """``exc``, or a copy without the URL or its password should a driver's message quote them
    (the backends name the database by its redacted location; this is the belt to those braces)."""
    text = str(exc)
    secrets = [where.url] if where.url else []
    if where.url:
        from psycopg.conninfo import conninfo_to_dict

        try:
            secrets.append(str(conninfo_to_dict(where.url).get("password") or ""))
        except Exception:  # noqa: BLE001 - an unparsable URL: the whole URL is scrubbed anyway
            pass
    secrets = [s for s in secrets if s]
    if not any(s in text for s in secrets):
        return exc
    for secret in secrets:
        text = text.replace(secret, "***")
    return DecisionLogError(text)


def parse_instant(text: str | None, now: datetime, option: str) -> datetime | None:
    """RFC 3339, or an age relative to now such as ``3h``, ``2d``, ``15m``."""
    if text is None:
        return None
    match = _RELATIVE.match(text)
    if match:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise click.BadParameter("an RFC 3339 timestamp or an age such as 3h or 2d", param_hint=option) from None


def filters(f: Any) -> Any:
    for decorator in reversed(
        [
            click.option("--subject", help="IGA subject id or Keycloak user id."),
            click.option("--client", help="Requesting client id."),
            click.option("--effect", type=click.Choice(["permit", "deny"])),
            click.option("--rule", help="A rule that granted, denied or explained something."),
            click.option("--since", help="From this instant (RFC 3339, or an age: 3h, 2d)."),
            click.option("--until", help="Before this instant (RFC 3339, or an age)."),
        ]
    ):
        f = decorator(f)
    return f


def build_query(
    subject: str | None, client: str | None, effect: str | None, rule: str | None, since: str | None, until: str | None, limit: int | None
) -> Query:
    now = parse_now(None)  # relative ages are relative to the wall clock, in the adapter
    return Query(subject, client, effect, rule, parse_instant(since, now, "--since"), parse_instant(until, now, "--until"), limit)


@main.group()
def decisions() -> None:
    """Query, export, verify, checkpoint, prune, upgrade and migrate the decision log."""


@decisions.command("list")
@LOG_OPTION
@filters
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line (NDJSON).")
def decisions_list(
    log_path: str | None,
    subject: str | None,
    client: str | None,
    effect: str | None,
    rule: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List decisions, newest first.

    \b
    Examples:
      kpb decisions list --log var/decisions.db --subject E1001 --since 2d
      kpb decisions list --log var/decisions.db --effect deny --rule deny-inactive-principal --json
    """
    log = open_log(log_path)
    try:
        records = log.query(build_query(subject, client, effect, rule, since, until, limit))
        if as_json:
            # The stored documents, as `show` prints them (one per line).
            for record in records:
                click.echo(json.dumps(log.document(record.decision_id), ensure_ascii=False))
            return
    except BridgeError as exc:
        fail(exc, 2)
    click.echo(f"{'decision':26}  {'evaluated_at':20}  {'effect':6}  {'subject':10}  {'client':18}  claims / reasons")
    for record in records:
        d = record.decision
        summary = ", ".join(sorted(d.claims)) if d.permitted else "; ".join(r.rule for r in d.reasons if r.kind in ("deny", "error"))
        click.echo(
            f"{record.decision_id:26}  {format_rfc3339(record.evaluated_at):20}  {record.effect:6}  {record.subject_id or '-':10}  "
            f"{str(record.client_id):18}  {summary}"
        )


@decisions.command("show")
@click.argument("decision_id")
@LOG_OPTION
def decisions_show(decision_id: str, log_path: str | None) -> None:
    """Print one decision record (JSON), with its request, result, provenance and inputs.

    The stored document: a kpb-decision/1 record as it was written; a kpb-decision/2 record with
    the recorded inputs it references under "inputs" (by reference).
    """
    log = open_log(log_path)
    try:
        document = log.document(decision_id)
    except BridgeError as exc:
        fail(exc, 2)
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@decisions.command("export")
@LOG_OPTION
@filters
def decisions_export(
    log_path: str | None,
    subject: str | None,
    client: str | None,
    effect: str | None,
    rule: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Stream records as JSON Lines, oldest first (for a SIEM).

    \b
    Example:
      kpb decisions export --log var/decisions.db --since 1d > decisions.jsonl
    """
    log = open_log(log_path)
    try:
        for document in log.documents(build_query(subject, client, effect, rule, since, until, None)):
            click.echo(json.dumps(document, ensure_ascii=False, sort_keys=True))
    except BridgeError as exc:
        fail(exc, 2)


@decisions.command("verify")
@LOG_OPTION
@click.option("--checkpoints", type=click.Path(dir_okay=False), help="JSON Lines of exported checkpoints to compare with.")
@click.option("--public-key", type=click.Path(dir_okay=False), help="Ed25519 public key (PEM) the checkpoints were signed with.")
def decisions_verify(log_path: str | None, checkpoints: str | None, public_key: str | None) -> None:
    """Recompute the hash chains; name the first modified, deleted, inserted or reordered record
    or policy activation.

    Activation MACs are checked with the service's key, read from the environment like
    `kpb serve` reads it: KPB_ACTIVATION_KEYS, else derived from KPB_HMAC_SECRETS.

    Exit 0 when the chains (and every given checkpoint) hold, 1 when they do not.
    """
    log = open_log(log_path)
    try:
        marks, key = _witness(checkpoints, public_key)
        activation_keys = _activation_keys()
        report = log.verify(list(marks), key, activation_keys=activation_keys)
    except ChainError as exc:
        click.echo(f"TAMPERED: {exc.message}")
        sys.exit(1)
    except (BridgeError, OSError, ValueError, TypeError) as exc:
        fail(exc if isinstance(exc, BridgeError) else BridgeError(f"cannot verify: {exc}"), 2)
    extra = ""
    if report.activations or report.unsealed_activations:
        extra += f", {report.activations} activation(s) " + (
            f"sealed, MACs checked ({activation_keys.source})"
            if activation_keys
            else "chained, MACs NOT checked (no KPB_ACTIVATION_KEYS or KPB_HMAC_SECRETS)"
        )
        if report.unsealed_activations:
            extra += f", {report.unsealed_activations} unsealed activation(s) from before sealing"
    if report.prune_signed:
        extra += ", prune boundary signed"
    click.echo(
        f"OK: {report.records} records (seq {report.first_seq}..{report.last_seq}), head {report.head_hash}, "
        f"{report.checkpoints_checked} checkpoint(s) matched{extra}"
    )


def _witness(checkpoints: str | None, public_key: str | None) -> tuple[tuple[Checkpoint, ...], Any]:
    """The checkpoints of a witness file (JSON Lines) and the public key they are signed with.

    Raises:
        OSError, ValueError, TypeError: a file cannot be read or is malformed.
    """
    marks = (
        tuple(Checkpoint(**json.loads(line)) for line in Path(checkpoints).read_text().splitlines() if line.strip()) if checkpoints else ()
    )
    return marks, _load_key(public_key, private=False) if public_key else None


def _activation_keys() -> ActivationKeys | None:
    """The activation keys `kpb serve` would use, from the environment; None when there are none."""
    dedicated = secrets_from_env(os.environ, "ACTIVATION_KEYS")
    if dedicated:
        return ActivationKeys(dedicated)
    hmac_secrets = secrets_from_env(os.environ, "HMAC_SECRETS")
    return derived_activation_keys(hmac_secrets) if hmac_secrets else None


@decisions.command("upgrade")
@LOG_OPTION
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The new log to write; it must not exist.")
@click.option("--checkpoints", type=click.Path(dir_okay=False), help="JSON Lines of exported checkpoints the old log must match.")
@click.option("--public-key", type=click.Path(dir_okay=False), help="Ed25519 public key (PEM) the checkpoints were signed with.")
@click.option(
    "--default-ttl-seconds",
    type=click.IntRange(min=1),
    default=int(DEFAULT_TOKEN_TTL.total_seconds()),
    show_default=True,
    help="Token lifetime assumed for a record without one, as the log was written with.",
)
def decisions_upgrade(
    log_path: str | None, out_path: str, checkpoints: str | None, public_key: str | None, default_ttl_seconds: int
) -> None:
    """Rewrite a kpb-decision/1 log into a new kpb-decision/2 log, re-verified.

    The old log (--log) is verified as `kpb decisions verify` does and never modified; the new
    one (--out) gets its policies, its activations (sealed again with the activation key:
    KPB_ACTIVATION_KEYS, else derived from KPB_HMAC_SECRETS; required) and every decision, in
    order, with its id. A /1 record whose /2 form would not answer exactly what was answered is
    carried over unchanged. The new log must verify and answer every decision as the old one.

    Exit 0 when the new log was written, 2 when the upgrade was refused (nothing is written).

    \b
    Example:
      kpb decisions upgrade --log var/decisions.db --out var/decisions-v2.db
    """
    try:
        activation_keys = _activation_keys()
        if activation_keys is None:
            raise ConfigError(
                "no activation key: set KPB_ACTIVATION_KEYS (or KPB_HMAC_SECRETS, from which the service derives it); "
                "the old log's activations are checked with it and the new log's are sealed with it"
            )
        marks, key = _witness(checkpoints, public_key)
        old = log_path or os.environ.get("KPB_DECISION_LOG", "").strip()
        if not old:  # a PostgreSQL log is written as /2 from the start: only a file is upgraded
            raise click.UsageError("upgrade rewrites a SQLite file: give --log FILE (or set KPB_DECISION_LOG)")
        done = upgrade_file(
            Path(old),
            Path(out_path),
            Verification(activation_keys, marks, key),
            timedelta(seconds=default_ttl_seconds),
            parse_now(None),
        )
    except ChainError as exc:
        fail(exc, 2)  # the message starts with the file that does not verify
    except (BridgeError, OSError, ValueError, TypeError) as exc:
        fail(exc if isinstance(exc, BridgeError) else BridgeError(f"cannot upgrade: {exc}"), 2)
    for line in upgrade_summary(done, activation_keys.source):
        click.echo(line)


@decisions.command("migrate")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False), help="The SQLite log to copy; it is never modified.")
@click.option(
    "--to",
    "target_url",
    help="The empty PostgreSQL database, postgresql://... (default: KPB_DATABASE_URL, which keeps a password out of the process list).",
)
@click.option("--checkpoints", type=click.Path(dir_okay=False), help="JSON Lines of exported checkpoints both logs must match.")
@click.option("--public-key", type=click.Path(dir_okay=False), help="Ed25519 public key (PEM) the checkpoints were signed with.")
def decisions_migrate(source: str, target_url: str | None, checkpoints: str | None, public_key: str | None) -> None:
    """Copy a SQLite decision log into an empty PostgreSQL database, then verify the copy.

    The source is verified first, as `kpb decisions verify` does (activation MACs with the
    service's key from the environment, when set); a source that does not verify is refused
    and nothing is written. Every record keeps its seq, stored columns, body and hashes; the
    inputs, unexpired nonces, checkpoints, prune boundary, policies and activations are copied,
    and the log id is kept, so the witness's checkpoints still apply. One transaction (COPY): a
    failure leaves the database empty; run it again. A database that holds a log is refused.

    Exit 0 when the copy verifies with the source's head, 2 when refused or failed.

    \b
    Example:
      KPB_DATABASE_URL=postgresql://kpb@db.example:5432/kpb kpb decisions migrate --from var/decisions.db
    """
    from keycloak_policy_bridge.decision_log.migrate import Verification as Checks
    from keycloak_policy_bridge.decision_log.migrate import migrate_log

    url = (target_url or os.environ.get("KPB_DATABASE_URL", "")).strip()
    if not url:
        raise click.UsageError("give --to postgresql://... or set KPB_DATABASE_URL")
    if not url.startswith(DATABASE_URL_PREFIXES):
        raise click.UsageError("--to must be a postgresql:// URL (its value is not shown: it may hold a password)")
    where = LogLocation(None, url)
    try:
        marks, key = _witness(checkpoints, public_key)
        done = migrate_log(Path(source), url, Checks(marks, key, _activation_keys()), int(parse_now(None).timestamp()))
    except (BridgeError, OSError, ValueError, TypeError) as exc:
        fail(_without_secrets(exc if isinstance(exc, BridgeError) else BridgeError(f"cannot migrate: {exc}"), where), 2)
    src, dst = done.source_verified, done.target_verified
    seq_range = f"seq {src.first_seq}..{src.last_seq}" if src.records else "no records"
    for line in (
        f"migrated {done.source} -> {done.target} (one transaction, COPY)",
        f"  records      {done.records} ({seq_range})",
        f"  inputs       {done.inputs}",
        f"  nonces       {done.nonces} unexpired signed-request nonce(s)",
        f"  checkpoints  {done.checkpoints} stored",
        f"  policies     {done.policies}",
        f"  activations  {done.activations} ({dst.activations} sealed, {dst.unsealed_activations} unsealed from before sealing)",
        f"  log id       {done.log_id} (kept: checkpoints and activation MACs of the file still hold)",
        f"  head         {src.head_hash} (source)",
        f"               {dst.head_hash} (copy)",
        f"  verified     source and copy, {dst.checkpoints_checked} checkpoint(s) matched"
        + (", activation MACs checked" if dst.activation_macs_checked else ""),
    ):
        click.echo(line)


def upgrade_summary(done: UpgradedFile, key_source: str) -> list[str]:
    """The one-screen report of ``kpb decisions upgrade`` (docs/decision-log.md shows one)."""
    report = done.report
    lines = [
        f"upgraded {done.old} -> {done.new}",
        f"  records      {report.records}: {report.converted} converted to {RECORD_SCHEMA}, "
        f"{len(report.kept_v1)} kept as {RECORD_SCHEMA_V1}, {report.already_v2} already {RECORD_SCHEMA}",
    ]
    shown = report.kept_v1[:KEPT_SHOWN]
    lines += [f"    kept {kept.decision_id}: {kept.reason}" for kept in shown]
    if len(report.kept_v1) > len(shown):
        lines.append(f"    ... and {len(report.kept_v1) - len(shown)} more")
    percent = f" ({100 * done.bytes_after / done.bytes_before:.0f}%)" if done.bytes_before else ""
    seq_range = f"seq {report.source.first_seq}..{report.source.last_seq}" if report.records else "no records"
    lines += [
        f"  policies     {report.policies} copied (same digests)",
        f"  activations  {report.activations_copied} copied, sealed ({key_source}); "
        f"{report.activations_left_out} unsealed legacy activation(s) left out",
        f"  nonces       {report.nonces} unexpired signed-request nonce(s) carried over",
        f"  size         {done.bytes_before:,} bytes -> {done.bytes_after:,} bytes{percent}",
        f"  log id       {report.source_log_id} -> {report.target_log_id}",
        f"  head         {report.source.head_hash}",
        f"            -> {report.target.head_hash} (a new chain, from genesis)",
        f"  verified     old: {seq_range}, {report.source.checkpoints_checked} checkpoint(s) matched; "
        "new: verifies, every decision answers as before",
        "",
        "Checkpoints of the old log do not apply to the new one (another chain, another log id).",
        "Take a new signed checkpoint and export it to the witness:",
        f"  kpb decisions checkpoint --log {done.new} --key WITNESS-KEY.pem >> NEW-CHECKPOINTS.jsonl",
    ]
    return lines


@decisions.command("checkpoint")
@LOG_OPTION
@click.option("--key", "key_path", type=click.Path(dir_okay=False), help="Ed25519 private key (PEM) to sign with.")
@click.option("--key-id", help="Name of the key, recorded with the signature.")
def decisions_checkpoint(log_path: str | None, key_path: str | None, key_id: str | None) -> None:
    """Record the chain head and print it as one JSON line for an off-box witness.

    \b
    Example:
      kpb decisions checkpoint --log var/decisions.db --key witness.pem >> checkpoints.jsonl
    """
    log = open_log(log_path, readonly=False)
    try:
        key = _load_key(key_path, private=True) if key_path else None
        checkpoint = log.checkpoint(parse_now(None), key, key_id)
    except (BridgeError, OSError, ValueError, TypeError) as exc:
        fail(exc if isinstance(exc, BridgeError) else BridgeError(f"cannot checkpoint: {exc}"), 2)
    click.echo(json.dumps(checkpoint.to_dict(), sort_keys=True))


@decisions.command("prune")
@LOG_OPTION
@click.option("--before", required=True, help="Remove decisions evaluated before this instant (RFC 3339, or an age: 90d).")
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Ed25519 private key (PEM) that signs the prune boundary (the witness key).",
)
@click.option("--key-id", help="Name of the key, recorded with the signature.")
def decisions_prune(log_path: str | None, before: str, key_path: str, key_id: str | None) -> None:
    """Remove the oldest decisions; the chain stays verifiable from the cut, which is signed.

    The signed prune statement is kept in the log; `verify --public-key` refuses a boundary
    without one (records deleted by hand). It is also printed as a JSON line for the witness.
    """
    log = open_log(log_path, readonly=False)
    now = parse_now(None)
    cut = parse_instant(before, now, "--before")
    assert cut is not None
    try:
        key = _load_key(key_path, private=True)
        removed = log.prune(cut, now, key, key_id)
        boundary = log.prune_boundary() if removed else None
    except (BridgeError, OSError, ValueError, TypeError) as exc:
        fail(exc if isinstance(exc, BridgeError) else BridgeError(f"cannot prune: {exc}"), 2)
    click.echo(f"pruned {removed} decision(s) evaluated before {cut.isoformat()}", err=boundary is not None)
    if boundary is not None:
        click.echo(json.dumps(boundary.to_dict(), sort_keys=True))


def _load_key(path: str, private: bool) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data = Path(path).read_bytes()
    key = serialization.load_pem_private_key(data, password=None) if private else serialization.load_pem_public_key(data)
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        raise ValueError("checkpoint keys are Ed25519")
    return key
