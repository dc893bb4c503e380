"""``record.codec``: the ``kpb-decision/2`` document against its JSON Schema, the round trip
through the stored bytes, and how unreadable documents and bytes are refused."""

from __future__ import annotations

import json
import zlib
from dataclasses import replace
from datetime import timedelta
from typing import Any

import jsonschema
import pytest

from conftest import NOW
from keycloak_policy_bridge.entitlements import ASSIGNMENT_STATES, PRIVILEGE_LEVELS, SUBJECT_STATUSES, SUBJECT_TYPES
from keycloak_policy_bridge.join_keys import BY_PATH, JOIN_KEYS
from keycloak_policy_bridge.record import (
    RECORD_SCHEMA,
    DecisionRecord,
    DecodedInputs,
    Masker,
    RecordFormatError,
    decode,
    encode,
    from_document,
    to_document,
)
from keycloak_policy_bridge.record.codec import input_refs, stored_input_refs
from keycloak_policy_bridge.record.inputs import input_ref
from record_cases import MASKER, NAMES, SCHEMA_FILE, acme_record, case_id, cases, decide, openapi, openapi_errors, schema, schema_errors

CASES = cases()


def test_the_cases_cover_what_the_document_can_hold() -> None:
    """Guard against round-tripping records that exercise nothing."""
    records = [acme_record(name, masker) for name, masker in CASES]
    assert {r.effect for r in records} == {"permit", "deny"}
    assert any(len(r.identities) >= 2 for r in records)  # an agent and its user, a service account and its owner
    assert any(not r.identities for r in records)  # an unknown principal
    assert any(row for r in records for feed in r.feeds.values() for row in feed.rows.values())
    assert any(r.decision.max_ttl_seconds for r in records) and any(r.decision.user_message for r in records)
    assert any(r.masked_join_keys() for r in records)


# -- the schema -----------------------------------------------------------------------------------


def test_the_schema_is_a_2020_12_schema_of_the_v2_document() -> None:
    document = schema()
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$id"].endswith("/" + SCHEMA_FILE)
    assert document["properties"]["schema"] == {**document["properties"]["schema"], "const": RECORD_SCHEMA}
    assert {"identity", "feed_row"} <= set(document["$defs"])


def test_the_schema_enums_are_the_codes_vocabularies() -> None:
    """The enums restate vocabularies the code defines; a new value must reach the schema too."""
    defs = schema()["$defs"]
    fields = defs["entitlement_fields"]["properties"]
    assert fields["privilege_level"]["enum"] == list(PRIVILEGE_LEVELS)
    assert fields["assignment_state"]["enum"] == list(ASSIGNMENT_STATES)
    assert defs["identity"]["properties"]["subject_type"]["enum"] == list(SUBJECT_TYPES)
    assert defs["identity"]["properties"]["status"]["enum"] == list(SUBJECT_STATUSES)
    principal = defs["principal"]["properties"]
    assert principal["kind"]["enum"] == list(dict.fromkeys(SUBJECT_TYPES.values()))
    assert principal["status"]["enum"] == [*SUBJECT_STATUSES, "unknown"]
    assert principal["matched_by"]["enum"] == [k.field for k in JOIN_KEYS] + [None]


@pytest.mark.parametrize(("name", "masker"), CASES, ids=[case_id(c) for c in CASES])
def test_the_document_and_its_inputs_validate(name: str, masker: Masker | None) -> None:
    document, inputs = to_document(acme_record(name, masker))
    assert schema_errors(document) == []
    identity_refs = set(document["identities"])
    row_refs = {ref for feed in document["feeds"].values() for refs in feed["rows"].values() for ref in refs}
    for ref, input_document in inputs.items():
        assert input_ref(input_document) == ref  # content-addressed
        assert schema_errors(input_document, "identity" if ref in identity_refs else "feed_row") == [], ref
    assert set(inputs) == identity_refs | row_refs == set(input_refs(document))  # every input referenced, nothing more


