"""Keep docs/decision-log.md true to the decision record and to the commands it documents.

* Section 2 documents the ``kpb-decision/2`` record field by field against its JSON Schema
  (``schemas/decision-record.v2.schema.json``): every object of the schema that has properties
  (the record, its nested objects, the input documents) has a table listing exactly its
  properties, one per row, each in backticks. The schema itself is held to what the code writes
  (tests/test_record_codec.py); here, a record built from the acme example (``record.to_document``
  of ``record.build_record``: policy, snapshot, risk feed and a login request, evaluated with the
  engine) has the schema's top-level fields.
* The whole record shown in section 2.5 is what the code writes for alice's acme login (the
  ``/2`` document and its ``inputs``), and validates: the document against the schema, each
  input against its ``$defs`` entry and its reference.
* Section 2.6's table lists exactly the fields of a ``kpb-decision/1`` record of the committed
  ``/1`` log (tests/fixtures/decision-log-v1).
* Every ``kpb decisions`` subcommand is mentioned as ``kpb decisions NAME`` and has a reference
  section (``### `kpb decisions NAME` ``) whose table lists exactly its options and arguments.
* ``kpb replay``, ``kpb explain`` and ``kpb drift`` likewise: each has a reference section whose
  table lists exactly its options (and arguments), and every option is mentioned in the text.
* ``kpb evaluate``'s log options (``--log``, ``--mask``, ``--mask-key-env``) are mentioned.

Everything is read from the code (the schema, ``build_record``, the click command objects), so a
new record field, a new subcommand or a new option fails the suite until the guide documents it.
Self-checks run the same comparisons on modified copies (a schema with an extra property, a
command with an extra option, a group with an extra subcommand) to prove that the additions are
caught. Run this file as a script to print section 2.5's record when the example data changes.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest

import doc_tables
from doc_tables import headings, name_mismatches, param_names, schema_object, table_first_cells
from keycloak_policy_bridge.cli.app import main
from keycloak_policy_bridge.cli.decisions import decisions as decisions_group
from keycloak_policy_bridge.cli.evaluate import evaluate_command
from keycloak_policy_bridge.cli.explain import explain_command
from keycloak_policy_bridge.cli.replay import drift_command, replay_command
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.json_schema import load_schema
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import RECORD_SCHEMA, RECORD_SCHEMA_V1, Masker, build_record, decode, encode, to_document
from keycloak_policy_bridge.record.codec import input_refs
from keycloak_policy_bridge.record.inputs import input_ref
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.timeutil import parse_rfc3339

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "decision-log.md"
ACME = ROOT / "examples" / "acme"
NOW = parse_rfc3339("2026-11-28T08:00:00Z")
SCHEMA_FILE = "decision-record.v2.schema.json"
V1_LOG = ROOT / "tests" / "fixtures" / "decision-log-v1" / "decisions.db"

# The tables of section 2, by (heading, level), and the schema object each documents.
RECORD_TABLES: dict[tuple[str, int], tuple[str, ...]] = {
    ("record", 3): (),
    ("`policy`", 4): ("properties", "policy"),
    ("`snapshot`", 4): ("properties", "snapshot"),
    ("`feeds.NAME`", 4): ("properties", "feeds", "additionalProperties"),
    ("`result`", 4): ("properties", "result"),
    ("`result.reasons[]`", 4): ("$defs", "reason"),
    ("`result.principals[]`", 4): ("$defs", "principal"),
    ("`result.provenance.CLAIM[]`", 4): ("$defs", "claim_value"),
    ("`result.provenance.CLAIM[].sources[]`", 4): ("$defs", "value_source"),
    ("Inline entitlement record", 4): ("$defs", "inline_entitlement"),
    ("Identity document", 4): ("$defs", "identity"),
    ("Entitlement record", 4): ("$defs", "entitlement_fields"),
    ("Feed row document", 4): ("$defs", "feed_row"),
}
EXAMPLE_SECTION = "2.5 A whole record"
V1_SECTION = "2.6 Reading `kpb-decision/1` logs"
# Commands whose every option the guide documents, by the title of their reference section.
TOP_COMMANDS: dict[str, click.Command] = {"replay": replay_command, "explain": explain_command, "drift": drift_command}
EVALUATE_LOG_OPTIONS = ("--log", "--mask", "--mask-key-env")


# --------------------------------------------------------------------------------------------
# Reading the document


def load_doc() -> str:
    return DOC.read_text(encoding="utf-8")


def section_body(doc: str, title: str, level: int = 3) -> list[str]:
    return doc_tables.section_body(doc, title, level, DOC.name)


def documented(doc: str, title: str, level: int = 3) -> list[str]:
    return table_first_cells(section_body(doc, title, level), title)


def mentioned(doc: str, text: str) -> bool:
    """``text`` occurs as a whole token (``--json`` does not count inside ``--jsonl``)."""
    return re.search(rf"(?<![\w-]){re.escape(text)}(?![\w-])", doc) is not None


# --------------------------------------------------------------------------------------------
# Reading the code


def schema() -> dict[str, Any]:
    """The shipped record schema (a copy)."""
    copied: dict[str, Any] = json.loads(json.dumps(load_schema(SCHEMA_FILE)))
    return copied


def acme_document(decision_id: str = "01M8GJP4001N18XT36382C9EPA", masker: Masker | None = None) -> dict[str, Any]:
    """What ``kpb decisions show`` prints for alice's acme login recorded by ``kpb evaluate --log``:
    the stored ``/2`` document (keys sorted, as stored) with its ``inputs`` added."""
    policy = load_policy(str(ACME / "policy.json"))
    snapshot = load_snapshot(str(ACME / "entitlements"))
    feed = load_feed(str(ACME / "feeds" / "risk"))
    feeds = {feed.name: feed}
    request = parse_request(json.loads((ACME / "requests" / "alice-login.json").read_text(encoding="utf-8")))
    decision = evaluate(policy, snapshot, request, NOW, feeds)
    document, inputs = to_document(build_record(decision_id, decision, request, snapshot, feeds, masker=masker))
    shown = decode(encode(document))
    refs = input_refs(document)
    if refs:
        shown["inputs"] = {ref: json.loads(json.dumps(inputs[ref], sort_keys=True)) for ref in refs}
    return shown


def object_paths(node: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The path of every schema object in ``node`` that has ``properties``."""
    found: set[tuple[str, ...]] = set()
    if isinstance(node, dict):
        if isinstance(node.get("properties"), dict):
            found.add(path)
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    found |= object_paths(sub, (*path, "properties", name))
            elif key not in ("enum", "const", "required"):
                found |= object_paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found |= object_paths(value, (*path, str(i)))
    return found


