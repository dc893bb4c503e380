"""Masking: request paths stored as keyed hashes, and the one way masked join keys are undone.

An operator lists request paths (``context.ip``, ``subject.email``...) to keep out of the log:
the recorder stores each as ``hmac-sha256:<hex>`` (HMAC-SHA256 with the operator's masking key),
so equality stays checkable and the value does not leave the bridge; ``masked`` lists what was
masked. A masked *join key* (``join_keys.JOIN_KEYS``) is masked in the recorded identities too,
lower-cased first where the join compares lower-cased, so recorded inputs still join.

Undoing (``clear_join_keys``), used alike by replay, drift and explain:

* against the record's own inputs nothing is undone: request and identities hold the same hash;
* against another snapshot *with the masking key*, a hashed key is replaced by the snapshot's
  clear value that hashes to it, so the join behaves as it would have with the clear value; a
  hash no value matches stays and matches nothing, as its clear value would not have;
* against another snapshot *without the key*, the record is ``UnresolvableRecordError``: which
  identity the subject would join now is unknown, and guessing would report an artefact of the
  masking as a fact. Masked paths CEL reads (``context.ip``) stay hashed either way.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keycloak_policy_bridge.entitlements import Identity, Snapshot
from keycloak_policy_bridge.errors import UnresolvableRecordError
from keycloak_policy_bridge.join_keys import BY_PATH, JOIN_KEYS, folded_path
from keycloak_policy_bridge.record.model import DecisionRecord

MASK_PREFIX = "hmac-sha256:"


@dataclass(frozen=True)
class Masker:
    """Replaces configured request paths with keyed hashes.

    Args:
        paths: dotted request paths, e.g. ``("context.ip", "subject.email")``.
        key: the HMAC key (an operator secret; never stored in a record).
    """

    paths: tuple[str, ...]
    key: bytes = field(repr=False)
    _masked: dict[tuple[int, tuple[str, ...]], tuple[weakref.ref[Identity], Identity]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # A path listed twice would be hashed twice in the request and once in the identities,
        # which then no longer join: each path counts once, in the order first given.
        object.__setattr__(self, "paths", tuple(dict.fromkeys(self.paths)))

    def hash(self, value: Any) -> str:
        text = value if isinstance(value, str) else repr(value)
        return MASK_PREFIX + hmac.new(self.key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def apply(self, document: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A masked deep copy of ``document`` and the paths that were present and masked.

        A configured path that the document lacks is not listed: the list says what *was*
        hidden, so a mask that matches nothing is visible as such.
        """
        out = copy.deepcopy(dict(document))
        masked = []
        for path in self.paths:
            parts = path.split(".")
            node: Any = out
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and parts[-1] in node and node[parts[-1]] is not None:
                value = node[parts[-1]]
                if isinstance(value, list):
                    node[parts[-1]] = [self.hash(v) for v in value]
                else:
                    node[parts[-1]] = self.hash(value.lower() if folded_path(path) and isinstance(value, str) else value)
                masked.append(path)
        return out, tuple(masked)

    def mask_identity(self, identity: Identity, masked: tuple[str, ...]) -> Identity:
        """``identity`` with the join keys of ``masked`` request paths hashed as the request's are.

        The same masked object is returned for the same identity and paths while both live, so
        that a subject's recorded identity is built (and its input document hashed) once."""
        key = (id(identity), masked)
        hit = self._masked.get(key)
        if hit is not None and hit[0]() is identity:
            return hit[1]
        result = self._mask_identity(identity, masked)
        if len(self._masked) >= 16384:
            self._masked.clear()
        self._masked[key] = (weakref.ref(identity), result)
        return result

    def _mask_identity(self, identity: Identity, masked: tuple[str, ...]) -> Identity:
        changes: dict[str, Any] = {}
        for path in masked:
            key = BY_PATH.get(path)
            value = getattr(identity, key.field) if key is not None else None
            if key is not None and value:
                changes[key.field] = self.hash(key.normalize(value))
        return replace(identity, **changes) if changes else identity


class JoinKeyClearer:
    """Undoes masked join keys of records against one snapshot (the module docstring's rule).

    The keyed-hash index of the snapshot's join keys is built once, on first need.
    """

    def __init__(self, snapshot: Snapshot, masker: Masker | None) -> None:
        self.snapshot = snapshot
        self.masker = masker
        self._index: dict[str, dict[str, str]] | None = None

    def request(self, record: DecisionRecord) -> Mapping[str, Any]:
        """The record's request document with masked subject join keys cleared.

        Raises:
            UnresolvableRecordError: the subject was joined by a masked key and there is no
                masking key, or the key is not the one the record was masked with.
        """
        masked = record.masked_join_keys()
        if not masked:
            return record.request
        subject_id, joined_by = record.joined_subject()
        if self.masker is None:
            if joined_by in masked:
                raise UnresolvableRecordError(
                    f"the subject was joined by the masked {joined_by.path}; "
                    "re-evaluating it against another snapshot needs the masking key"
                )
            return record.request  # the clear keys decide; ``check_joined`` looks at the outcome
        if joined_by in masked and subject_id is not None:
            # The recorded identity carries the same keyed hash as the request; the snapshot must
            # yield that hash for the subject, or the key is not the one the record was masked with.
            identity = self.snapshot.identity(subject_id)
            value = getattr(identity, joined_by.field, None) if identity is not None else None
            subject = record.request.get("subject") or {}
            if value and self.masker.hash(joined_by.normalize(value)) != subject.get(joined_by.request_field):
                raise UnresolvableRecordError(f"the masking key is not the one {joined_by.path} was masked with")
        index = self._clear_index()
        subject = dict(record.request["subject"])
        for key in masked:
            hashed = subject.get(key.request_field)
            clear = index[key.field].get(hashed) if isinstance(hashed, str) else None
            if clear is not None:
                subject[key.request_field] = clear
        return {**record.request, "subject": subject}

    def check_joined(self, record: DecisionRecord, joined_subject_id: str | None) -> None:
        """After re-evaluating without the masking key: a subject that no longer joins by its clear
        keys might have joined by a masked one, so the outcome is unknown rather than a change.

        Raises:
            UnresolvableRecordError: as described.
        """
        masked = record.masked_join_keys()
        if masked and self.masker is None and joined_subject_id is None:
            raise UnresolvableRecordError(
                f"the subject does not join the snapshot by its clear keys, and its masked {', '.join(sorted(k.path for k in masked))} "
                "cannot be matched without the masking key"
            )

    def _clear_index(self) -> dict[str, dict[str, str]]:
        if self._index is None:
            assert self.masker is not None
            index: dict[str, dict[str, str]] = {k.field: {} for k in JOIN_KEYS}
            for identity in self.snapshot.identities.values():
                for key in JOIN_KEYS:
                    value = getattr(identity, key.field)
                    if value:
                        index[key.field][self.masker.hash(key.normalize(value))] = value
            self._index = index
        return self._index
