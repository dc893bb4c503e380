"""The decision record, typed: ``DecisionRecord`` and its parts.

A record is one decision with everything needed to re-run it: the request as recorded (masked
paths as keyed hashes), the decision itself (``decision.Decision``: effect, claims, reasons,
provenance down to the entitlement records, principals, policy identity, freshness), the
snapshot and feeds it was made against, the recorded inputs (every identity and feed row the
evaluation read) and the token's lifetime. Every audit module (replay, explain, drift, token
checks, the admin API, the log's columns and the CLI) reads records through this type; the JSON
forms live in ``record.codec`` (``kpb-decision/2``) and ``record.v1`` (``kpb-decision/1``, read
only).

The rules derived from a record are computed here and nowhere else: ``token_expires_at`` (the
log's live index and drift), ``rules`` (what a decision names), the recorded join
(``joined_subject``) and the response the caller got (``response``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keycloak_policy_bridge.context_feed import FeedRow
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.entitlements import Identity
from keycloak_policy_bridge.join_keys import BY_FIELD, BY_PATH, JoinKey

RECORD_SCHEMA = "kpb-decision/2"
RECORD_SCHEMA_V1 = "kpb-decision/1"


@dataclass(frozen=True)
class SnapshotRef:
    """The entitlement snapshot a decision was made against. ``source_system`` is None for a
    ``/1`` record written before it was recorded (replay then uses the strict join)."""

    id: str
    digest: str
    generated_at: datetime
    source_system: str | None


@dataclass(frozen=True)
class FeedInput:
    """One context feed loaded when the decision was made, with the rows the evaluation read
    (by IGA subject id; a subject read with no rows maps to an empty tuple)."""

    name: str
    snapshot_id: str
    digest: str
    generated_at: datetime
    rows: Mapping[str, tuple[FeedRow, ...]]


@dataclass(frozen=True)
class DecisionRecord:
    """One recorded decision (see the module docstring).

    ``decision.inputs`` are the recorded identities (masked join keys hashed, as stored);
    ``request`` is the request document as stored. ``recorded_response`` is set for a ``/1``
    record only: the response exactly as it was recorded, which older code shaped slightly
    differently (``response`` returns it unchanged, so a reproduction compares like with like).
    """

    decision_id: str
    request: Mapping[str, Any]
    masked: tuple[str, ...]
    decision: Decision
    snapshot: SnapshotRef
    feeds: Mapping[str, FeedInput]
    token_ttl_seconds: int | None
    schema: str = RECORD_SCHEMA
    recorded_response: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    # -- identity ----------------------------------------------------------------------------

    @property
    def evaluated_at(self) -> datetime:
        return self.decision.evaluated_at

    @property
    def effect(self) -> str:
        return self.decision.effect

    @property
    def permitted(self) -> bool:
        return self.decision.permitted

    @property
    def policy_digest(self) -> str:
        return self.decision.policy_digest

    @property
    def subject_id(self) -> str | None:
        """The IGA subject the request's subject joined (None when it joined nothing)."""
        principals = self.decision.principals
        return principals[0].subject_id if principals and principals[0].role == "subject" else None

    @property
    def keycloak_user_id(self) -> str | None:
        """The Keycloak id of the subject as recorded (a keyed hash when ``subject.id`` was masked)."""
        subject = self.request.get("subject")
        value = subject.get("id") if isinstance(subject, Mapping) else None
        return value if isinstance(value, str) else None

    @property
    def client_id(self) -> str | None:
        client = self.request.get("client")
        value = client.get("client_id") if isinstance(client, Mapping) else None
        return value if isinstance(value, str) else None

    @property
    def identities(self) -> tuple[Identity, ...]:
        return self.decision.inputs

    @property
    def rules(self) -> tuple[str, ...]:
        """Every rule the decision names, in its reasons or its provenance, sorted."""
        return self.decision.rules()

    # -- derived rules -------------------------------------------------------------------------

    def token_expires_at(self, default_ttl: timedelta) -> datetime:
        """When the token minted from this decision expires at the latest: ``evaluated_at`` plus
        the recorded lifetime, or ``default_ttl`` when none was recorded. The log's live index
        and drift both use this, so they agree on which tokens are live."""
        ttl = self.token_ttl_seconds
        return self.evaluated_at + (timedelta(seconds=ttl) if ttl is not None else default_ttl)

    def joined_subject(self) -> tuple[str | None, JoinKey | None]:
        """(IGA subject id, join key) by which the request's subject was joined; (None, None)
        when it joined nothing."""
        principals = self.decision.principals
        if not principals or principals[0].role != "subject":
            return None, None
        return principals[0].subject_id, BY_FIELD.get(principals[0].matched_by or "")

    def masked_join_keys(self) -> tuple[JoinKey, ...]:
        """The subject join keys this record stores as keyed hashes."""
        return tuple(BY_PATH[p] for p in self.masked if p in BY_PATH)

    def response(self, *, minimal: bool = False) -> dict[str, Any]:
        """The response document the caller received (contract v1, section 1); ``minimal``: its
        fields a token needs (``Decision.response``)."""
        if self.recorded_response is not None:
            return dict(self.recorded_response)
        return self.decision.response(self.decision_id, minimal=minimal)
