"""Re-evaluating recorded decisions: the one toolkit replay, drift and explain share.

A recorded decision is re-run by evaluating its recorded request again, under a policy (the
recorded one, looked up by digest, or another), with inputs, at an instant the caller chooses
(replay: the record's own ``evaluated_at``; drift and explain: now):

* ``Inputs``: the entitlements and feeds to evaluate against, each either the record's own
  recorded inputs (``RECORDED``: the identities and feed rows its evaluation read, rebuilt per
  record and cached, since many records share them: by object when records share their decoded
  inputs, as a log reader's do (``record.DecodedInputs``), else by content) or given ones (a
  snapshot, feeds by name). Masked subject join keys are undone only through
  ``record.masking.JoinKeyClearer``: against recorded inputs nothing is undone (request and
  identities hold the same keyed hash); against a given snapshot the masking key turns each hash
  back into the clear value that hashes to it, and without the key a subject joined by a masked
  key is ``UnresolvableRecordError``.
* ``PolicyCache``: recorded policies by digest from a ``PolicyStore``, each looked up and compiled
  once per run, a failure remembered as its message.
* ``reevaluate``: one record, one policy, ``Inputs``, an instant: a ``decision.Decision``.
* ``describe_error``: the one-line message of a record that could not be re-evaluated.

Claim values are compared with ``decision.claim_changes``/``value_key``, so that replay's diff,
drift's "no longer justified" and explain's "still granted" agree. Nothing here reads the clock.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from datetime import datetime
from typing import Literal, TypeVar

from keycloak_policy_bridge.context_feed import ContextFeed
from keycloak_policy_bridge.decision import Decision
from keycloak_policy_bridge.decision_log import PolicyStore
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import BridgeError, DecisionLogError, DecisionNotFoundError, PolicyError
from keycloak_policy_bridge.policy import Policy, compile_policy
from keycloak_policy_bridge.record import DecisionRecord, FeedInput, JoinKeyClearer, Masker, recorded_feeds, recorded_snapshot
from keycloak_policy_bridge.request import ClaimsRequest, parse_request

RECORDED: Literal["recorded"] = "recorded"
Entitlements = Literal["recorded"] | Snapshot
Feeds = Literal["recorded"] | Mapping[str, ContextFeed]
# Rebuilt recorded inputs kept per run: identities repeat within a run, not forever.
_CACHE_LIMIT = 4096
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class Inputs:
    """The entitlements and feeds records are re-evaluated with (see the module docstring).

    Args:
        entitlements: ``RECORDED`` (each record's recorded identities) or a snapshot.
        feeds: ``RECORDED`` (each record's recorded feed rows) or feeds by name.
        masker: carries the key records were masked with (its paths are not used: each record
            lists what it masked). Needed only for a subject joined by a masked key, against a
            given snapshot.

    One per run: it caches rebuilt recorded inputs (bounded) and the keyed-hash index of the
    given snapshot's join keys (built on first need).
    """

    def __init__(self, entitlements: Entitlements = RECORDED, feeds: Feeds = RECORDED, *, masker: Masker | None = None) -> None:
        self.entitlements = entitlements
        self.feeds = feeds
        self.masker = masker
        self._clearer = JoinKeyClearer(entitlements, masker) if not isinstance(entitlements, str) else None
        self._snapshots: dict[Hashable, Snapshot] = {}
        self._feeds: dict[Hashable, dict[str, ContextFeed]] = {}
        # The same, by the objects' ids, holding the objects so that an id is not reused meanwhile.
        self._snapshots_by_id: dict[tuple[int, int], tuple[object, object, Snapshot]] = {}
        self._feeds_by_id: dict[int, tuple[object, dict[str, ContextFeed]]] = {}

    def describe_entitlements(self) -> str:
        """``recorded``, or the given snapshot as ``id (digest)``."""
        e = self.entitlements
        return RECORDED if isinstance(e, str) else f"{e.snapshot_id} ({e.digest})"

    def describe_feeds(self) -> str:
        """``recorded``, the given feeds as ``name (digest), ...``, or ``none``."""
        f = self.feeds
        return RECORDED if isinstance(f, str) else ", ".join(f"{n} ({feed.digest})" for n, feed in sorted(f.items())) or "none"

    def request(self, record: DecisionRecord) -> ClaimsRequest:
        """The record's request to evaluate: as recorded, masked join keys cleared against a given
        snapshot. Read back without validation: it was validated when received, and masking may
        have lengthened fields past the schema's limits.

        Raises:
            UnresolvableRecordError: the subject was joined by a masked key that cannot be matched
                (no masking key, or a different one).
            KeyError, TypeError, AttributeError: the recorded request is malformed.
        """
        document = self._clearer.request(record) if self._clearer is not None else record.request
        return parse_request(document, validate=False)

    def snapshot(self, record: DecisionRecord) -> Snapshot:
        if not isinstance(self.entitlements, str):
            return self.entitlements
        ref, identities = record.snapshot, record.identities
        hit = self._snapshots_by_id.get((id(ref), id(identities)))
        if hit is not None and hit[0] is ref and hit[1] is identities:
            return hit[2]
        key = (ref, identities)
        found = self._snapshots.get(key)
        if found is None:
            found = recorded_snapshot(record)
            _bounded(self._snapshots)[key] = found
        _bounded(self._snapshots_by_id)[(id(ref), id(identities))] = (ref, identities, found)
        return found

    def context_feeds(self, record: DecisionRecord) -> Mapping[str, ContextFeed]:
        if not isinstance(self.feeds, str):
            return self.feeds
        recorded = record.feeds
        hit = self._feeds_by_id.get(id(recorded))
        if hit is not None and hit[0] is recorded:
            return hit[1]
        key = _feeds_key(recorded)
        found = self._feeds.get(key) if key is not None else None
        if found is None:
            found = recorded_feeds(record)
            if key is not None:
                _bounded(self._feeds)[key] = found
        _bounded(self._feeds_by_id)[id(recorded)] = (recorded, found)
        return found

    def check_joined(self, record: DecisionRecord, decision: Decision) -> None:
        """After evaluating against a given snapshot without the masking key: a subject that no
        longer joins by its clear keys might have joined by a masked one, so the outcome is
        unknown rather than a change (``JoinKeyClearer.check_joined``).

        Raises:
            UnresolvableRecordError: as described.
        """
        if self._clearer is not None:
            principals = decision.principals
            joined = principals[0].subject_id if principals and principals[0].role == "subject" else None
            self._clearer.check_joined(record, joined)


def reevaluate(record: DecisionRecord, policy: Policy, inputs: Inputs, now: datetime) -> Decision:
    """The decision ``policy`` makes for the record's request with ``inputs`` at ``now``.

    Raises:
        UnresolvableRecordError: the subject was joined by a masked key that cannot be matched
            (``Inputs.request``, ``Inputs.check_joined``).
        KeyError, TypeError, ValueError, AttributeError: bad recorded data (``describe_error``
            words them).
    """
    decision = evaluate(policy, inputs.snapshot(record), inputs.request(record), now, inputs.context_feeds(record))
    inputs.check_joined(record, decision)
    return decision


class PolicyCache:
    """Recorded policies by digest, each looked up in ``policies`` and compiled once; a failure is
    remembered as its message, so a thousand records of a missing policy cost one lookup.

    Args:
        policies: where recorded policies are stored.
        known: compiled policies to use without a lookup (e.g. the active one).
    """

    def __init__(self, policies: PolicyStore, known: tuple[Policy, ...] = ()) -> None:
        self.policies = policies
        self._compiled: dict[str, Policy | BridgeError] = {p.digest: p for p in known}

    def get(self, policy_digest: str) -> Policy:
        """The compiled policy stored under ``policy_digest``.

        Raises:
            DecisionNotFoundError: no policy is stored under that digest.
            DecisionLogError: the stored document no longer hashes to its digest (it was
                modified: the policies table is outside the hash chain), does not compile, or
                cannot be read.
        """
        found = self._compiled.get(policy_digest)
        if found is None:
            found = self._load(policy_digest)
            self._compiled[policy_digest] = found
        if isinstance(found, BridgeError):
            raise found
        return found

    def _load(self, policy_digest: str) -> Policy | BridgeError:
        # The messages name the digest in full: it is the key an operator looks up.
        try:
            compiled = compile_policy(self.policies.policy(policy_digest))
        except DecisionNotFoundError:
            return DecisionNotFoundError(f"the recorded policy {policy_digest} is not stored in the log")
        except PolicyError as exc:
            return DecisionLogError(f"the recorded policy {policy_digest} does not compile ({exc.message})")
        except BridgeError as exc:
            return DecisionLogError(f"the recorded policy {policy_digest} cannot be read ({exc.message})")
        if compiled.digest != policy_digest:
            # A rewritten document must not pass for the one the decisions were made with.
            return DecisionLogError(f"the stored policy {policy_digest} does not match its digest (the document was modified)")
        return compiled


def describe_error(exc: BaseException) -> str:
    """What went wrong re-evaluating a record, in one line (never the record's values for a
    bridge error, whose messages are written not to quote them)."""
    if isinstance(exc, BridgeError):
        return exc.message
    if isinstance(exc, KeyError):
        return f"the record lacks {exc.args[0]!r} (bad recorded data)"
    if isinstance(exc, (TypeError, AttributeError, IndexError)):
        return f"the record is malformed ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


def _bounded(cache: dict[_K, _V]) -> dict[_K, _V]:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    return cache


def _feeds_key(feeds: Mapping[str, FeedInput]) -> Hashable | None:
    """A content key of a record's recorded feeds; None when a row holds an unhashable value
    (then the feeds are rebuilt for that record, uncached)."""
    key = tuple(
        (
            name,
            feed.snapshot_id,
            feed.digest,
            feed.generated_at,
            tuple(
                (subject_id, tuple((tuple(sorted(r.values.items())), r.start_at, r.end_at, r.file, r.line) for r in rows))
                for subject_id, rows in sorted(feed.rows.items())
            ),
        )
        for name, feed in sorted(feeds.items())
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key
