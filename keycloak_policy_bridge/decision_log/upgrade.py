"""Rewriting a decision log as ``kpb-decision/2``: ``kpb decisions upgrade``.

A ``/1`` log needs no upgrade: it verifies, reads and grows as it is (new rows are ``/2``). This
is for an operator who wants the smaller ``/2`` rows for the old decisions too. The old log is
never modified; the new one is a new log (a new ``log_id``, a chain from genesis) that answers,
decision by decision, exactly what the old one answers.

``upgrade_file(old, new, ...)`` is the whole operation:

1. Refusals: ``new`` exists (never overwritten); ``old`` does not verify with the checks ``kpb
   decisions verify`` runs (``Verification``: the activation keys, and optionally the witness's
   checkpoints and public key), checked before anything is copied; whatever ``upgrade`` refuses.
2. ``new`` is written under a temporary name in its directory, with ``old``'s permission bits,
   and appears under its own name only once complete and checked (a hard link, which fails
   rather than replace a file created meanwhile). On any failure or refusal the temporary file
   is removed: ``new`` never exists half-written.

``upgrade(source, ..., target, ...)`` is the copy, on two open stores:

- every stored policy (content-addressed: the same digests);
- the activations, in order, with their original ``activated_by`` and ``activated_at``, sealed
  anew with the activation keys (a seal is bound to its log's id). Unsealed legacy activations
  are never followed by a bridge: they are left out and counted;
- every decision, in seq order, with its id (``as_v2``). A ``/1`` record becomes ``/2`` only
  when its ``/2`` form answers exactly what was answered (``DecisionRecord.response``), reads
  back as the same record and has the columns its row had (queries and token expiry unchanged,
  with the same default token lifetime); otherwise its ``/1`` document is carried over
  unchanged with its row's columns (``SQLiteDecisionLog.append_v1_document``) and the report
  says why. ``/2`` records are appended as they are;
- the signed-request nonces that have not expired (a request answered through the old log is
  refused as a replay on the new one too).

Then the source must still be at the head it verified at (nothing wrote to it meanwhile), the
target must verify, and every decision must read back from the target as the same record, with
the same response, rules, effect, token expiry and stored columns, in the same order. Only then
is the provenance noted in the target's ``meta`` (``SQLiteDecisionLog.record_upgrade``).

Checkpoints of the old log do not apply to the new one (another chain, another log id): a new
signed checkpoint must be taken and exported (``kpb decisions checkpoint --key``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from keycloak_policy_bridge.decision_log.activations import ActivationKeys
from keycloak_policy_bridge.decision_log.chain import RecordColumns
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, Query, UnreadableRecord, VerifyReport
from keycloak_policy_bridge.decision_log.policies import SQLitePolicyStore
from keycloak_policy_bridge.decision_log.sqlite import SQLiteDecisionLog
from keycloak_policy_bridge.decision_log.sqlitefile import reason
from keycloak_policy_bridge.errors import ChainError, DecisionLogError
from keycloak_policy_bridge.record import RECORD_SCHEMA, DecisionRecord, RecordFormatError, decode, encode, from_document, to_document
from keycloak_policy_bridge.timeutil import parse_rfc3339

_MISSING = object()
UPGRADED = "the upgraded log"  # how messages name the target: its temporary file is gone when they are read
A = TypeVar("A")
B = TypeVar("B")


@dataclass(frozen=True)
class Verification:
    """What a log is verified with, as ``kpb decisions verify`` does: the activation keys (which
    also seal the new log's activations, so they are required here) and optionally the
    witness's checkpoints and the Ed25519 public key they are signed with (for the old log only:
    they do not apply to the new one)."""

    activation_keys: ActivationKeys = field(repr=False)
    checkpoints: tuple[Checkpoint, ...] = ()
    public_key: Any = field(default=None, repr=False)


@dataclass(frozen=True)
class KeptRecord:
    """A ``/1`` record carried over as its ``/1`` document, and why it was not converted."""

    decision_id: str
    reason: str


@dataclass(frozen=True)
class UpgradeReport:
    """What ``upgrade`` copied, and the two logs' identities and heads.

    ``records == converted + len(kept_v1) + already_v2``. ``source`` and ``target`` are the
    verification reports of the old log (before the copy) and of the new one (after it).
    """

    records: int
    converted: int  # /1 records written as /2
    kept_v1: tuple[KeptRecord, ...]  # /1 records carried over unchanged
    already_v2: int  # /2 records appended as they are
    policies: int
    activations_copied: int
    activations_left_out: int  # unsealed legacy activations: never followed, not copied
    nonces: int  # unexpired signed-request nonces carried over
    source_log_id: str
    target_log_id: str
    source: VerifyReport
    target: VerifyReport
    upgraded_at: datetime


@dataclass(frozen=True)
class UpgradedFile:
    """``upgrade_file``'s result: the report, the two files and their sizes (the database file
    and its write-ahead log, if any)."""

    report: UpgradeReport
    old: Path
    new: Path
    bytes_before: int
    bytes_after: int


def upgrade_file(old: Path, new: Path, verification: Verification, default_ttl: timedelta, now: datetime) -> UpgradedFile:
    """Write the upgrade of the log ``old`` to the new file ``new`` (the module docstring).

    ``default_ttl`` is the lifetime assumed for a token whose record has none, as the log was
    written with (the CLI's default, one hour): the new log's expiry columns must equal the old
    one's, so with another value such a ``/1`` record is kept as ``/1`` and such a ``/2`` record
    is refused. ``now`` is the upgrade's instant (noted in ``meta``; nonces expired by then are
    not carried over).

    Raises:
        DecisionLogError: ``new`` exists or its directory does not; ``old`` is not a readable
            log; the copy could not be written, or does not answer what ``old`` answers (named).
        ChainError: ``old`` does not verify, or the copy does not (prefixed with the file).
        After any of these, ``new`` was not created and no temporary file is left.
    """
    old, new = Path(old), Path(new)
    if new.exists() or new.is_symlink():
        raise DecisionLogError(f"{new}: already exists; an upgrade never overwrites a file")
    if not new.parent.is_dir():
        raise DecisionLogError(f"{new.parent}: no such directory")
    if not old.is_file():
        raise DecisionLogError(f"{old}: no decision log there")
    source = SQLiteDecisionLog(old, default_token_ttl=default_ttl, readonly=True)
    source_policies = SQLitePolicyStore(old, activation_keys=verification.activation_keys, readonly=True)
    bytes_before = _size(old)
    temporary = new.parent / f".{new.name}.upgrading-{secrets.token_hex(6)}"
    try:
        # Created here, exclusively and with old's mode, before SQLite opens it: the new log holds
        # the same personal data and must not be more readable than the old one.
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(old.stat().st_mode)))
        # synchronous=normal: no fsync per record; the final checkpoint syncs the file once,
        # and an interrupted upgrade leaves nothing anyway.
        target = SQLiteDecisionLog(temporary, default_token_ttl=default_ttl, synchronous="normal")
        target_policies = SQLitePolicyStore(temporary, activation_keys=verification.activation_keys)
        try:
            report = upgrade(source, source_policies, target, target_policies, verification, now)
        finally:
            target.close()
            target_policies.close()
        _settle(temporary)
        _publish(temporary, new)
    except BaseException:
        for leftover in (temporary, *_companions(temporary)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise
    return UpgradedFile(report, old, new, bytes_before, _size(new))


def upgrade(
    source: SQLiteDecisionLog,
    source_policies: SQLitePolicyStore,
    target: SQLiteDecisionLog,
    target_policies: SQLitePolicyStore,
    verification: Verification,
    now: datetime,
) -> UpgradeReport:
    """Copy the log ``source`` (with its policy store) into the new, empty log ``target`` (with
    its policy store, holding ``verification.activation_keys``), check the copy and note its
    provenance (the module docstring). The caller owns the files: on an error ``target`` is
    partly written and must be discarded.

    Raises:
        ChainError: ``source`` does not verify (before anything is copied), or ``target`` does
            not (after); the message starts with the file.
        DecisionLogError: ``target`` is not empty; a record of ``source`` cannot be read;
            ``source`` changed during the copy; the copy does not answer what ``source`` answers.
    """
    before = _verified(source, str(source.path), verification)
    if target.count() or target_policies.policy_digests() or target_policies.activation_history():
        raise DecisionLogError(f"{target.path}: not empty; an upgrade writes a new log")
    policies = _copy_policies(source_policies, target_policies)
    copied, left_out = _copy_activations(source_policies, target_policies)
    nonces = target.carry_nonces(source, int(now.timestamp()))
    converted, already_v2, kept = _copy_decisions(source, target)
    after = _verified(source, str(source.path), verification)
    if (after.head_hash, after.records, after.activations) != (before.head_hash, before.records, before.activations):
        raise DecisionLogError(
            f"{source.path}: it changed during the upgrade (a bridge still writing to it?); stop every writer and run again"
        )
    # The witness's checkpoints are the old chain's: the new log is verified without them.
    result = _verified(target, UPGRADED, Verification(verification.activation_keys))
    if (result.records, result.activations) != (before.records, copied):
        raise DecisionLogError(
            f"{source.path}: {UPGRADED} holds {result.records} records and {result.activations} activations, "
            f"not {before.records} and {copied}; the upgrade is refused"
        )
    _compare(source, target)
    target.record_upgrade(source.log_id(), before.head_hash, now)
    return UpgradeReport(
        records=before.records,
        converted=converted,
        kept_v1=tuple(kept),
        already_v2=already_v2,
        policies=policies,
        activations_copied=copied,
        activations_left_out=left_out,
        nonces=nonces,
        source_log_id=source.log_id(),
        target_log_id=target.log_id(),
        source=before,
        target=result,
        upgraded_at=now,
    )


def as_v2(record: DecisionRecord, stored: RecordColumns, default_ttl: timedelta) -> tuple[DecisionRecord | None, str | None]:
    """(the ``/2`` form of a ``/1`` record, None) when it answers exactly what was answered, reads
    back as the same record and has the columns the row had (``stored``, with ``default_ttl`` for
    a token without a recorded lifetime); (None, why not) otherwise.

    Older code recorded responses without fields added since (``user_message``, ``principals``);
    the ``/2`` form renders the response from the decision, so such a record would change what
    the log says was answered. The reason names the response fields or columns that differ,
    never a value.
    """
    converted = replace(record, schema=RECORD_SCHEMA, recorded_response=None)
    answered, rendered = record.response(), converted.response()
    if rendered != answered:
        fields = sorted(k for k in answered.keys() | rendered.keys() if answered.get(k, _MISSING) != rendered.get(k, _MISSING))
        return None, f"its {RECORD_SCHEMA} form would answer differently ({', '.join(fields)})"
    try:
        document, inputs = to_document(converted)
        read_back = from_document(decode(encode(document)), inputs.__getitem__)
        columns = RecordColumns.of(converted, default_ttl)
    except (RecordFormatError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return None, f"it cannot be written as {RECORD_SCHEMA} ({type(exc).__name__})"
    if read_back != converted:
        return None, f"its {RECORD_SCHEMA} form does not read back as the same record"
    if columns != stored:
        differing = [n for n in RecordColumns.NAMES if getattr(columns, n) != getattr(stored, n)]
        return None, f"its {RECORD_SCHEMA} form would change its stored column(s) {', '.join(differing)}{_ttl_hint(differing)}"
    return converted, None


# -- the steps ------------------------------------------------------------------------------------


def _verified(log: SQLiteDecisionLog, name: str, verification: Verification) -> VerifyReport:
    try:
        return log.verify(list(verification.checkpoints), verification.public_key, activation_keys=verification.activation_keys)
    except ChainError as exc:
        raise ChainError(f"{name}: does not verify: {exc.message}", exc.issues) from None


def _copy_policies(source: SQLitePolicyStore, target: SQLitePolicyStore) -> int:
    digests = source.policy_digests()
    for policy_digest in digests:
        stored = target.store_policy(source.policy(policy_digest))
        if stored != policy_digest:  # verify checked every digest: only a bug gets here
            raise DecisionLogError(f"policy {policy_digest[:19]} was stored under {stored[:19]}; the upgrade is refused")
    return len(digests)


def _copy_activations(source: SQLitePolicyStore, target: SQLitePolicyStore) -> tuple[int, int]:
    """(copied, left out). The source verified, so the only activations with a problem are the
    unsealed rows from before sealing, at the start: a bridge never follows them."""
    copied = left_out = 0
    for activation in source.activation_history():
        if source.activation_problem(activation) is not None:
            left_out += 1
            continue
        sealed = target.record_activation(
            activation.digest, activation.version, activation.activated_by, parse_rfc3339(activation.activated_at)
        )
        if sealed.activated_at != activation.activated_at:  # the stored text is hashed: it must survive the round trip
            raise DecisionLogError(f"{activation.describe()}: its time would be recorded differently; the upgrade is refused")
        copied += 1
    return copied, left_out


def _copy_decisions(source: SQLiteDecisionLog, target: SQLiteDecisionLog) -> tuple[int, int, list[KeptRecord]]:
    """(converted, already /2, kept as /1), appending every record in seq order."""
    converted = already_v2 = 0
    kept: list[KeptRecord] = []
    changed = f"{source.path}: it changed during the upgrade; stop every writer and run again"
    for record, stored in _pairs(source.iterate(Query(limit=None)), source.stored_columns(), changed):
        if isinstance(record, UnreadableRecord):
            raise DecisionLogError(f"{source.path}: {record.describe()}; the upgrade is refused")
        if record.decision_id != stored.decision_id:  # two reads of one file disagree: it is being written to
            raise DecisionLogError(changed)
        if record.schema == RECORD_SCHEMA:
            target.append(record)
            already_v2 += 1
            continue
        v2, why = as_v2(record, stored, target.default_token_ttl)
        if v2 is not None:
            target.append(v2)
            converted += 1
        else:
            target.append_v1_document(source.document(record.decision_id), stored)
            kept.append(KeptRecord(record.decision_id, why or "not converted"))
    return converted, already_v2, kept


def _compare(source: SQLiteDecisionLog, target: SQLiteDecisionLog) -> None:
    """Every decision of ``source`` reads back from ``target`` in the same order as the same
    record (``/1`` records turned ``/2`` differ by their schema only), with the same response,
    rules, effect and token expiry, and the same stored columns; a record carried over as it
    was has the same stored document.

    Raises:
        DecisionLogError: naming the first decision and what differs.
    """
    where = f"{source.path}: the upgrade is refused"
    missing = f"{where}: {UPGRADED} does not hold the same number of records"
    for old, new in _pairs(source.iterate(Query(limit=None)), target.iterate(Query(limit=None)), missing):
        if isinstance(old, UnreadableRecord):
            raise DecisionLogError(f"{where}: {old.describe()}")
        if isinstance(new, UnreadableRecord):
            raise DecisionLogError(f"{where}: in {UPGRADED}, {new.describe()}")
        name = f"{where}: decision {old.decision_id}"
        if new.decision_id != old.decision_id:
            raise DecisionLogError(f"{name} is not in its place in {UPGRADED} (found {new.decision_id})")
        ttl = source.default_token_ttl
        for what, a, b in (
            ("response", old.response(), new.response()),
            ("rules", old.rules, new.rules),
            ("effect", old.effect, new.effect),
            ("token expiry", old.token_expires_at(ttl), new.token_expires_at(target.default_token_ttl)),
        ):
            if a != b:
                raise DecisionLogError(f"{name}: its {what} differs in {UPGRADED}")
        expected = old if new.schema == old.schema else replace(old, schema=new.schema)
        if new != expected:
            raise DecisionLogError(f"{name}: does not read back from {UPGRADED} as the same record")
        if new.schema == old.schema and source.document(old.decision_id) != target.document(new.decision_id):
            raise DecisionLogError(f"{name}: its stored document differs in {UPGRADED}")
    for old_columns, new_columns in _pairs(source.stored_columns(), target.stored_columns(), missing):
        if old_columns != new_columns:
            differing = [n for n in RecordColumns.NAMES if getattr(old_columns, n) != getattr(new_columns, n)]
            raise DecisionLogError(
                f"{where}: decision {old_columns.decision_id}: stored column(s) {', '.join(differing)} differ in {UPGRADED}"
                f"{_ttl_hint(differing)}"
            )


def _pairs(left: Iterable[A], right: Iterable[B], problem: str) -> Iterator[tuple[A, B]]:
    """``zip`` that refuses sequences of different lengths (a record missing or extra), with
    ``problem`` as the message."""
    try:
        yield from zip(left, right, strict=True)
    except ValueError:
        raise DecisionLogError(problem) from None


def _ttl_hint(columns: list[str]) -> str:
    return " (was the log written with another default token lifetime?)" if "token_expires_at" in columns else ""


# -- the file ----------------------------------------------------------------------------------------


def _settle(path: Path) -> None:
    """Fold the write-ahead log into the database file (synced), so that the file alone is the
    log: it is renamed without its ``-wal``. Every other connection is closed by then."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error as exc:
        raise DecisionLogError(f"{path}: cannot complete the new log ({reason(exc)})") from None
    finally:
        conn.close()
    if busy:
        raise DecisionLogError(f"{path}: cannot complete the new log (still in use)")
    for companion in _companions(path):
        if companion.exists() and companion.stat().st_size and companion.name.endswith("-wal"):
            raise DecisionLogError(f"{path}: cannot complete the new log (its write-ahead log was not folded in)")
        with contextlib.suppress(FileNotFoundError):
            companion.unlink()


def _publish(temporary: Path, new: Path) -> None:
    """Give ``temporary`` its final name without ever replacing a file: a hard link fails if
    ``new`` appeared meanwhile (a rename would replace it). Where hard links are not supported,
    a rename after a last check."""
    try:
        os.link(temporary, new)
    except FileExistsError:
        raise DecisionLogError(f"{new}: appeared during the upgrade; it was not overwritten") from None
    except OSError:
        if new.exists():
            raise DecisionLogError(f"{new}: appeared during the upgrade; it was not overwritten") from None
        os.rename(temporary, new)
    else:
        temporary.unlink()
    with contextlib.suppress(OSError):  # make the new name durable; some filesystems cannot sync a directory
        directory = os.open(new.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _companions(path: Path) -> tuple[Path, ...]:
    return tuple(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal", "-writer"))


def _size(path: Path) -> int:
    """The database file's size plus its write-ahead log's (records not yet checkpointed)."""
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