def table_mismatch(doc: str, heading: tuple[str, int], document_schema: dict[str, Any]) -> tuple[list[str], list[str], list[str]] | None:
    """For one table of section 2: (schema properties it lacks, rows the schema lacks, rows listed
    twice), or None when they agree."""
    names = documented(doc, heading[0], heading[1])
    return name_mismatches(names, set(schema_object(document_schema, RECORD_TABLES[heading])["properties"]))


def example(doc: str) -> dict[str, Any]:
    """The whole record of section 2.5 (its first ``json`` block)."""
    body = section_body(doc, EXAMPLE_SECTION)
    start = body.index("```json") + 1
    parsed: dict[str, Any] = json.loads("\n".join(body[start : body.index("```", start)]))
    return parsed


def v1_fields() -> list[str]:
    """The fields of the records of the committed ``kpb-decision/1`` log (all share them)."""
    conn = sqlite3.connect(f"file:{V1_LOG}?mode=ro", uri=True)
    try:
        fields = {tuple(sorted(json.loads(body))) for (body,) in conn.execute("SELECT CAST(body AS BLOB) FROM decisions")}
    finally:
        conn.close()
    assert len(fields) == 1, fields
    return list(fields.pop())


def reference_title(path: str) -> str:
    return f"`kpb {path}`"


def command_mismatch(doc: str, path: str, command: click.Command) -> tuple[list[str], list[str], list[str]]:
    """For the reference section of ``kpb PATH``: (undocumented params, documented names that
    are not params, params never mentioned in the guide's text)."""
    names = documented(doc, reference_title(path))
    params = param_names(command)
    undocumented = sorted(set(params) - set(names))
    unknown = sorted(set(names) - set(params))
    unmentioned = sorted(p for p in params if p.startswith("-") and not mentioned(doc, p))
    return undocumented, unknown, unmentioned


def subcommand_mismatch(doc: str, group: click.Group) -> tuple[list[str], list[str]]:
    """(subcommands the guide never names as ``kpb decisions NAME``, subcommands without a
    reference section)."""
    titles = {text for _, text, _ in headings(doc)}
    unnamed = sorted(n for n in group.commands if not mentioned(doc, f"kpb decisions {n}"))
    unreferenced = sorted(n for n in group.commands if reference_title(f"decisions {n}") not in titles)
    return unnamed, unreferenced


