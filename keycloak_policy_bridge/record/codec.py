"""``kpb-decision/2``: the record's JSON document and the bytes a log stores.

The document (schema: ``schemas/decision-record.v2.schema.json``; field by field in
docs/decision-log.md section 2) holds the decision once: no field repeats another, and recorded
inputs are references (``record.inputs``): ``identities`` lists the SHA-256 of each identity
document the evaluation read, each feed's ``rows`` the SHA-256 of each row document, and an
entitlement record behind a claim value is ``[i, j]``: record ``j`` of identity ``i``. The log
stores the referenced documents once each, next to the records (``to_document`` returns them).

Stored bytes (``encode``/``decode``): ``b"\\x02"`` followed by the canonical JSON of the
document, raw-deflated (zlib, level 6, window 2^15) with the preset dictionary
``deflate-dictionary.v2.json`` (fixed for this format: a change needs a new leading byte). The
chain hash covers these bytes as stored; nothing re-compresses a stored record. A ``/1`` body is
plain canonical JSON and starts with ``{``.
"""

from __future__ import annotations

import hashlib
import json
import json.scanner
import weakref
import zlib
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any

import orjson

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.context_feed import FeedRow
from keycloak_policy_bridge.decision import ClaimValue, Decision, PrincipalInfo, Reason, ValueSource
from keycloak_policy_bridge.entitlements import Identity
from keycloak_policy_bridge.record.decoded_inputs import DecodedInputs
from keycloak_policy_bridge.record.inputs import (
    entitlement_document,
    feed_row_document,
    identity_document,
    identity_from_document,
    input_ref,
)
from keycloak_policy_bridge.record.model import RECORD_SCHEMA, DecisionRecord
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

V2 = b"\x02"
# The preset dictionary: two generic record documents (a service account's client-credentials
# grant, a person's login with masked paths), so that a record's recurring structure costs almost
# nothing. Part of the stored format, pinned by its SHA-256: a different dictionary would inflate
# old bodies to garbage, so a change needs a new leading byte.
_DICTIONARY_FILE = "deflate-dictionary.v2.json"
_DICTIONARY_SHA256 = "9be3401950e39d7399dcc637d08bbb68b9bfc745a2031370078c0d551fbed713"
_DICTIONARY = (resources.files("keycloak_policy_bridge.record") / _DICTIONARY_FILE).read_bytes()
if hashlib.sha256(_DICTIONARY).hexdigest() != _DICTIONARY_SHA256:
    raise ImportError(f"keycloak_policy_bridge/record/{_DICTIONARY_FILE} was modified; stored decision records need the original")
_LEVEL = 6


class RecordFormatError(ValueError):
    """A stored record or input document that cannot be read (the message names what)."""


def encode(document: Mapping[str, Any]) -> bytes:
    """The stored bytes of a ``/2`` document (see the module docstring)."""
    deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15, zdict=_DICTIONARY)
    return V2 + deflate.compress(canonical_json(document)) + deflate.flush()


