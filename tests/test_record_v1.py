"""``record.v1``: ``kpb-decision/1`` documents read into the model.

The documents are the bodies of the committed ``/1`` log (tests/fixtures/decision-log-v1, written by
the code before record v2), read with sqlite3 directly: no storage code between the bytes and
``from_v1``. Each must read as a record whose response is the stored result exactly, whose derived
columns are the ones the old code stored, and whose inputs are the recorded ones.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import ROOT
from keycloak_policy_bridge.record import RECORD_SCHEMA_V1, RecordFormatError, decode, from_v1, load_record, to_document
from keycloak_policy_bridge.record.inputs import feed_row_document, identity_document
from record_cases import openapi_errors

FIXTURE = ROOT / "tests" / "fixtures" / "decision-log-v1" / "decisions.db"
DEFAULT_TTL = timedelta(hours=1)  # what the /1 log assumed for a token without a recorded lifetime


def sortable(moment: datetime) -> str:
    """The log's time columns: fixed-width UTC text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StoredRow:
    """One row of the fixture: its body and the columns the old code derived from it."""

    body: bytes
    decision_id: str
    evaluated_at: str
    subject_id: str | None
    keycloak_user_id: str | None
    client_id: str | None
    effect: str
    rules: str
    policy_digest: str
    token_expires_at: str

    @property
    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