@pytest.mark.parametrize(("name", "masker"), CASES, ids=[case_id(c) for c in CASES])
def test_the_document_round_trips_through_the_stored_bytes(name: str, masker: Masker | None) -> None:
    record = acme_record(name, masker)
    document, inputs = to_document(record)
    stored = encode(document)
    assert stored[:1] == b"\x02"
    assert decode(stored) == json.loads(json.dumps(document))
    back = from_document(decode(stored), inputs.__getitem__)
    assert back == record
    assert to_document(back) == (document, inputs)
    assert encode(to_document(back)[0]) == stored  # the same record always stores the same bytes
    assert stored_input_refs(stored) == input_refs(document)


@pytest.mark.parametrize(("name", "masker"), CASES, ids=[case_id(c) for c in CASES])
def test_the_response_is_the_engines(name: str, masker: Masker | None) -> None:
    """What the caller got, from the record and from the record read back."""
    record = acme_record(name, masker)
    document, inputs = to_document(record)
    expected = decide(name).response(record.decision_id)
    assert record.response() == expected
    assert from_document(decode(encode(document)), inputs.__getitem__).response() == expected


def test_provenance_points_into_the_recorded_identities() -> None:
    """A granting record is ``[i, j]``: record j of identity i, not a copy of it."""
    record = acme_record("agent-exchange-for-alice")
    document, inputs = to_document(record)
    identities = [inputs[ref] for ref in document["identities"]]
    sources = [s for values in document["result"]["provenance"].values() for v in values for s in v["sources"]]
    positions = [p for s in sources for p in s["records"]]
    assert positions and all(isinstance(p, list) for p in positions)
    granted = {(identities[i]["subject_id"], identities[i]["records"][j]["value"]) for i, j in positions}
    assert ("E1001", "crm:read") in granted and ("A3001", "crm:read") in granted  # the subject's and the agent's pass
    assert {("E1001", "acme-eu")} <= granted


def test_a_record_outside_the_recorded_identities_is_kept_inline() -> None:
    """Should a granting record belong to no recorded identity, the document holds it whole."""
    record = acme_record("alice-login")
    orphaned = replace(record, decision=replace(record.decision, inputs=()))
    document, inputs = to_document(orphaned)
    inline = [p for values in document["result"]["provenance"].values() for v in values for s in v["sources"] for p in s["records"]]
    assert inline and all(isinstance(p, dict) and p["subject_id"] == "E1001" for p in inline)
    assert schema_errors(document) == []
    assert from_document(decode(encode(document)), inputs.__getitem__) == orphaned


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["identity", "feed row"])
def test_a_missing_input_is_named(kind: str) -> None:
    document, inputs = to_document(acme_record("alice-login"))
    ref = document["identities"][0] if kind == "identity" else document["feeds"]["risk"]["rows"]["E1001"][0]
    del inputs[ref]
    with pytest.raises(RecordFormatError, match=f"recorded input {ref} is missing"):
        from_document(document, inputs.__getitem__)


def _deflated(text: bytes) -> bytes:
    """Raw deflate without the preset dictionary: readable with it (the stream never refers to it)."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    return b"\x02" + deflate.compress(text) + deflate.flush()


STORED = encode(to_document(acme_record("alice-login"))[0])
GARBAGE = {
    "empty": b"",
    "unknown leading byte": b"\x00\x01\x02",
    "a JSON array": b"[1, 2]",
    "not deflate": b"\x02not deflate at all",
    "cut short": STORED[:-8],
    "bytes after the stream": STORED + b"\x00",
    "deflated text that is not JSON": _deflated(b"decision: permit"),
    "deflated JSON that is not an object": _deflated(b"[1, 2]"),
    "plain JSON cut short": b'{"schema": "kpb-decision/1", "decision_id": ',
    "plain JSON with invalid UTF-8": b'{"a": "\xff"}',
}


@pytest.mark.parametrize("blob", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_is_refused(blob: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode(blob)
    with pytest.raises(RecordFormatError):
        stored_input_refs(blob)


def test_a_body_nested_too_deep_is_refused() -> None:
    """Found while writing these tests: a (tampered) body nested past the recursion limit raises
    RecursionError, which the readers' UnreadableRecord handling does not expect."""
    with pytest.raises(RecordFormatError):
        decode(b'{"a": ' + b"[" * 100_000)


