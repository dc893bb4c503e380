"""What the SQL backends (``sqlite``, ``postgres``) share about the rows they write and read
back: an append on its way through a group commit, and the helpers that turn stored rows into
records. Backend-neutral: no database module is imported here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keycloak_policy_bridge.decision_log.chain import RecordColumns, rule_token, sortable
from keycloak_policy_bridge.decision_log.interfaces import Nonce, Query
from keycloak_policy_bridge.record import RECORD_SCHEMA, RecordFormatError
from keycloak_policy_bridge.record.codec import input_refs
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339


def _taken() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class PendingAppend:
    """One append on its way: prepared by its caller, committed by a leader."""

    blob: bytes
    columns: RecordColumns
    inputs: Mapping[str, Mapping[str, Any]]  # ref -> input document
    blobs: dict[str, bytes]  # ref -> stored bytes, for the refs not known to be stored when prepared
    nonce: Nonce | None = None
    done: bool = False
    hash: str | None = None
    error: BaseException | None = None
    # Held from creation; released once, when the entry is committed or its caller is made the
    # leader. Its caller waits by acquiring it: a lock per waiter, so a commit wakes only its own.
    wake: threading.Lock = field(default_factory=_taken, repr=False)


def refs_of(documents: Iterable[dict[str, Any]]) -> list[str]:
    """The input refs ``/2`` documents reference (a malformed one's are left to its record to report)."""
    refs: list[str] = []
    for document in documents:
        if document.get("schema") == RECORD_SCHEMA:
            try:
                refs.extend(input_refs(document))
            except RecordFormatError:
                continue
    return refs


def rfc3339_of(sortable_text: Any) -> str | None:
    """A stored sortable timestamp as RFC 3339, or None when it is not one (a damaged row)."""
    try:
        return format_rfc3339(parse_rfc3339(sortable_text))
    except (TypeError, ValueError):
        return None


def where_clause(query: Query, placeholder: str, contains: str) -> tuple[str, list[Any]]:
    """``Query`` as a WHERE clause and its arguments, in a backend's dialect: its parameter
    ``placeholder`` (``?``, ``%s``) and its substring test ``contains`` (``instr``, ``strpos``),
    exact and case-sensitive, unlike LIKE."""
    clauses: list[str] = []
    args: list[Any] = []
    if query.subject:
        clauses.append(f"(subject_id = {placeholder} OR keycloak_user_id = {placeholder})")
        args += [query.subject, query.subject]
    if query.client:
        clauses.append(f"client_id = {placeholder}")
        args.append(query.client)
    if query.effect:
        clauses.append(f"effect = {placeholder}")
        args.append(query.effect)
    if query.rule:
        clauses.append(f"{contains}(rules, {placeholder}) > 0")
        args.append(rule_token(query.rule))
    if query.since:
        clauses.append(f"evaluated_at >= {placeholder}")
        args.append(sortable(query.since))
    if query.until:
        clauses.append(f"evaluated_at < {placeholder}")
        args.append(sortable(query.until))
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args