# --------------------------------------------------------------------------------------------
# The record


def test_the_record_fixture_is_a_real_record() -> None:
    """Guard against comparing with something that is not what the log stores."""
    document = acme_document()
    assert document["schema"] == RECORD_SCHEMA == "kpb-decision/2"
    assert document["effect"] == "permit" and document["result"]["principals"][0]["subject_id"] == "E1001"
    assert document["identities"] and document["feeds"]["risk"]["rows"] and document["inputs"]
    assert set(document) - {"inputs"} == set(schema()["properties"])


def test_a_masked_record_has_the_same_fields() -> None:
    """Masking changes values, never the shape: the one table serves both."""
    masked = acme_document(masker=Masker(("subject.id", "subject.email", "context.ip"), b"test-key"))
    assert sorted(masked) == sorted(acme_document())
    assert masked["masked"] == ["subject.id", "subject.email", "context.ip"]


def test_every_object_of_the_schema_has_a_table() -> None:
    assert object_paths(schema()) == set(RECORD_TABLES.values())


@pytest.mark.parametrize("heading", list(RECORD_TABLES), ids=[title for title, _ in RECORD_TABLES])
def test_each_table_lists_exactly_the_schemas_fields(heading: tuple[str, int]) -> None:
    mismatch = table_mismatch(load_doc(), heading, schema())
    assert mismatch is None, f"{'#' * heading[1]} {heading[0]}: (undocumented, not in the schema, listed twice) = {mismatch}"


def test_an_added_schema_property_is_caught() -> None:
    """Self-check: a schema with one more property, top level or nested, no longer matches."""
    for heading in (("record", 3), ("Identity document", 4), ("`result.principals[]`", 4)):
        changed = schema()
        schema_object(changed, RECORD_TABLES[heading])["properties"]["brand_new_field"] = {}
        mismatch = table_mismatch(load_doc(), heading, changed)
        assert mismatch is not None and "brand_new_field" in mismatch[0]


def test_an_added_schema_object_is_caught() -> None:
    changed = schema()
    changed["$defs"]["brand_new_object"] = {"type": "object", "properties": {"a": {}}}
    assert object_paths(changed) - set(RECORD_TABLES.values()) == {("$defs", "brand_new_object")}


def test_a_removed_schema_property_is_caught() -> None:
    changed = schema()
    del changed["properties"]["token_ttl_seconds"]
    mismatch = table_mismatch(load_doc(), ("record", 3), changed)
    assert mismatch is not None and "token_ttl_seconds" in mismatch[1]


def test_a_field_missing_from_a_table_is_caught() -> None:
    doc = "\n".join(line for line in load_doc().splitlines() if not line.startswith("| `identities` |"))
    mismatch = table_mismatch(doc, ("record", 3), schema())
    assert mismatch is not None and "identities" in mismatch[0]


def test_the_whole_record_is_what_the_code_writes() -> None:
    shown = example(load_doc())
    assert shown == acme_document(shown["decision_id"]), (
        f"docs/decision-log.md section {EXAMPLE_SECTION} is not what the code writes now; "
        "print the new one with: .venv/bin/python tests/test_docs_decision_log.py"
    )


def test_the_whole_record_validates() -> None:
    shown = example(load_doc())
    document = {k: v for k, v in shown.items() if k != "inputs"}
    root = schema()
    validator = jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker())
    assert [e.message for e in validator.iter_errors(document)] == []
    inputs = shown["inputs"]
    assert list(inputs) == list(input_refs(document))  # every reference resolves, and nothing else is there
    for ref, input_document in inputs.items():
        assert input_ref(input_document) == ref
        kind = "identity" if ref in document["identities"] else "feed_row"
        definition = jsonschema.Draft202012Validator({"$defs": root["$defs"], "$ref": f"#/$defs/{kind}"})
        assert [e.message for e in definition.iter_errors(input_document)] == [], ref


def test_the_v1_table_lists_exactly_the_v1_fields() -> None:
    fields = v1_fields()
    assert {"inputs", "rules", "subject_id"} <= set(fields) and RECORD_SCHEMA_V1 == "kpb-decision/1"  # guard: /1 records
    mismatch = name_mismatches(documented(load_doc(), V1_SECTION), set(fields))
    assert mismatch is None, f"### {V1_SECTION}: (undocumented, not /1 fields, listed twice) = {mismatch}"


# --------------------------------------------------------------------------------------------
# kpb decisions