def test_the_refusals_name_no_content() -> None:
    """The message says what is wrong, never what the bytes hold."""
    for blob in GARBAGE.values():
        with pytest.raises(RecordFormatError) as caught:
            decode(blob)
        assert "kpb-decision" not in str(caught.value) and "permit" not in str(caught.value)


def _without(document: dict[str, Any], *path: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(document))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (("result",), "lacks 'result'"),
        (("snapshot", "digest"), "lacks 'digest'"),
        (("feeds", "risk", "rows"), "lacks 'rows'"),
        (("result", "provenance"), "lacks 'provenance'"),
    ],
)
def test_a_missing_field_is_named(path: tuple[str, ...], message: str) -> None:
    document, inputs = to_document(acme_record("alice-login"))
    broken = _without(document, *path)
    assert schema_errors(broken) != []
    with pytest.raises(RecordFormatError, match=message):
        from_document(broken, inputs.__getitem__)


def test_a_malformed_field_is_refused() -> None:
    document, inputs = to_document(acme_record("alice-login"))
    out_of_range = {"roles": [{"value": "crm:read", "sources": [{"rule": "r", "pass": "subject", "records": [[7, 0]]}]}]}
    for broken in (
        {**document, "evaluated_at": "yesterday"},
        {**document, "identities": 42},
        {**document, "result": {**document["result"], "provenance": out_of_range}},
    ):
        with pytest.raises(RecordFormatError, match="malformed"):
            from_document(broken, inputs.__getitem__)


def test_only_v2_records_are_written() -> None:
    record = replace(acme_record("alice-login"), schema="kpb-decision/1")
    with pytest.raises(ValueError, match="only kpb-decision/2 records are written"):
        to_document(record)


def test_masked_records_store_no_masked_value() -> None:
    """Nothing the log stores for a masked record (document and inputs) holds the clear value of a
    masked path, and a masked join key is hashed in every recorded identity too."""
    for name in NAMES:
        clear = acme_record(name)
        document, inputs = to_document(acme_record(name, MASKER))
        text = json.dumps([document, inputs])
        for path in document["masked"]:
            section, field = path.split(".")
            value = clear.request[section][field]
            assert document["request"][section][field].startswith("hmac-sha256:")
            if path != "subject.username":  # a username is also the export's account name, which is not masked
                assert json.dumps(value) not in text and json.dumps(value.lower()) not in text, (name, path)
            key = BY_PATH.get(path)
            if key is not None:
                for ref in document["identities"]:
                    held = inputs[ref][key.field]
                    assert held is None or held.startswith("hmac-sha256:"), (name, path, ref)


def test_the_document_records_the_instant() -> None:
    document, _ = to_document(acme_record("alice-login"))
    assert document["evaluated_at"] == "2026-11-28T08:00:00Z" == NOW.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    "change",
    [
        lambda d, i: d.update(subject_id="E1001"),  # a /1 field: closed at the top
        lambda d, i: d["result"].update(decision_id=d["decision_id"]),  # the response's repeat of the id
        lambda d, i: d["snapshot"].update(records=10),
        lambda d, i: d["identities"].append("E1001"),  # a reference is a SHA-256
        lambda d, i: d["feeds"]["risk"]["rows"]["E1001"].append("sha256:" + "0" * 64),
        lambda d, i: d["result"]["reasons"].append({"rule": "r", "message": "m", "kind": "warning"}),
        lambda d, i: d["result"]["provenance"]["roles"][0]["sources"][0]["records"].append([0, 1, 2]),
        lambda d, i: d.update(evaluated_at="2026-11-28T09:00:00+01:00"),  # recorded in UTC
        lambda d, i: d.update(decision_id="01M8GJP400-not-a-ulid"),
    ],
)
def test_the_schema_is_closed_where_the_codec_is(change: Any) -> None:
    document, inputs = to_document(acme_record("alice-login"))
    document = json.loads(json.dumps(document))
    change(document, inputs)
    assert schema_errors(document) != []


