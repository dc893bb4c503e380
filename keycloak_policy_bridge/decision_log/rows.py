"""What the SQL backends (``sqlite``, ``postgres``) share about the rows they write and read
back: an append on its way through a group commit (``PendingAppend``), the reading half of a log
(``StoredRowsReader``), and the helpers that turn stored rows into records. Backend-neutral: no
database driver is imported here.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar

from keycloak_policy_bridge.decision_log.chain import RecordColumns, rule_token, sortable
from keycloak_policy_bridge.decision_log.input_store import as_bytes
from keycloak_policy_bridge.decision_log.interfaces import Nonce, Query, UnreadableRecord
from keycloak_policy_bridge.errors import DecisionLogError
from keycloak_policy_bridge.record import RECORD_SCHEMA, DecisionRecord, RecordFormatError, decode, encode
from keycloak_policy_bridge.record.codec import input_refs, to_document
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

    @classmethod
    def prepare(cls, record: DecisionRecord, default_token_ttl: timedelta, stored: Any, nonce: Nonce | None) -> PendingAppend:
        """``record`` serialized for a commit, by its caller and outside any lock (while one
        leader commits, the other callers prepare theirs). ``stored``: the refs this process knows
        are stored (``in``); their bytes are not encoded again.

        Raises:
            DecisionLogError: the record is malformed (nothing was recorded).
        """
        try:
            document, inputs = to_document(record)
            return cls(
                encode(document),
                RecordColumns.of(record, default_token_ttl),
                inputs,
                {ref: encode(doc) for ref, doc in inputs.items() if ref not in stored},
                nonce,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # The exception's text can quote the offending value (a request string): name its type only.
            raise DecisionLogError(f"decision record is malformed ({type(exc).__name__}); the decision was not recorded") from None


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


class StoredRowsReader(ABC):
    """The reading half of a SQL decision log, whatever the database: what ``get``, ``document``,
    ``query``, ``iterate`` and ``documents`` make of the rows ``ROW`` selects (decision_id,
    evaluated_at, subject_id, client_id, body). A backend supplies its connections, its row
    lookups and batch loader, and its SQL dialect (``PLACEHOLDER``, ``CONTAINS``)."""

    ROW: ClassVar[str]
    PLACEHOLDER: ClassVar[str]
    CONTAINS: ClassVar[str]

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the log is, as errors name it (a path, or a URL without its password)."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Any]:
        """A connection to read with, in one consistent snapshot."""

    @abstractmethod
    def _stored(self, conn: Any, decision_id: str) -> tuple[Any, ...]:
        """The ``ROW`` of ``decision_id`` (``DecisionNotFoundError`` when there is none)."""

    @abstractmethod
    def _load_batch(self, conn: Any, rows: list[tuple[Any, ...]]) -> Iterator[DecisionRecord | UnreadableRecord]:
        """The records of ``rows``, in order."""

    @abstractmethod
    def _stream(self, sql: str, args: list[Any]) -> Iterator[DecisionRecord | UnreadableRecord]:
        """``sql``'s records, streamed in batches."""

    @abstractmethod
    def _rows(self, sql: str, args: list[Any]) -> AbstractContextManager[tuple[Any, Iterator[tuple[Any, ...]]]]:
        """``sql``'s rows streamed on one connection, with that connection (for their inputs)."""

    @abstractmethod
    def _input_reader(self, conn: Any) -> Any:
        """A callable: input ref -> its document, read on ``conn`` (KeyError when missing)."""

    def _readable(self, loaded: DecisionRecord | UnreadableRecord) -> DecisionRecord:
        if isinstance(loaded, UnreadableRecord):
            raise DecisionLogError(f"{self.location}: {loaded.describe()}")
        return loaded

    def get(self, decision_id: str) -> DecisionRecord:
        """The record of ``decision_id``.

        Raises:
            DecisionNotFoundError: no such decision.
            DecisionLogError: its stored record cannot be read (named; the body is never quoted).
        """
        with self._reading() as conn:
            return self._readable(next(self._load_batch(conn, [self._stored(conn, decision_id)])))

    def document(self, decision_id: str) -> dict[str, Any]:
        """The stored document of ``decision_id`` (``DecisionLogReader.document``).

        Raises:
            DecisionNotFoundError: no such decision.
            DecisionLogError: its stored record or an input it references cannot be read.
        """
        with self._reading() as conn:
            return self._document(conn, self._stored(conn, decision_id))

    def _document(self, conn: Any, row: tuple[Any, ...]) -> dict[str, Any]:
        try:
            document = decode(as_bytes(row[4]))
            refs = input_refs(document)
            if refs:
                input_of = self._input_reader(conn)
                document["inputs"] = {ref: input_of(ref) for ref in refs}
            return document
        except KeyError as exc:
            reason_text = f"recorded input {exc.args[0]} is missing from the log"
        except RecordFormatError as exc:
            reason_text = str(exc)
        raise DecisionLogError(f"{self.location}: {UnreadableRecord(row[0], None, None, None, reason_text).describe()}")

    def query(self, query: Query) -> list[DecisionRecord]:
        """Records matching ``query``, newest first.

        Raises:
            DecisionLogError: a matching record cannot be read (named).
        """
        where, args = where_clause(query, self.PLACEHOLDER, self.CONTAINS)
        sql = f"{self.ROW} {where} ORDER BY seq DESC"
        if query.limit is not None:
            sql += f" LIMIT {int(query.limit)}"
        with self._reading() as conn:
            return [self._readable(loaded) for loaded in self._load_batch(conn, list(conn.execute(sql, args).fetchall()))]

    def iterate(self, query: Query) -> Iterator[DecisionRecord | UnreadableRecord]:
        """Records matching ``query`` (limit ignored), oldest first, streamed."""
        where, args = where_clause(query, self.PLACEHOLDER, self.CONTAINS)
        yield from self._stream(f"{self.ROW} {where} ORDER BY seq", args)

    def documents(self, query: Query) -> Iterator[dict[str, Any]]:
        """Stored documents matching ``query`` (limit ignored), oldest first, streamed.

        Raises:
            DecisionLogError: a stored record cannot be read (named).
        """
        where, args = where_clause(query, self.PLACEHOLDER, self.CONTAINS)
        with self._rows(f"{self.ROW} {where} ORDER BY seq", args) as (conn, rows):
            for row in rows:
                yield self._document(conn, row)