def test_decisions_is_the_group_the_cli_registers() -> None:
    assert main.commands["decisions"] is decisions_group
    assert {"list", "show", "export", "verify", "checkpoint", "prune"} <= set(decisions_group.commands)


def test_every_decisions_subcommand_is_documented() -> None:
    unnamed, unreferenced = subcommand_mismatch(load_doc(), decisions_group)
    assert not unnamed, f"kpb decisions subcommands the guide never names: {unnamed}"
    assert not unreferenced, f"kpb decisions subcommands without a ### `kpb decisions NAME` section: {unreferenced}"


@pytest.mark.parametrize("name", sorted(decisions_group.commands))
def test_every_decisions_subcommand_option_is_in_its_table(name: str) -> None:
    undocumented, unknown, unmentioned = command_mismatch(load_doc(), f"decisions {name}", decisions_group.commands[name])
    assert not undocumented, f"kpb decisions {name}: options not in its table: {undocumented}"
    assert not unknown, f"kpb decisions {name}: table rows that are not options: {unknown}"
    assert not unmentioned, f"kpb decisions {name}: options never mentioned: {unmentioned}"


def test_an_added_subcommand_is_caught() -> None:
    """Self-check on a copy of the group: a new subcommand is neither named nor referenced."""
    group = copy.copy(decisions_group)
    group.commands = dict(decisions_group.commands)
    group.commands["brand-new"] = click.Command("brand-new", params=[])
    unnamed, unreferenced = subcommand_mismatch(load_doc(), group)
    assert "brand-new" in unnamed and "brand-new" in unreferenced


# --------------------------------------------------------------------------------------------
# kpb replay, kpb explain, kpb drift


def test_the_commands_are_the_ones_the_cli_registers() -> None:
    for name, command in TOP_COMMANDS.items():
        assert main.commands[name] is command


@pytest.mark.parametrize("name", sorted(TOP_COMMANDS))
def test_every_option_is_in_the_commands_table(name: str) -> None:
    undocumented, unknown, unmentioned = command_mismatch(load_doc(), name, TOP_COMMANDS[name])
    assert not undocumented, f"kpb {name}: options not in its table: {undocumented}"
    assert not unknown, f"kpb {name}: table rows that are not options: {unknown}"
    assert not unmentioned, f"kpb {name}: options never mentioned: {unmentioned}"


@pytest.mark.parametrize("name", sorted(TOP_COMMANDS))
def test_an_added_option_is_caught(name: str) -> None:
    """Self-check on a copy of the command: a new option is reported as undocumented and
    unmentioned."""
    command = copy.copy(TOP_COMMANDS[name])
    command.params = [*TOP_COMMANDS[name].params, click.Option(["--brand-new-option"], is_flag=True)]
    undocumented, unknown, unmentioned = command_mismatch(load_doc(), name, command)
    assert "--brand-new-option" in undocumented and "--brand-new-option" in unmentioned
    assert "--brand-new-option" not in unknown


def test_an_added_subcommand_option_is_caught() -> None:
    command = copy.copy(decisions_group.commands["verify"])
    command.params = [*command.params, click.Option(["--strict-signatures"], is_flag=True)]
    undocumented, _, _ = command_mismatch(load_doc(), "decisions verify", command)
    assert "--strict-signatures" in undocumented


def test_the_extraction_finds_the_known_options() -> None:
    """Guard against a broken extractor passing vacuously."""
    assert {"--policy", "--recorded", "--entitlements", "--html", "--mask-key-env"} <= set(param_names(replay_command))
    assert {"DECISION_ID", "--token", "--jwks-url", "--no-verify", "--leeway"} <= set(param_names(explain_command))
    assert {"--policy", "--entitlements", "--now", "--json"} <= set(param_names(drift_command))


def test_mentioned_matches_whole_options_only() -> None:
    assert mentioned("use --json here", "--json")
    assert not mentioned("use --jsonl here", "--json")
    assert not mentioned("use --no-json here", "--json")


# --------------------------------------------------------------------------------------------
# kpb evaluate


def test_evaluate_log_options_are_mentioned() -> None:
    names = set(param_names(evaluate_command))
    assert set(EVALUATE_LOG_OPTIONS) <= names
    doc = load_doc()
    assert [o for o in EVALUATE_LOG_OPTIONS if not mentioned(doc, o)] == []


if __name__ == "__main__":
    sys.stdout.write(json.dumps(acme_document(), indent=2, ensure_ascii=False) + "\n")