def test_the_input_definitions_are_closed() -> None:
    document, inputs = to_document(acme_record("alice-login"))
    identity = json.loads(json.dumps(inputs[document["identities"][0]]))
    row = json.loads(json.dumps(inputs[document["feeds"]["risk"]["rows"]["E1001"][0]]))
    assert schema_errors({**identity, "kind": "human"}, "identity") != []
    assert schema_errors({**identity, "records": [{**identity["records"][0], "origin": {}}]}, "identity") != []
    assert schema_errors({**row, "subject_id": "E1001"}, "feed_row") != []
    assert schema_errors(row, "identity") != [] and schema_errors(identity, "feed_row") != []


# -- the OpenAPI document's copy ------------------------------------------------------------------


def test_the_openapi_record_is_the_shipped_schema_with_its_inputs() -> None:
    """The admin API's document carries a copy (standalone tools need one); it must not drift.
    What it adds is ``inputs``, which the log adds to a ``/2`` document when showing it."""
    shipped = {k: v for k, v in schema().items() if k not in ("$schema", "$id", "description")}
    expected = json.loads(json.dumps(shipped).replace('"#/$defs/', '"#/components/schemas/DecisionRecordV2/$defs/'))
    copied = json.loads(json.dumps(openapi()["components"]["schemas"]["DecisionRecordV2"]))
    inputs = copied["properties"].pop("inputs")
    copied.pop("description")
    assert copied == expected
    assert inputs["additionalProperties"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/DecisionRecordV2/$defs/identity"},
            {"$ref": "#/components/schemas/DecisionRecordV2/$defs/feed_row"},
        ]
    }


@pytest.mark.parametrize(("name", "masker"), CASES, ids=[case_id(c) for c in CASES])
def test_a_shown_record_matches_the_openapi_document(name: str, masker: Masker | None) -> None:
    """A ``/2`` document with its ``inputs``, as ``DecisionLogReader.document`` returns it."""
    document, inputs = to_document(acme_record(name, masker))
    shown = json.loads(json.dumps(document))
    refs = input_refs(document)
    if refs:
        shown["inputs"] = {ref: inputs[ref] for ref in refs}
    assert openapi_errors(shown, "DecisionRecord") == []
    assert openapi_errors(shown, "DecisionRecordV2") == [] and openapi_errors(shown, "DecisionRecordV1") != []
    assert openapi_errors({**shown, "inputs": {"0" * 64: {"subject_id": "E1"}}}, "DecisionRecord") != []


# -- reading fast, reading the same (issue 13) ----------------------------------------------------


def _typed(value: Any) -> Any:
    """``value`` with every leaf's type made visible: ``1``, ``1.0`` and ``True`` compare unequal."""
    if isinstance(value, dict):
        return {"dict": [(k, _typed(v)) for k, v in value.items()]}
    if isinstance(value, list):
        return {"list": [_typed(v) for v in value]}
    return (type(value).__name__, repr(value))


STORED_TEXTS = {
    "a 64-bit integer": b'{"n": 9223372036854775807, "m": -9223372036854775808, "u": 18446744073709551615}',
    "integers beyond 64 bits stay integers": b'{"n": 123456789012345678901234567890, "m": -9223372036854775809}',
    "a 19-digit run inside a string": b'{"digest": "sha256:1234567890123456789abc", "n": 1}',
    "floats": b'{"a": 0.1, "b": 1e-05, "c": -0.0, "d": 1.7976931348623157e308, "e": 5e-324, "f": 1E5, "g": 2.5}',
    "integers that look like floats elsewhere": b'{"a": 1, "b": 1.0, "c": true, "d": 0, "e": -0}',
    "NaN and infinities, which json reads": b'{"a": NaN, "b": Infinity, "c": -Infinity}',
    "a lone surrogate escape": b'{"a": "\\ud800"}',
    "escapes and non-ASCII text": b'{"a": "tab\\t quote\\" slash\\/ \\u00e9 \xc3\xa9 \\u0000", "b": null}',
    "key order as stored": b'{"z": 1, "a": {"y": [1, {"b": 2, "a": 1}], "x": null}}',
    "duplicate keys: the last wins": b'{"a": 1, "a": 2}',
}