def decode(blob: bytes) -> dict[str, Any]:
    """The JSON document of stored bytes, ``/2`` (deflated) or ``/1`` (plain JSON).

    Raises:
        RecordFormatError: neither, or damaged.
    """
    try:
        if blob[:1] == V2:
            inflate = zlib.decompressobj(-15, zdict=_DICTIONARY)
            text = inflate.decompress(memoryview(blob)[1:]) + inflate.flush()
            if not inflate.eof or inflate.unused_data:  # cut short, or bytes after the stream
                raise RecordFormatError("the stored record cannot be read (damaged)")
        elif blob[:1] == b"{":
            text = blob
        else:
            raise RecordFormatError("not a decision record (unknown leading byte)")
        document = _loads(text)
    except (zlib.error, ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to parse
        if isinstance(exc, RecordFormatError):
            raise
        raise RecordFormatError(f"the stored record cannot be read ({type(exc).__name__})") from None
    if not isinstance(document, dict):
        raise RecordFormatError("the stored record is not a JSON object")
    return document


# orjson parses a stored document in a third of json's time (7 vs 22 us on the acme mix) and to
# the same values, with two exceptions that fall back to json here: text orjson refuses but json
# reads (NaN, Infinity, a lone surrogate, a byte-order mark...: json decides, as it always did),
# and integers beyond 64 bits, which orjson would turn into floats. Those have 19 digits or more;
# a run of 19 digits anywhere (in a hex digest, say) sends the text to json, merely slower.
_DIGIT_TO_NUL = bytes.maketrans(b"0123456789", b"\0" * 10)  # compact JSON holds no raw NUL byte
_LONG_NUMBER = b"\0" * 19


def _loads(text: bytes) -> Any:
    if _LONG_NUMBER not in text.translate(_DIGIT_TO_NUL):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def input_refs(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The input refs a document references (identities, then feed rows), each once; none for ``/1``.

    Raises:
        RecordFormatError: a ``/2`` document whose references are malformed.
    """
    if document.get("schema") != RECORD_SCHEMA:
        return ()
    try:
        return _refs(document["identities"], document["feeds"])
    except (KeyError, TypeError, AttributeError):
        raise RecordFormatError("the record's input references are malformed") from None


def stored_input_refs(blob: bytes) -> tuple[str, ...]:
    """``input_refs`` of stored bytes, for ``verify``: without parsing the whole document.

    A stored ``/2`` document is canonical JSON, so its top-level fields can be read one by one;
    the scan stops once ``feeds`` and ``identities`` are read (the request and the result, most
    of the text, are skipped). Anything unexpected falls back to ``decode``.

    Raises:
        RecordFormatError: the bytes or the references cannot be read.
    """
    if blob[:1] != V2:
        return input_refs(decode(blob))
    try:
        inflate = zlib.decompressobj(-15, zdict=_DICTIONARY)
        text = (inflate.decompress(blob[1:]) + inflate.flush()).decode("utf-8")
        if not inflate.eof or inflate.unused_data:
            raise RecordFormatError("the stored record cannot be read (damaged)")
        fields = _top_level(text, {"schema", "feeds", "identities"})
    except (zlib.error, UnicodeDecodeError):
        raise RecordFormatError("the stored record cannot be read (damaged)") from None
    except (StopIteration, IndexError, ValueError, RecursionError):
        return input_refs(decode(blob))  # not canonical: read it whole
    if fields.get("schema", RECORD_SCHEMA) != RECORD_SCHEMA or not {"feeds", "identities"} <= fields.keys():
        return input_refs(decode(blob))
    try:
        return _refs(fields["identities"], fields["feeds"])
    except (KeyError, TypeError, AttributeError):
        raise RecordFormatError("the record's input references are malformed") from None


_SCAN = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: the context is any decoder


def _top_level(text: str, wanted: set[str]) -> dict[str, Any]:
    """The ``wanted`` fields of a compact JSON object, reading fields in order until ``feeds`` and
    ``identities`` are both read (``schema`` too when it comes first). Raises StopIteration,
    IndexError or ValueError on anything but compact JSON."""
    if text[:1] != "{":
        raise ValueError("not an object")
    found: dict[str, Any] = {}
    idx = 1
    while not {"feeds", "identities"} <= found.keys():
        if text[idx] != '"':
            raise ValueError("not compact JSON")
        key, idx = _SCAN(text, idx)
        if text[idx] != ":":
            raise ValueError("not compact JSON")
        value, idx = _SCAN(text, idx + 1)
        if key in wanted:
            if key in found:
                raise ValueError("duplicate field")
            found[key] = value
        if text[idx] == "}":
            break
        if text[idx] != ",":
            raise ValueError("not compact JSON")
        idx += 1
    return found


def _refs(identities: Any, feeds: Any) -> tuple[str, ...]:
    refs = dict.fromkeys(identities)
    for entry in feeds.values():
        for row_refs in entry["rows"].values():
            refs.update(dict.fromkeys(row_refs))
    if not all(isinstance(ref, str) for ref in refs):
        raise TypeError("a reference is not a string")
    return tuple(refs)


# -- to the document ------------------------------------------------------------------------------


def to_document(record: DecisionRecord) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the ``/2`` document, the input documents it references by ref).

    Raises:
        ValueError: ``record`` is a ``/1`` record (they are read, never written).
    """
    if record.schema != RECORD_SCHEMA:
        raise ValueError(f"only {RECORD_SCHEMA} records are written, not {record.schema}")
    d = record.decision
    inputs: dict[str, dict[str, Any]] = {}
    identity_refs: list[str] = []
    where: dict[str, int] = {}  # subject id -> index of its identity
    for i, identity in enumerate(record.identities):
        ref, identity_doc = _identity_input(identity)
        inputs[ref] = identity_doc
        identity_refs.append(ref)
        where.setdefault(identity.subject_id, i)
    feeds = {}
    for name, feed in sorted(record.feeds.items()):
        rows = {}
        for subject_id, items in sorted(feed.rows.items()):
            refs = []
            for row in items:
                ref, row_doc = _row_input(row)
                inputs[ref] = row_doc
                refs.append(ref)
            rows[subject_id] = refs
        reference = d.feeds.get(name, {})
        feeds[name] = {
            "snapshot_id": feed.snapshot_id,
            "digest": feed.digest,
            "generated_at": format_rfc3339(feed.generated_at),
            "age_seconds": reference.get("age_seconds"),
            "stale": reference.get("stale"),
            "rows": rows,
        }
    result: dict[str, Any] = {"claims": d.claims, "remove_claims": list(d.remove_claims)}
    if d.max_ttl_seconds is not None:
        result["max_ttl_seconds"] = d.max_ttl_seconds
    if d.user_message is not None:
        result["user_message"] = d.user_message
    result["reasons"] = [r.to_dict() for r in d.reasons]
    result["principals"] = [p.to_dict() for p in d.principals]
    result["provenance"] = {
        claim: [{"value": v.value, "sources": [_source_document(s, record.identities, where) for s in v.sources]} for v in values]
        for claim, values in sorted(d.provenance.items())
    }
    document: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "decision_id": record.decision_id,
        "evaluated_at": format_rfc3339(d.evaluated_at),
        "effect": d.effect,
        "token_ttl_seconds": record.token_ttl_seconds,
        "policy": {"id": d.policy_id, "version": d.policy_version, "digest": d.policy_digest},
        "snapshot": {
            "id": record.snapshot.id,
            "digest": record.snapshot.digest,
            "generated_at": format_rfc3339(record.snapshot.generated_at),
            "source_system": record.snapshot.source_system,
            "age_seconds": d.snapshot_age_seconds,
            "stale": d.snapshot_stale,
        },
        "feeds": feeds,
        "identities": identity_refs,
        "request": record.request,
        "masked": list(record.masked),
        "result": result,
    }
    return document, inputs


# Input documents and refs by input object (an identity, a feed row): a snapshot's identities and
# a feed's rows live as long as they are served, and each is recorded again and again (every login
# of a subject). Keyed by ``id`` with a weak reference to check the object is still the one cached
# (ids are reused after a collection); bounded, cleared when full. A race computes the same entry
# twice, harmlessly. Documents are shared and must not be modified.
_INPUTS: dict[int, tuple[weakref.ref[Any], str, dict[str, Any]]] = {}
_INPUTS_LIMIT = 16384


def _cached_input(source: Any, document_of: Callable[[Any], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    hit = _INPUTS.get(id(source))
    if hit is not None and hit[0]() is source:
        return hit[1], hit[2]
    document = document_of(source)
    ref = input_ref(document)
    if len(_INPUTS) >= _INPUTS_LIMIT:
        _INPUTS.clear()
    _INPUTS[id(source)] = (weakref.ref(source), ref, document)
    return ref, document


def _identity_input(identity: Identity) -> tuple[str, dict[str, Any]]:
    """(ref, document) of an identity."""
    return _cached_input(identity, identity_document)


def _row_input(row: FeedRow) -> tuple[str, dict[str, Any]]:
    """(ref, document) of a feed row."""
    return _cached_input(row, feed_row_document)


def _source_document(source: ValueSource, identities: tuple[Identity, ...], where: Mapping[str, int]) -> dict[str, Any]:
    # Only the records behind values are looked up, not every record of every identity read: on
    # the request path an identity can hold hundreds. They are the snapshot's own objects, so
    # ``index`` finds each by identity before comparing anything.
    records: list[Any] = []
    for entitlement in source.records:
        i = where.get(entitlement.subject_id)
        try:
            at = [i, identities[i].records.index(entitlement)] if i is not None else None
        except ValueError:
            at = None
        # Every record behind a value belongs to an identity the evaluation read; if one ever
        # did not, it is kept whole rather than lost.
        records.append(at if at is not None else {"subject_id": entitlement.subject_id, **entitlement_document(entitlement)})
    return {"rule": source.rule, "pass": source.evaluation_pass, "records": records}


# -- from the document ----------------------------------------------------------------------------


def from_document(
    document: Mapping[str, Any], input_of: Callable[[str], Mapping[str, Any]], decoded: DecodedInputs | None = None
) -> DecisionRecord:
    """The record a ``/2`` document describes; ``input_of(ref)`` returns a referenced input
    document (the log's input store).

    ``decoded``: the log reader's ``DecodedInputs``, so that records share what they have in
    common (identities, feeds, snapshot reference, the explanation of a repeated outcome) instead
    of each decoding its own; without it everything is decoded for this record alone.

    Raises:
        RecordFormatError: a field is missing or malformed, or an input cannot be found
            (``input_of``'s own error, e.g. ``KeyError``, is reported as which ref is missing).
    """
    shared = decoded if decoded is not None else DecodedInputs()

    def resolve(ref: str) -> Mapping[str, Any]:
        return _input(input_of, ref)

    try:
        identities = shared.identities(document["identities"], resolve)
        feeds, reads = shared.feeds(document["feeds"], resolve)
        result, snap, policy = document["result"], document["snapshot"], document["policy"]
        # Records of the same outcome explain it alike: decode reasons, provenance and principals
        # once (each where the document is read in order, so a malformed one fails as it would).
        key, known = shared.explanation(result, identities)
        decision = Decision(
            effect=document["effect"],
            claims=result["claims"],
            remove_claims=tuple(result["remove_claims"]),
            max_ttl_seconds=result.get("max_ttl_seconds"),
            reasons=known.reasons if known is not None else tuple(reason_from_document(r) for r in result["reasons"]),
            provenance=dict(known.provenance) if known is not None else _provenance(result["provenance"], identities),
            policy_id=policy["id"],
            policy_version=policy["version"],
            policy_digest=policy["digest"],
            snapshot_digest=snap["digest"],
            snapshot_generated_at=(generated_at := shared.instant(snap["generated_at"])),
            snapshot_age_seconds=snap["age_seconds"],
            snapshot_stale=snap["stale"],
            evaluated_at=parse_rfc3339(document["evaluated_at"]),
            principals=known.principals if known is not None else tuple(principal_from_document(p) for p in result["principals"]),
            feeds={
                name: {
                    "digest": entry["digest"],
                    "generated_at": entry["generated_at"],
                    "age_seconds": entry["age_seconds"],
                    "stale": entry["stale"],
                }
                for name, entry in sorted(document["feeds"].items())
            },
            inputs=identities,
            feed_reads=tuple(sorted(reads)),
            user_message=result.get("user_message"),
        )
        if known is None and key is not None:
            shared.remember_explanation(key, result, identities, decision)
        return DecisionRecord(
            decision_id=document["decision_id"],
            request=document["request"],
            masked=tuple(document["masked"]),
            decision=decision,
            snapshot=shared.snapshot(snap, generated_at),
            feeds=feeds,
            token_ttl_seconds=document["token_ttl_seconds"],
        )
    except RecordFormatError:
        raise
    except KeyError as exc:
        raise RecordFormatError(f"the record lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise RecordFormatError(f"the record is malformed ({type(exc).__name__})") from None


def _provenance(document: Mapping[str, Any], identities: tuple[Identity, ...]) -> dict[str, tuple[ClaimValue, ...]]:
    return {
        claim: tuple(ClaimValue(v["value"], tuple(_source(s, identities) for s in v["sources"])) for v in values)
        for claim, values in document.items()
    }


def _input(input_of: Callable[[str], Mapping[str, Any]], ref: str) -> Mapping[str, Any]:
    try:
        return input_of(ref)
    except (KeyError, LookupError):
        raise RecordFormatError(f"recorded input {ref} is missing from the log") from None


def _source(document: Mapping[str, Any], identities: tuple[Identity, ...]) -> ValueSource:
    records = []
    for item in document["records"]:
        if isinstance(item, list):
            i, j = item
            records.append(identities[i].records[j])
        else:
            records.append(identity_from_document({**_EMPTY_IDENTITY, "subject_id": item["subject_id"], "records": [item]}).records[0])
    return ValueSource(document["rule"], document["pass"], tuple(records))


_EMPTY_IDENTITY = {
    "subject_type": "",
    "status": "",
    "owner_id": None,
    "keycloak_user_id": None,
    "keycloak_client_id": None,
    "username": None,
    "email": None,
}


def reason_from_document(document: Mapping[str, Any]) -> Reason:
    return Reason(document["rule"], document["message"], document["kind"], document.get("claim"), document.get("pass"))


def principal_from_document(document: Mapping[str, Any]) -> PrincipalInfo:
    return PrincipalInfo(document["role"], document["subject_id"], document["kind"], document["status"], document["matched_by"])
