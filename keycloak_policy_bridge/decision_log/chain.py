"""The hash chain: a record's queryable columns, the link that covers them and its body, and the
signatures on checkpoints.

Each stored record has ``prev_hash`` and ``hash = sha256(prev_hash || columns || body)`` over the
columns queries filter on and its body, byte for byte as stored. A changed column (what queries
see) breaks the chain as surely as a changed body, and checking the chain needs no decoding.
The columns are derived from the record here and nowhere else (``RecordColumns.of``), for every
backend and both record versions; ``verify`` recomputes the link from the stored values.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.decision_log.activations import Activation
from keycloak_policy_bridge.decision_log.interfaces import Checkpoint
from keycloak_policy_bridge.errors import ChainError, Issue
from keycloak_policy_bridge.record import DecisionRecord
from keycloak_policy_bridge.timeutil import format_rfc3339

GENESIS = "0" * 64


@dataclass(frozen=True)
class RecordColumns:
    """A record's queryable columns, in their stored (and hashed) form and order."""

    decision_id: str
    evaluated_at: str  # sortable()
    subject_id: str | None
    keycloak_user_id: str | None
    client_id: str | None
    effect: str
    rules: str  # JSON list of rule names, sorted; ``Query.rule`` matches one exactly
    policy_digest: str
    token_expires_at: str  # sortable(); drift and ``live`` read it

    NAMES: ClassVar[tuple[str, ...]] = (
        "decision_id",
        "evaluated_at",
        "subject_id",
        "keycloak_user_id",
        "client_id",
        "effect",
        "rules",
        "policy_digest",
        "token_expires_at",
    )

    @classmethod
    def of(cls, record: DecisionRecord, default_ttl: timedelta) -> RecordColumns:
        """The columns of ``record``; a token without a recorded lifetime lives ``default_ttl``."""
        return cls(
            record.decision_id,
            sortable(record.evaluated_at),
            record.subject_id,
            record.keycloak_user_id,
            record.client_id,
            record.effect,
            json.dumps(list(record.rules)),
            record.policy_digest,
            sortable(record.token_expires_at(default_ttl)),
        )

    def values(self) -> tuple[Any, ...]:
        return (
            self.decision_id,
            self.evaluated_at,
            self.subject_id,
            self.keycloak_user_id,
            self.client_id,
            self.effect,
            self.rules,
            self.policy_digest,
            self.token_expires_at,
        )


def chain_link(prev: str, columns: tuple[Any, ...], blob: bytes) -> str:
    """The hash of one record: the previous hash, its columns (``RecordColumns.values`` order) and
    its body as stored."""
    return hashlib.sha256(prev.encode("ascii") + b"\n" + canonical_json(list(columns)) + b"\n" + blob).hexdigest()


def sortable(moment: datetime) -> str:
    """Fixed-width UTC text, so that string order is time order: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    if utc.year < 1000:  # isoformat pads the year to 4 digits, strftime (which wrote the stored columns) does not
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as that strftime, at a third of its cost (twice per append).
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def rule_token(rule: str) -> str:
    """What ``Query.rule`` looks for in the ``rules`` column: the JSON string of the rule, so a
    substring match is an exact, case-sensitive match of one rule."""
    return json.dumps(rule)


# -- checkpoints, prune statements and their signatures ------------------------------------------
# What a checkpoint and a prune statement say is decided here once, for every backend; each
# backend only reads the values under its own lock and stores the result.


def head_checkpoint(
    seq: int,
    count: int,
    head_hash: str,
    now: datetime,
    log_id: str,
    activation: Activation | None,
    private_key: Any = None,
    key_id: str | None = None,
) -> Checkpoint:
    """The checkpoint of a chain head: record ``seq`` (whose hash is ``head_hash``), ``count``
    records in the log, and the newest sealed ``activation`` (None: none yet); signed with
    ``private_key`` (Ed25519) when given."""
    checkpoint = Checkpoint(
        seq,
        count,
        head_hash,
        format_rfc3339(now),
        log_id,
        key_id,
        activation_seq=activation.seq if activation else 0,
        activation_hash=activation.hash if activation else GENESIS,
    )
    return signed(checkpoint, private_key)


def prune_statement(
    through: int, count: int, head_hash: str, now: datetime, log_id: str, private_key: Any = None, key_id: str | None = None
) -> Checkpoint:
    """The statement a prune stores (and signs with ``private_key``): records through ``through``
    (``count`` of them, the last hashing to ``head_hash``) were removed on purpose."""
    return signed(Checkpoint(through, count, head_hash, format_rfc3339(now), log_id, key_id, kind="prune"), private_key)


def prune_meta(statement: Checkpoint, now: datetime) -> list[tuple[str, str]]:
    """The ``meta`` rows a prune writes (``PRUNE_META`` keys): the statement, the new start of the
    chain (``verify`` continues from it) and when."""
    boundary = json.dumps(statement.to_dict(), sort_keys=True)
    values = (boundary, str(statement.seq), statement.head_hash, format_rfc3339(now))
    return list(zip(PRUNE_META, values, strict=True))


PRUNE_META = ("pruned_checkpoint", "pruned_through_seq", "pruned_head_hash", "pruned_at")


def signed(checkpoint: Checkpoint, private_key: Any) -> Checkpoint:
    """``checkpoint`` signed with an Ed25519 private key (unchanged when there is none)."""
    if private_key is None:
        return checkpoint
    return replace(checkpoint, signature=base64.b64encode(private_key.sign(checkpoint.payload())).decode())


def verify_signature(checkpoint: Checkpoint, public_key: Any) -> None:
    """Check ``checkpoint``'s signature with an Ed25519 public key (nothing when there is none).

    Raises:
        ChainError: (``checkpoint_signature``) unsigned, or the signature does not verify.
    """
    if public_key is None:
        return
    if checkpoint.signature is None:
        # With a key given, an unsigned witness line proves nothing: anyone could have written it.
        raise ChainError(
            f"checkpoint at seq {checkpoint.seq}: not signed, but a public key was given",
            [Issue(f"checkpoint {checkpoint.seq}", "unsigned", "checkpoint_signature")],
        )
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        raise ChainError(
            f"checkpoint at seq {checkpoint.seq}: the signature does not verify",
            [Issue(f"checkpoint {checkpoint.seq}", "bad signature", "checkpoint_signature")],
        ) from None