@pytest.mark.parametrize("text", list(STORED_TEXTS.values()), ids=list(STORED_TEXTS))
def test_a_stored_document_reads_to_the_values_json_reads(text: bytes) -> None:
    """orjson reads documents faster; it must read every one to the same Python values as json:
    ints stay ints of any size, floats floats, keys in their stored order."""
    expected = _typed(json.loads(text))
    assert _typed(decode(_deflated(text))) == expected  # a /2 body
    assert _typed(decode(text)) == expected  # a /1 body: plain JSON


def _alice_at(minutes: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    record = acme_record("alice-login")
    later = replace(record, decision_id=f"{record.decision_id[:-2]}{minutes:02d}")
    return to_document(replace(later, decision=replace(record.decision, evaluated_at=NOW + timedelta(minutes=minutes))))


def test_records_read_through_one_decoded_inputs_share_them() -> None:
    """A reader's records share their decoded inputs (what lets replay find the snapshot it rebuilt
    by object), and read exactly as records decoded alone."""
    (first, inputs), (second, _) = _alice_at(1), _alice_at(2)
    shared = DecodedInputs()
    a, b = from_document(first, inputs.__getitem__, shared), from_document(second, inputs.__getitem__, shared)
    assert a.identities is b.identities and a.feeds is b.feeds and a.snapshot is b.snapshot
    assert a.decision.reasons is b.decision.reasons and a.decision.principals is b.decision.principals
    assert a == from_document(first, inputs.__getitem__) and b == from_document(second, inputs.__getitem__)
    assert a.evaluated_at != b.evaluated_at


def test_an_explanation_is_shared_only_by_equal_results_over_the_same_identities() -> None:
    document, inputs = to_document(acme_record("agent-exchange-for-alice"))
    claim = next(iter(document["result"]["provenance"]))
    shared = DecodedInputs()
    # NaN and null have the same JSON text; the second must not get the first's value.
    with_nan = json.loads(json.dumps(document))
    with_nan["result"]["provenance"][claim][0]["value"] = float("nan")
    with_null = json.loads(json.dumps(document))
    with_null["result"]["provenance"][claim][0]["value"] = None
    from_document(with_nan, inputs.__getitem__, shared)
    assert from_document(with_null, inputs.__getitem__, shared).decision.provenance[claim][0].value is None
    # The same result over another identity points into that identity's records.
    alice, alice_inputs = to_document(acme_record("alice-login"))
    bob, bob_inputs = to_document(acme_record("bob-login"))
    both = {**alice_inputs, **bob_inputs}.__getitem__
    as_bob = {**alice, "identities": bob["identities"]}
    from_document(alice, both, shared)
    read = from_document(as_bob, both, shared)
    assert read == from_document(as_bob, both)
    assert {r.subject_id for values in read.decision.provenance.values() for v in values for s in v.sources for r in s.records} == {"E1002"}


def test_a_malformed_document_fails_alike_with_decoded_inputs_shared() -> None:
    """The caches never change what a broken record is reported as, even warm."""
    document, inputs = to_document(acme_record("alice-login"))
    risk = document["feeds"]["risk"]
    broken = [
        _without(document, "result"),
        _without(document, "snapshot", "source_system"),
        _without(document, "feeds", "risk", "snapshot_id"),
        {**document, "identities": 42},
        {**document, "identities": [["not", "a", "ref"]]},
        {**document, "evaluated_at": "yesterday"},
        {**document, "feeds": {"risk": {**risk, "rows": [1, 2]}}},
        {**document, "feeds": {"risk": {**risk, "generated_at": 7}}},
        {**document, "snapshot": {**document["snapshot"], "source_system": ["unhashable"]}},
        {**document, "snapshot": {**document["snapshot"], "generated_at": "later"}},
        {**document, "result": {**document["result"], "principals": [{"role": "subject"}]}},
        {**document, "result": {**document["result"], "reasons": "not a list"}},
    ]
    shared = DecodedInputs()
    from_document(document, inputs.__getitem__, shared)  # warm every cache with the intact record
    for bad in broken:
        outcomes: list[DecisionRecord | str] = []
        for decoded in (None, shared):
            try:
                outcomes.append(from_document(bad, inputs.__getitem__, decoded))
            except RecordFormatError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], bad
