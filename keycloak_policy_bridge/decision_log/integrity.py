"""``verify``, for every SQL backend: every check, in order, over one consistent read of the log.

1. the prune boundary (with a public key: a signed prune statement must vouch for it);
2. the stored inputs: each document still hashes to its ref (``input_modified``);
3. the decision chain in ``seq`` order: no gap (``chain_gap``), each ``prev_hash`` the previous
   hash (``chain_link``), each hash over the stored columns and body (``chain_hash``), every input
   a ``/2`` record references stored (``input_missing``), its references readable
   (``record_unreadable``), and the checkpoints at their ``seq`` (``checkpoint_mismatch``,
   ``checkpoint_signature``);
4. the stored policies (``policy_modified``) and the activation chain and MACs (``policies``);
5. the checkpoints' activation heads, and no checkpoint beyond the end of the log.

The first problem raises ``ChainError`` naming the record, input, activation, checkpoint or
boundary, with a stable issue code. Reading a record's references costs a partial decode of its
body (``record.codec.stored_input_refs``); nothing else is parsed.

The checks read the log through ``StoredLog``: a backend (``sqlite_reader``, ``postgres_reader``)
gives its rows, all from one snapshot, and one implementation checks both, so a tampered record
is named by the same code and message whatever the database. The chain is consumed as a stream:
a backend that yields it in batches verifies a log of any length in constant memory (the refs of
the stored inputs are kept, not the records).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys
from keycloak_policy_bridge.decision_log.chain import GENESIS, chain_link, verify_signature
from keycloak_policy_bridge.decision_log.input_store import as_bytes
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint, VerifyReport
from keycloak_policy_bridge.decision_log.policies import verify_activations, verify_policies
from keycloak_policy_bridge.errors import ChainError, Issue
from keycloak_policy_bridge.record import RecordFormatError, decode
from keycloak_policy_bridge.record.codec import V2, stored_input_refs
from keycloak_policy_bridge.record.inputs import input_ref


class StoredLog(Protocol):
    """What ``verify_log`` reads, whatever the database; every method reads the same snapshot.
    A table the log does not have yet (a file no ``/2`` record or policy was written to) reads empty."""

    def meta(self, key: str) -> str | None:
        """A ``meta`` value (``log_id``, ``pruned_through_seq``, ``pruned_head_hash``, ``pruned_checkpoint``)."""
        ...

    def chain(self) -> Iterable[tuple[Any, ...]]:
        """Every record in ``seq`` order: ``(seq, *RecordColumns.NAMES values, body, prev_hash, hash)``,
        the body as stored (bytes, or text for a row edited by hand)."""
        ...

    def inputs(self) -> Iterable[tuple[str, Any]]:
        """Every stored input: ``(ref, document as stored)``, by ref (so that both backends name
        the same first modified input)."""
        ...

    def policies(self) -> Iterable[tuple[str, Any]]:
        """Every stored policy: ``(digest, canonical JSON document)``, by digest."""
        ...

    def activations(self) -> Iterable[Activation]:
        """Every activation row, in ``seq`` order, as stored."""
        ...


def verify_log(rows: StoredLog, checkpoints: list[Checkpoint], public_key: Any, activation_keys: ActivationKeys | None) -> VerifyReport:
    """Run every check (the module docstring) on ``rows``; see ``SQLiteDecisionReader.verify``.

    Raises:
        ChainError: naming the first thing that does not hold, with a stable issue code.
    """
    by_seq = {c.seq: c for c in checkpoints if c.kind is None}
    prune_signed = verify_prune_boundary(rows, checkpoints, public_key)
    stored_inputs = verify_inputs(rows.inputs())
    prev = rows.meta("pruned_head_hash") or GENESIS
    expected_seq = int(rows.meta("pruned_through_seq") or 0) + 1
    first = last = None
    count = checked = 0
    for row in rows.chain():
        seq, decision_id, blob, prev_hash, h = row[0], row[1], row[10], row[11], row[12]
        where = f"record seq {seq} (decision {decision_id})"
        if seq != expected_seq:
            raise ChainError(
                f"{where}: expected seq {expected_seq}; a record was deleted or inserted", [Issue(where, "sequence gap", "chain_gap")]
            )
        if prev_hash != prev:
            raise ChainError(
                f"{where}: prev_hash does not match the previous record; a record was deleted, inserted or reordered",
                [Issue(where, "broken link", "chain_link")],
            )
        data = as_bytes(blob)
        if chain_link(prev, tuple(row[1:10]), data) != h:
            raise ChainError(f"{where}: hash does not match its content; the record was modified", [Issue(where, "modified", "chain_hash")])
        if data[:1] == V2:
            _check_references(where, data, stored_inputs)
        elif data[:1] != b"{":  # neither /2 nor /1 (plain JSON): nothing could read it
            raise ChainError(f"{where}: its body cannot be read (unknown leading byte)", [Issue(where, "unreadable", "record_unreadable")])
        count += 1
        first = first if first is not None else seq
        last = seq
        checkpoint = by_seq.get(seq)
        if checkpoint is not None:
            if checkpoint.head_hash != h:
                raise ChainError(
                    f"checkpoint at seq {seq}: head hash differs from the log; records up to seq {seq} were rewritten",
                    [Issue(f"checkpoint {seq}", "head differs", "checkpoint_mismatch")],
                )
            verify_signature(checkpoint, public_key)
            checked += 1
        prev = h
        expected_seq = seq + 1
    stored_policies = verify_policies(rows.policies())
    sealed, unsealed, heads = verify_activations(rows.activations(), rows.meta("log_id") or "", activation_keys, stored_policies)
    _check_activation_heads(checkpoints, heads, public_key)
    missing = [c.seq for c in checkpoints if c.seq >= expected_seq]
    if missing:
        raise ChainError(
            f"checkpoint at seq {missing[0]}: the log ends at seq {expected_seq - 1}; records were deleted from the end",
            [Issue(f"checkpoint {missing[0]}", "log shorter than checkpoint", "checkpoint_mismatch")],
        )
    return VerifyReport(
        count, first, last, prev, checked, sealed, unsealed, activation_keys is not None, prune_signed, inputs=len(stored_inputs)
    )


def verify_inputs(inputs: Iterable[tuple[str, Any]]) -> set[str]:
    """The refs of the stored ``inputs`` (``(ref, document as stored)``), each checked: an input is
    content-addressed, so a rewritten (or damaged) document no longer hashes to its ref.

    Raises:
        ChainError: (``input_modified``) naming the first such input.
    """
    refs: set[str] = set()
    for ref, blob in inputs:
        try:
            intact = input_ref(decode(as_bytes(blob))) == ref
        except RecordFormatError:
            intact = False
        if not intact:
            where = f"recorded input {ref[:16]}"
            raise ChainError(
                f"{where}: its document no longer matches its reference; it was modified", [Issue(where, "modified", "input_modified")]
            )
        refs.add(ref)
    return refs


def _check_references(where: str, data: bytes, stored_inputs: set[str]) -> None:
    try:
        refs = stored_input_refs(data)
    except RecordFormatError as exc:
        # The hash held, so these bytes are what was appended (or a rewrite that recomputed the
        # chain, which checkpoints catch): report it rather than crash.
        raise ChainError(f"{where}: its body cannot be read ({exc})", [Issue(where, "unreadable", "record_unreadable")]) from None
    for ref in refs:
        if ref not in stored_inputs:
            raise ChainError(
                f"{where}: its recorded input {ref[:16]} is not stored; it was deleted", [Issue(where, "input missing", "input_missing")]
            )


def verify_prune_boundary(rows: StoredLog, checkpoints: list[Checkpoint], public_key: Any) -> bool | None:
    """With ``public_key``, a pruned log's boundary must be vouched for by a signed prune
    statement (the one ``prune`` stored, or a witness line): a boundary in ``meta`` alone is
    what anyone deleting records would write. Returns None when there is nothing to check.

    Raises:
        ChainError: (``prune_unsigned``) no signed statement vouches for the boundary.
    """
    through = int(rows.meta("pruned_through_seq") or 0)
    if through == 0 or public_key is None:
        return None
    head, log_id = rows.meta("pruned_head_hash"), rows.meta("log_id") or ""
    candidates = [c for c in checkpoints if c.kind == "prune"]
    stored = rows.meta("pruned_checkpoint")
    if stored:
        try:
            candidates.append(Checkpoint(**json.loads(stored)))
        except (TypeError, ValueError):
            pass  # not a statement prune wrote: it vouches for nothing, and the error below names the boundary
    where = f"prune boundary at seq {through}"
    for statement in candidates:
        if statement.seq == through and statement.head_hash == head and statement.log_id == log_id and statement.signature:
            try:
                verify_signature(statement, public_key)
            except ChainError:
                continue
            return True
    raise ChainError(
        f"{where}: no signed prune statement vouches for it; records through seq {through} were deleted "
        "without a prune (or the boundary was moved)",
        [Issue(where, "unsigned boundary", "prune_unsigned")],
    )


def _check_activation_heads(checkpoints: list[Checkpoint], heads: dict[int, str], public_key: Any) -> None:
    for checkpoint in checkpoints:
        if checkpoint.activation_seq:  # 0 or None: no activation to compare (none yet, or an older witness line)
            verify_signature(checkpoint, public_key)
            where = f"checkpoint at seq {checkpoint.seq}"
            if checkpoint.activation_seq not in heads:
                raise ChainError(
                    f"{where}: activation seq {checkpoint.activation_seq} is not in the log (or not sealed); activations were deleted",
                    [Issue(where, "activation missing", "checkpoint_mismatch")],
                )
            if heads[checkpoint.activation_seq] != checkpoint.activation_hash:
                raise ChainError(
                    f"{where}: activation seq {checkpoint.activation_seq} differs from the log; activations up to it were rewritten",
                    [Issue(where, "activation differs", "checkpoint_mismatch")],
                )
