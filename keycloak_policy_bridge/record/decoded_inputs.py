"""Recorded inputs as engine objects, decoded once per log reader and shared by the records that reference them.

A log stores each input document once (``record.inputs``), and a run reads the same few again
and again: every login of a subject references the same identity under one export, every request
of a client the same feed rows. ``DecodedInputs`` keeps the objects ``record.codec.from_document``
builds from them: each identity and feed row by ref, a record's identities and feeds by their
references, the snapshot reference and its timestamp by their text, and a decision's explanation
(reasons, provenance, principals: the same for every record of the same outcome) by its JSON and
the identities it points into. Records read through one
``DecodedInputs`` share these objects, which is what lets ``reevaluate.Inputs`` find the snapshot
and feeds it rebuilt for an earlier record by object identity rather than by hashing contents.

One ``DecodedInputs`` serves one log: a ref names content within a log (the SHA-256 of the
document it stores), but in a modified log the same ref could hold another document. Every
object handed out is immutable or shared read-only (a record's feeds mapping, a ``FeedInput``'s
rows): callers never modify them. Each map is bounded (cleared when full). Safe to share between
threads: a race decodes the same object twice, harmlessly.

Errors are the decoders' own (``KeyError``, ``TypeError``, ``ValueError``...) and whatever
``input_of`` raises; ``from_document`` words them. A document too malformed to build a cache key
from is decoded without the cache, so that it fails exactly as it would without one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson

from keycloak_policy_bridge.context_feed import FeedRow
from keycloak_policy_bridge.decision import ClaimValue, Decision, PrincipalInfo, Reason
from keycloak_policy_bridge.entitlements import Identity
from keycloak_policy_bridge.record.inputs import feed_row_from_document, identity_from_document
from keycloak_policy_bridge.record.model import FeedInput, SnapshotRef
from keycloak_policy_bridge.timeutil import parse_rfc3339

InputOf = Callable[[str], Mapping[str, Any]]
Feeds = tuple[dict[str, FeedInput], tuple[tuple[str, str], ...]]
LIMIT = 4_096  # entries per map: the distinct inputs of a run's working set, not of the whole log
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(frozen=True)
class Explanation:
    """A decision's reasons, provenance and principals as decoded, for the records that share them."""

    reasons: tuple[Reason, ...]
    provenance: Mapping[str, tuple[ClaimValue, ...]]
    principals: tuple[PrincipalInfo, ...]


