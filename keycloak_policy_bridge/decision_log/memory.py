"""In-process implementations of the storage interfaces, for unit tests.

``InMemoryDecisionLog`` and ``InMemoryPolicyStore`` keep the contracts of the SQLite classes
(``interfaces``): records are stored as the bytes a log stores (``record.encode``, inputs once
each by ref) and read back through ``record.load_record``, so a test sees exactly what a real
log would give back; a duplicate decision id or a replayed nonce is refused; appends return the
chain hash; activations are sealed and checked with the same functions. Nothing is durable and
nothing is shared between processes; there is no ``verify``, checkpoint or prune.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.decision_log.activations import Activation, ActivationKeys, activation_hash, activation_problem
from keycloak_policy_bridge.decision_log.chain import GENESIS, RecordColumns, chain_link, rule_token, sortable
from keycloak_policy_bridge.decision_log.interfaces import Nonce, Query, UnreadableRecord
from keycloak_policy_bridge.errors import AuthenticationError, DecisionLogError, DecisionNotFoundError
from keycloak_policy_bridge.record import DecisionRecord, RecordFormatError, decode, encode, load_record, to_document
from keycloak_policy_bridge.record.codec import input_refs
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

REPLAYED_SIGNATURE = "replayed_signature"


@dataclass(frozen=True)
class _Row:
    seq: int
    columns: RecordColumns
    body: bytes
    hash: str


@dataclass
class InMemoryDecisionLog:
    """A decision log in a list. Thread-safe. ``close`` makes later appends fail, as a closed
    SQLite log's do."""

    default_token_ttl: timedelta = timedelta(hours=1)
    _rows: list[_Row] = field(default_factory=list, repr=False)
    _by_id: dict[str, _Row] = field(default_factory=dict, repr=False)
    _inputs: dict[str, bytes] = field(default_factory=dict, repr=False)
    _nonces: dict[bytes, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = False

    def close(self) -> None:
        self._closed = True

    def writable(self) -> bool:
        return self.unavailable_reason() is None

    def unavailable_reason(self) -> str | None:
        return "it is closed" if self._closed else None

    def append(self, record: DecisionRecord, nonce: Nonce | None = None) -> str:
        """As ``SQLiteDecisionLog.append``."""
        try:
            document, inputs = to_document(record)
            body, columns = encode(document), RecordColumns.of(record, self.default_token_ttl)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DecisionLogError(f"decision record is malformed ({type(exc).__name__}); the decision was not recorded") from None
        with self._lock:
            if self._closed:
                raise DecisionLogError("decision log write failed (the log is closed); the decision was not recorded")
            if columns.decision_id in self._by_id:
                raise DecisionLogError("decision log write failed (duplicate decision id); the decision was not recorded")
            if nonce is not None:
                self._nonces = {key: expires for key, expires in self._nonces.items() if expires >= nonce.now}
                if nonce.key in self._nonces:
                    raise AuthenticationError("signed request was already used", reason=REPLAYED_SIGNATURE)
                self._nonces[nonce.key] = nonce.expires_at
            for ref, input_document in inputs.items():
                if ref not in self._inputs:
                    self._inputs[ref] = encode(input_document)
            prev = self._rows[-1].hash if self._rows else GENESIS
            row = _Row(len(self._rows) + 1, columns, body, chain_link(prev, columns.values(), body))
            self._rows.append(row)
            self._by_id[columns.decision_id] = row
        return row.hash

    # -- reading ----------------------------------------------------------------------------

    def _input(self, ref: str) -> Mapping[str, Any]:
        return decode(self._inputs[ref])  # KeyError when missing: the record package names the ref

    def _load(self, row: _Row) -> DecisionRecord | UnreadableRecord:
        try:
            return load_record(decode(row.body), self._input)
        except RecordFormatError as exc:
            c = row.columns
            return UnreadableRecord(c.decision_id, format_rfc3339(parse_rfc3339(c.evaluated_at)), c.subject_id, c.client_id, str(exc))

    def _readable(self, row: _Row) -> DecisionRecord:
        loaded = self._load(row)
        if isinstance(loaded, UnreadableRecord):
            raise DecisionLogError(loaded.describe())
        return loaded

    def _row(self, decision_id: str) -> _Row:
        row = self._by_id.get(decision_id)
        if row is None:
            raise DecisionNotFoundError("no such decision")
        return row

    def get(self, decision_id: str) -> DecisionRecord:
        return self._readable(self._row(decision_id))

    def document(self, decision_id: str) -> dict[str, Any]:
        return self._document(self._row(decision_id))

    def _document(self, row: _Row) -> dict[str, Any]:
        document = decode(row.body)
        refs = input_refs(document)
        if refs:
            try:
                document["inputs"] = {ref: self._input(ref) for ref in refs}
            except KeyError as exc:
                raise DecisionLogError(f"decision {row.columns.decision_id}: recorded input {exc.args[0]} is missing") from None
        return document

    def _matching(self, query: Query) -> list[_Row]:
        with self._lock:
            rows = list(self._rows)
        return [row for row in rows if _matches(row.columns, query)]

    def query(self, query: Query) -> list[DecisionRecord]:
        rows = self._matching(query)[::-1]
        return [self._readable(row) for row in (rows[: query.limit] if query.limit is not None else rows)]

    def iterate(self, query: Query) -> Iterator[DecisionRecord | UnreadableRecord]:
        for row in self._matching(query):
            yield self._load(row)

    def documents(self, query: Query) -> Iterator[dict[str, Any]]:
        for row in self._matching(query):
            yield self._document(row)

    def live(self, now: datetime) -> Iterator[DecisionRecord | UnreadableRecord]:
        at = sortable(now)
        for row in self._matching(Query(limit=None)):
            c = row.columns
            if c.effect == "permit" and c.evaluated_at <= at and c.token_expires_at > at:
                yield self._load(row)

    def count(self) -> int:
        return len(self._rows)


def _matches(c: RecordColumns, query: Query) -> bool:
    """``Query`` over the columns, as the SQLite log's WHERE clause reads it."""
    return (
        (not query.subject or query.subject in (c.subject_id, c.keycloak_user_id))
        and (not query.client or c.client_id == query.client)
        and (not query.effect or c.effect == query.effect)
        and (not query.rule or rule_token(query.rule) in c.rules)
        and (not query.since or c.evaluated_at >= sortable(query.since))
        and (not query.until or c.evaluated_at < sortable(query.until))
    )


@dataclass
class InMemoryPolicyStore:
    """A policy store in dictionaries. Thread-safe. Activations are sealed (with
    ``activation_keys``) and checked exactly as the SQLite store's."""

    activation_keys: ActivationKeys | None = field(default=None, repr=False)
    log_id: str = "in-memory"
    _policies: dict[str, bytes] = field(default_factory=dict, repr=False)
    _activations: list[Activation] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def store_policy(self, document: Mapping[str, Any]) -> str:
        policy_digest = digest(document)
        with self._lock:
            self._policies.setdefault(policy_digest, canonical_json(document))
        return policy_digest

    def policy(self, policy_digest: str) -> dict[str, Any]:
        stored = self._policies.get(policy_digest)
        if stored is None:
            raise DecisionNotFoundError(f"policy {policy_digest[:19]} is not stored")
        document: dict[str, Any] = json.loads(stored)
        return document

    def record_activation(self, policy_digest: str, version: str, by: str, at: datetime) -> Activation:
        if self.activation_keys is None:
            raise DecisionLogError("cannot record a policy activation without an activation key")
        with self._lock:
            seq = len(self._activations) + 1
            prev = (self._activations[-1].hash or GENESIS) if self._activations else GENESIS
            at_text = sortable(at)
            h = activation_hash(prev, seq, policy_digest, version, by, at_text)
            key_id, mac = self.activation_keys.seal(self.log_id, h)
            activation = Activation(seq, policy_digest, version, by, at_text, prev, h, key_id, mac)
            self._activations.append(activation)
        return activation

    def activations(self, limit: int = 20) -> list[Activation]:
        with self._lock:
            return self._activations[::-1][:limit]

    def latest_activation(self) -> Activation | None:
        with self._lock:
            return self._activations[-1] if self._activations else None

    def activation_problem(self, activation: Activation) -> str | None:
        return activation_problem(activation, self.activation_keys, self.log_id)
