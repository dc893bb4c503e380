"""The decision record (``kpb-decision/2``): the typed model every audit module reads records through.

``DecisionRecord`` (``model``) is the record; ``build_record`` (``build``) makes one from an
evaluation; ``codec`` is its ``/2`` document and stored bytes, ``v1`` reads ``/1`` documents,
``inputs`` the recorded-input documents records reference, ``decoded_inputs`` those decoded once
per log reader and shared between records, ``masking`` the keyed hashes and how masked join keys
are undone, ``rebuild`` a record's inputs as engine inputs. ``load_record`` reads a stored body
of either version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keycloak_policy_bridge.record.build import build_record
from keycloak_policy_bridge.record.codec import RecordFormatError, decode, encode, from_document, to_document
from keycloak_policy_bridge.record.decoded_inputs import DecodedInputs
from keycloak_policy_bridge.record.masking import MASK_PREFIX, JoinKeyClearer, Masker
from keycloak_policy_bridge.record.model import RECORD_SCHEMA, RECORD_SCHEMA_V1, DecisionRecord, FeedInput, SnapshotRef
from keycloak_policy_bridge.record.rebuild import recorded_feeds, recorded_snapshot
from keycloak_policy_bridge.record.v1 import from_v1

__all__ = [
    "MASK_PREFIX",
    "RECORD_SCHEMA",
    "RECORD_SCHEMA_V1",
    "DecisionRecord",
    "DecodedInputs",
    "FeedInput",
    "JoinKeyClearer",
    "Masker",
    "RecordFormatError",
    "SnapshotRef",
    "build_record",
    "decode",
    "encode",
    "from_document",
    "from_v1",
    "load_record",
    "recorded_feeds",
    "recorded_snapshot",
    "to_document",
]


def load_record(
    document: Mapping[str, Any], input_of: Callable[[str], Mapping[str, Any]], decoded: DecodedInputs | None = None
) -> DecisionRecord:
    """The record of a stored document of either version (``input_of`` resolves ``/2`` input refs;
    ``decoded``, the reader's ``DecodedInputs``, shares their decoded objects between records).

    Raises:
        RecordFormatError: an unknown schema, or a malformed document.
    """
    schema = document.get("schema")
    if schema == RECORD_SCHEMA:
        return from_document(document, input_of, decoded)
    if schema == RECORD_SCHEMA_V1:
        return from_v1(document)
    raise RecordFormatError(f"unknown record schema {schema!r}")