class DecodedInputs:
    """Decoded recorded inputs, shared between records (see the module docstring)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._identity: dict[str, Identity] = {}
        self._identities: dict[tuple[Any, ...], tuple[Identity, ...]] = {}
        self._row: dict[str, FeedRow] = {}
        self._feeds: dict[Hashable, Feeds] = {}
        self._snapshots: dict[tuple[Any, ...], SnapshotRef] = {}
        self._instants: dict[str, datetime] = {}
        self._explanations: dict[tuple[int, bytes], tuple[tuple[Identity, ...], tuple[Any, ...], Explanation]] = {}

    def identities(self, refs: Any, input_of: InputOf) -> tuple[Identity, ...]:
        """The identities a record's ``identities`` references name, in order."""
        key = tuple(refs)
        try:
            found = self._identities.get(key)
        except TypeError:  # an unhashable reference: let the lookup fail as it would uncached
            return tuple(identity_from_document(input_of(ref)) for ref in key)
        if found is None:
            found = tuple(self._identity_of(ref, input_of) for ref in key)
            self._put(self._identities, key, found)
        return found

    def feeds(self, entries: Any, input_of: InputOf) -> Feeds:
        """(the ``FeedInput`` of each feed a record's ``feeds`` describes, the (feed, subject id)
        pairs it read, in document order; ``from_document`` sorts them)."""
        try:
            # The rows' JSON text stands for their refs: only feeds whose every ref resolved (all
            # strings, then) are cached, so no two different rows documents share a text here.
            key = tuple((name, e["snapshot_id"], e["digest"], e["generated_at"], orjson.dumps(e["rows"])) for name, e in entries.items())
            found = self._feeds.get(key)
        except (KeyError, TypeError, AttributeError):  # malformed: decode uncached, to fail as it always did
            return self._decode_feeds(entries, input_of, cached=False)
        if found is None:
            found = self._decode_feeds(entries, input_of, cached=True)
            self._put(self._feeds, key, found)
        return found

    def snapshot(self, snap: Mapping[str, Any], generated_at: datetime) -> SnapshotRef:
        """The ``SnapshotRef`` of a record's ``snapshot`` (``generated_at`` already parsed)."""
        key = (snap["id"], snap["digest"], snap["generated_at"], snap["source_system"])
        try:
            found = self._snapshots.get(key)
        except TypeError:
            return SnapshotRef(key[0], key[1], generated_at, key[3])
        if found is None:
            found = SnapshotRef(key[0], key[1], generated_at, key[3])
            self._put(self._snapshots, key, found)
        return found

    def instant(self, text: Any) -> datetime:
        """``timeutil.parse_rfc3339(text)``, remembered for the timestamps records repeat."""
        if type(text) is not str:
            return parse_rfc3339(text)
        found = self._instants.get(text)
        if found is None:
            found = parse_rfc3339(text)
            self._put(self._instants, text, found)
        return found

    def explanation(self, result: Any, identities: tuple[Identity, ...]) -> tuple[tuple[int, bytes] | None, Explanation | None]:
        """(the key of a record's explanation, the one decoded for an earlier record whose result
        has the same ``reasons``, ``provenance`` and ``principals`` over the same identities, or
        None). Never raises: what it cannot key (key None) is decoded as usual, and reported there."""
        try:
            parts = (result["reasons"], result["provenance"], result["principals"])
            key = (id(identities), orjson.dumps(parts))
            hit = self._explanations.get(key)
            # The JSON text keys, equality decides: NaN and null have the same text, and only the
            # identities object the cached one was decoded against will do (the key holds its id).
            if hit is not None and hit[0] is identities and hit[1] == parts:
                return key, hit[2]
        except (KeyError, TypeError, IndexError, ValueError, RecursionError):
            return None, None
        return key, None

    def remember_explanation(
        self, key: tuple[int, bytes], result: Mapping[str, Any], identities: tuple[Identity, ...], decision: Decision
    ) -> None:
        """Keep ``decision``'s explanation, decoded from ``result`` over ``identities``, under ``key``."""
        parts = (result["reasons"], result["provenance"], result["principals"])
        explanation = Explanation(decision.reasons, dict(decision.provenance), decision.principals)
        self._put(self._explanations, key, (identities, parts, explanation))

    def _decode_feeds(self, entries: Any, input_of: InputOf, cached: bool) -> Feeds:
        def row_of(ref: str) -> FeedRow:
            return self._row_of(ref, input_of) if cached else feed_row_from_document(input_of(ref))

        feeds: dict[str, FeedInput] = {}
        reads: list[tuple[str, str]] = []
        for name, entry in entries.items():
            rows = {subject_id: tuple(row_of(ref) for ref in refs) for subject_id, refs in entry["rows"].items()}
            reads.extend((name, subject_id) for subject_id in entry["rows"])
            generated_at = self.instant(entry["generated_at"]) if cached else parse_rfc3339(entry["generated_at"])
            feeds[name] = FeedInput(name, entry["snapshot_id"], entry["digest"], generated_at, rows)
        return feeds, tuple(reads)

    def _identity_of(self, ref: str, input_of: InputOf) -> Identity:
        found = self._identity.get(ref)
        if found is None:
            found = identity_from_document(input_of(ref))
            self._put(self._identity, ref, found)
        return found

    def _row_of(self, ref: str, input_of: InputOf) -> FeedRow:
        found = self._row.get(ref)
        if found is None:
            found = feed_row_from_document(input_of(ref))
            self._put(self._row, ref, found)
        return found

    def _put(self, cache: dict[_K, _V], key: _K, value: _V) -> None:
        if len(cache) >= self._limit:
            cache.clear()
        cache[key] = value
