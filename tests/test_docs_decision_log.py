"""Keep docs/decision-log.md true to the decision record and to the commands it documents.

* The ``### record`` table lists exactly the top-level keys of a record that
  ``decision_record.build_record`` builds (from the acme example: policy, snapshot, risk feed and
  a login request, evaluated with the engine), one key per row, each in backticks.
* Every ``kpb decisions`` subcommand is mentioned as ``kpb decisions NAME`` and has a reference
  section (``### `kpb decisions NAME` ``) whose table lists exactly its options and arguments.
* ``kpb replay``, ``kpb explain`` and ``kpb drift`` likewise: each has a reference section whose
  table lists exactly its options (and arguments), and every option is mentioned in the text.
* ``kpb evaluate``'s log options (``--log``, ``--mask``, ``--mask-key-env``) are mentioned.

Everything is read from the code (``build_record``, the click command objects), so a new record
key, a new subcommand or a new option fails the suite until the guide documents it. Self-checks
run the same comparisons on modified copies (a record with an extra key, a command with an extra
option, a group with an extra subcommand) to prove that the additions are caught.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest

import doc_tables
from doc_tables import headings, param_names, table_first_cells

from keycloak_policy_bridge.cli.app import main
from keycloak_policy_bridge.cli.decisions import decisions as decisions_group
from keycloak_policy_bridge.cli.evaluate import evaluate_command
from keycloak_policy_bridge.cli.explain import explain_command
from keycloak_policy_bridge.cli.replay import drift_command, replay_command
from keycloak_policy_bridge.context_feed import load_feed
from keycloak_policy_bridge.decision_record import RECORD_SCHEMA, Masker, build_record
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.timeutil import parse_rfc3339
from keycloak_policy_bridge.ulid import make_ulid

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "decision-log.md"
ACME = ROOT / "examples" / "acme"
NOW = parse_rfc3339("2026-11-28T08:00:00Z")

RECORD_SECTION = "record"
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


def acme_record(masker: Masker | None = None) -> dict[str, Any]:
    """A record of alice's acme login, built the way ``kpb evaluate --log`` builds it."""
    policy = load_policy(str(ACME / "policy.json"))
    snapshot = load_snapshot(str(ACME / "entitlements"))
    feed = load_feed(str(ACME / "feeds" / "risk"))
    feeds = {feed.name: feed}
    request = parse_request(json.loads((ACME / "requests" / "alice-login.json").read_text(encoding="utf-8")))
    decision = evaluate(policy, snapshot, request, NOW, feeds)
    return build_record(make_ulid(NOW, bytes(10)), decision, request, snapshot, feeds, masker=masker)


def record_mismatch(doc: str, keys: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(record keys the table lacks, table rows that are not record keys, rows listed twice)."""
    names = documented(doc, RECORD_SECTION)
    missing = sorted(set(keys) - set(names))
    extra = sorted(set(names) - set(keys))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    return missing, extra, duplicates


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
    record = acme_record()
    assert record["schema"] == RECORD_SCHEMA == "kpb-decision/1"
    assert record["effect"] == "permit" and record["subject_id"] == "E1001"
    assert record["inputs"]["identities"] and record["inputs"]["feeds"]["risk"]["rows"]
    assert len(record) >= 10


def test_the_record_table_lists_exactly_the_record_keys() -> None:
    keys = sorted(acme_record())
    missing, extra, duplicates = record_mismatch(load_doc(), keys)
    assert not missing, f"### {RECORD_SECTION}: record keys not in the table: {missing}"
    assert not extra, f"### {RECORD_SECTION}: table rows that are not record keys: {extra}"
    assert not duplicates, f"### {RECORD_SECTION}: keys listed twice: {duplicates}"


def test_a_masked_record_has_the_same_keys() -> None:
    """Masking changes values, never the shape: the one table serves both."""
    masker = Masker(("subject.id", "subject.email", "context.ip"), b"test-key")
    masked = acme_record(masker)
    assert sorted(masked) == sorted(acme_record())
    assert masked["masked"] == ["subject.id", "subject.email", "context.ip"]


def test_an_added_record_key_is_caught() -> None:
    """Self-check: a record with one more top-level key no longer matches the table."""
    keys = sorted(acme_record()) + ["brand_new_key"]
    missing, extra, _ = record_mismatch(load_doc(), keys)
    assert "brand_new_key" in missing and "brand_new_key" not in extra


def test_a_removed_record_key_is_caught() -> None:
    keys = [k for k in acme_record() if k != "token_ttl_seconds"]
    _, extra, _ = record_mismatch(load_doc(), keys)
    assert "token_ttl_seconds" in extra


def test_a_key_missing_from_the_table_is_caught() -> None:
    doc = "\n".join(line for line in load_doc().splitlines() if not line.startswith("| `inputs` |"))
    missing, _, _ = record_mismatch(doc, sorted(acme_record()))
    assert "inputs" in missing


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