def stored_rows() -> list[StoredRow]:
    conn = sqlite3.connect(f"file:{FIXTURE}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT CAST(body AS BLOB), decision_id, evaluated_at, subject_id, keycloak_user_id, client_id, effect, rules, "
            "policy_digest, token_expires_at FROM decisions ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()
    return [StoredRow(*row) for row in rows]


ROWS = stored_rows()
IDS = [row.decision_id for row in ROWS]


def test_the_fixture_is_a_v1_log() -> None:
    """Guard: 24 plain-JSON ``/1`` bodies, some masked, permits and denies."""
    assert len(ROWS) == 24
    assert all(row.body[:1] == b"{" and row.document["schema"] == RECORD_SCHEMA_V1 for row in ROWS)
    assert {row.effect for row in ROWS} == {"permit", "deny"}
    assert any(row.document["masked"] for row in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_v1_record_reads_as_a_record(row: StoredRow) -> None:
    record = from_v1(row.document)
    assert record.schema == RECORD_SCHEMA_V1
    assert record == load_record(decode(row.body), _no_inputs)  # the stored bytes, either way in
    assert record.response() == row.document["result"]  # exactly as the caller got it
    assert record.request == row.document["request"] and list(record.masked) == row.document["masked"]


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_derived_columns_are_the_stored_ones(row: StoredRow) -> None:
    """What the old code stored next to the body, derived once more from the model."""
    record = from_v1(row.document)
    assert record.decision_id == row.decision_id and sortable(record.evaluated_at) == row.evaluated_at
    assert list(record.rules) == json.loads(row.rules)
    assert (record.subject_id, record.keycloak_user_id, record.client_id) == (row.subject_id, row.keycloak_user_id, row.client_id)
    assert record.effect == row.effect and record.policy_digest == row.policy_digest
    assert sortable(record.token_expires_at(DEFAULT_TTL)) == row.token_expires_at


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_v1_fields_map_onto_the_model(row: StoredRow) -> None:
    document = row.document
    record = from_v1(document)
    assert record.subject_id == document["subject_id"] and record.keycloak_user_id == document["keycloak_user_id"]
    assert record.client_id == document["client_id"] and list(record.rules) == document["rules"]
    assert record.token_ttl_seconds == document["token_ttl_seconds"]
    policy, snapshot = document["policy"], document["snapshot"]
    decision = record.decision
    assert (decision.policy_id, decision.policy_version, decision.policy_digest) == (policy["id"], policy["version"], policy["digest"])
    assert (record.snapshot.id, record.snapshot.digest, record.snapshot.source_system) == (
        snapshot["id"],
        snapshot["digest"],
        snapshot.get("source_system"),
    )
    entitlements = document["result"]["entitlements"]
    assert (decision.snapshot_age_seconds, decision.snapshot_stale) == (entitlements["age_seconds"], entitlements["stale"])
    assert decision.feeds == document["result"].get("context_feeds", {})


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_the_recorded_inputs_are_read_whole(row: StoredRow) -> None:
    inputs = row.document["inputs"]
    record = from_v1(row.document)
    assert [identity_document(i) for i in record.identities] == inputs["identities"]
    assert {name: feed.snapshot_id for name, feed in record.feeds.items()} == {n: f["snapshot_id"] for n, f in inputs["feeds"].items()}
    for name, feed in record.feeds.items():
        assert {s: [feed_row_document(r) for r in rows] for s, rows in feed.rows.items()} == inputs["feeds"][name]["rows"]
    assert record.decision.feed_reads == tuple(sorted((n, s) for n, f in inputs["feeds"].items() for s in f["rows"]))


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_provenance_evidence_is_the_recorded_identitys_record(row: StoredRow) -> None:
    """A ``/1`` provenance evidence document names its record by subject, file and line; the model
    points at that very record of the recorded identity, whose evidence is the stored one."""
    record = from_v1(row.document)
    held = {r for identity in record.identities for r in identity.records}
    stored = row.document["result"].get("provenance", {})
    for claim, values in record.decision.provenance.items():
        for value, stored_value in zip(values, stored[claim], strict=True):
            assert value.value == stored_value["value"]
            for source, stored_source in zip(value.sources, stored_value["sources"], strict=True):
                assert (source.rule, source.evaluation_pass) == (stored_source["rule"], stored_source["pass"])
                assert [r.evidence() for r in source.records] == stored_source["records"]
                assert all(r in held for r in source.records)


def test_evidence_without_its_recorded_identity_is_rebuilt_from_itself() -> None:
    document = next(row.document for row in ROWS if row.document["result"].get("provenance"))
    stripped = {**document, "inputs": {**document["inputs"], "identities": []}}
    record = from_v1(stripped)
    assert record.response() == document["result"]
    rebuilt = [r for values in record.decision.provenance.values() for v in values for s in v.sources for r in s.records]
    stored = [e for values in document["result"]["provenance"].values() for v in values for s in v["sources"] for e in s["records"]]
    assert rebuilt and [r.evidence() for r in rebuilt] == stored


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_a_shown_v1_record_matches_the_openapi_document(row: StoredRow) -> None:
    """The admin API returns a ``/1`` record as stored."""
    assert openapi_errors(row.document, "DecisionRecord") == [] and openapi_errors(row.document, "DecisionRecordV2") != []


def test_a_v1_record_is_never_written_as_v1() -> None:
    with pytest.raises(ValueError, match="only kpb-decision/2"):
        to_document(from_v1(ROWS[0].document))


@pytest.mark.parametrize("field", ["decision_id", "evaluated_at", "result", "policy", "snapshot", "inputs", "request"])
def test_a_v1_document_without_a_field_is_refused_by_name(field: str) -> None:
    document = {k: v for k, v in ROWS[0].document.items() if k != field}
    with pytest.raises(RecordFormatError, match=f"lacks '{field}'"):
        from_v1(document)


def test_a_malformed_v1_document_is_refused() -> None:
    document = ROWS[0].document
    for broken in ({**document, "evaluated_at": "soon"}, {**document, "inputs": {"identities": [{"subject_id": "E1"}], "feeds": {}}}):
        with pytest.raises(RecordFormatError):
            from_v1(broken)


def test_an_unknown_schema_is_refused() -> None:
    with pytest.raises(RecordFormatError, match="unknown record schema 'kpb-decision/0'"):
        load_record({**ROWS[0].document, "schema": "kpb-decision/0"}, _no_inputs)


def _no_inputs(ref: str) -> dict[str, Any]:
    raise AssertionError(f"a /1 record references no input ({ref})")
