"""Old logs keep working: a ``kpb-decision/1`` log written by the previous code, read by today's.

``tests/fixtures/decision-log-v1/`` holds a log written by commit 81ff11d (the last code that
wrote ``/1`` records: plain decisions, decisions with masked join keys and request paths, decisions
under a second activated policy, a signed checkpoint) and, in ``expected/``, exactly what that
code printed for it (``produce.py`` has the commands and the environment). Each command is run
here on a copy of the log, in process, and its exit code and standard output must be the ones
recorded, byte for byte: list (text and JSON), show, export, verify, explain, replay of a
candidate, replay against current entitlements, reproduction, drift.

The one output that legitimately changes is named and justified where it is tested
(``test_explain_without_the_masking_key_no_longer_guesses``). Then ``/2`` decisions are appended
to the copy through the service's own path (``Bridge``), and the mixed log must still list,
verify, replay, reproduce and drift, the ``/1`` part exactly as before.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import ACME
from keycloak_policy_bridge.bridge import Bridge
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.decision_log import ActivationKeys, Query, SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.record import RECORD_SCHEMA, RECORD_SCHEMA_V1, Masker
from keycloak_policy_bridge.snapshot_store import SnapshotStore

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "decision-log-v1"
EXPECTED = FIXTURE / "expected"
# As produce.py: the keys the fixture was written with, and the environment its outputs were printed in.
T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
ACTIVATION_KEY = b"decision-log-v1 fixture activation key"
MASK_KEY = b"decision-log-v1 fixture mask key"
ENV = {"KPB_MASK_KEY": MASK_KEY.decode(), "KPB_ACTIVATION_KEYS": "fixture=" + ACTIVATION_KEY.hex(), "KPB_HMAC_SECRETS": None}
LATER = "2026-11-28T08:07:00Z"  # produce.py's --now for explain and drift
CURRENT = (
    "--policy",
    str(ACME / "candidate-policy.json"),
    "--entitlements",
    str(ACME / "entitlements"),
    "--feed",
    str(ACME / "feeds" / "risk"),
)
DECISION_IDS = sorted(p.name.removeprefix("explain-").removesuffix(".json") for p in EXPECTED.glob("explain-*.json"))
MASKED_UNJOINED = "01M8GJT100000000000000000K"  # erin, in no export, her e-mail and username masked


@dataclass(frozen=True)
class Output:
    exit: int
    stdout: str


def expected(name: str) -> Output:
    document = json.loads((EXPECTED / name).read_text(encoding="utf-8"))
    return Output(document["exit"], document["stdout"])


def kpb(*args: str, env: dict[str, str | None] | None = None) -> Output:
    result = CliRunner().invoke(main, list(args), env={**ENV, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Output(result.exit_code, result.stdout)


def commands(db: str) -> dict[str, tuple[str, ...]]:
    """produce.py's commands, by the name of their expected output."""
    found: dict[str, tuple[str, ...]] = {
        "list.ndjson": ("decisions", "list", "--log", db, "--limit", "100", "--json"),
        "list.txt": ("decisions", "list", "--log", db, "--limit", "100"),
        "export.ndjson": ("decisions", "export", "--log", db),
        "verify.txt": (
            "decisions",
            "verify",
            "--log",
            db,
            "--checkpoints",
            str(Path(db).parent / "checkpoints.jsonl"),
            "--public-key",
            str(Path(db).parent / "witness-public.pem"),
        ),
        "replay-candidate.json": ("replay", "--log", db, "--policy", str(ACME / "candidate-policy.json"), "--json"),
        "replay-current.json": (
            "replay",
            "--log",
            db,
            "--policy",
            str(ACME / "candidate-policy.json"),
            "--entitlements",
            str(ACME / "entitlements"),
            "--json",
        ),
        "reproduce.json": ("replay", "--log", db, "--recorded", "--json"),
        "drift.json": ("drift", "--log", db, *CURRENT, "--now", LATER, "--json"),
    }
    for decision_id in DECISION_IDS:
        found[f"explain-{decision_id}.json"] = ("explain", decision_id, "--log", db, *CURRENT, "--now", LATER, "--json")
        found[f"show-{decision_id}.json"] = ("decisions", "show", decision_id, "--log", db)
    return found


def copy_fixture(target: Path) -> str:
    target.mkdir()
    for name in ("decisions.db", "checkpoints.jsonl", "witness-public.pem"):
        shutil.copy(FIXTURE / name, target / name)
    return str(target / "decisions.db")


@pytest.fixture(scope="module")
def v1_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the /1 log (commands open it read-only; a copy keeps the fixture pristine)."""
    return copy_fixture(tmp_path_factory.mktemp("v1") / "log")


# -- the /1 log: every output exactly as the code that wrote it printed it -----------------------


def test_the_fixture_is_a_v1_log_with_every_output() -> None:
    log = SQLiteDecisionLog(FIXTURE / "decisions.db", readonly=True)
    records = list(log.iterate(Query(limit=None)))
    assert len(records) == len(DECISION_IDS) == 24
    assert all(getattr(r, "schema", None) == RECORD_SCHEMA_V1 for r in records)
    assert {p.name for p in EXPECTED.iterdir()} == set(commands("db"))


@pytest.mark.parametrize("name", sorted(commands("db")))
def test_every_command_prints_what_the_v1_code_printed(v1_log: str, name: str) -> None:
    # Explain now joins masked subjects with the masking key (KPB_MASK_KEY, as produce.py set it)
    # where it used to substitute the recorded subject's current keys: on this log both give the
    # same current decisions, so explain's output is unchanged too.
    assert kpb(*commands(v1_log)[name]) == expected(name)


def test_explain_without_the_masking_key_no_longer_guesses(v1_log: str) -> None:
    """The one output that changes, and why.

    Erin's request (``MASKED_UNJOINED``) was recorded with her e-mail and username masked, and she
    joined no identity. The v1 explain dropped masked join keys it could not substitute and
    re-evaluated what was left, reporting "deny-unknown-principal" now: a guess, since with her
    clear e-mail she might join an identity today. Explain now undoes masking the one way replay
    does (``JoinKeyClearer``): without the key, the current decision is unknown, so it says so
    (``unresolvable``, no ``current``, no note about re-evaluated hashes) and still explains the
    recorded decision exactly as before. With the key (the test above) the output is unchanged.
    """
    name = f"explain-{MASKED_UNJOINED}.json"
    before = json.loads(expected(name).stdout)["explanation"]
    out = kpb(*commands(v1_log)[name], env={"KPB_MASK_KEY": None})
    assert out.exit == 0
    now = json.loads(out.stdout)["explanation"]
    assert before["current"]["reasons"][0]["rule"] == "deny-unknown-principal"
    assert now["current"] is None and now["notes"] == []
    assert now["unresolvable"] == (
        "the subject does not join the snapshot by its clear keys, and its masked subject.email, subject.username "
        "cannot be matched without the masking key"
    )
    unchanged = {k: v for k, v in before.items() if k not in ("current", "notes")}
    assert {k: v for k, v in now.items() if k not in ("current", "notes", "unresolvable")} == unchanged
    text = kpb(*commands(v1_log)[name][:-1], env={"KPB_MASK_KEY": None}).stdout  # without --json
    assert "now: UNRESOLVABLE: the subject does not join" in text
    assert "(the masking key is read from the environment variable KPB_MASK_KEY)" in text
    # Every other record reads as before without the key: its subject joined by a clear key.
    for decision_id in DECISION_IDS:
        if decision_id != MASKED_UNJOINED:
            other = f"explain-{decision_id}.json"
            assert kpb(*commands(v1_log)[other], env={"KPB_MASK_KEY": None}) == expected(other), decision_id


def test_show_prints_the_stored_v1_document(v1_log: str) -> None:
    """``show`` is the stored document (a /1 record exactly as written), not the model re-rendered."""
    stored = json.loads(expected(f"show-{DECISION_IDS[0]}.json").stdout)
    assert stored["schema"] == RECORD_SCHEMA_V1 and "inputs" in stored and "result" in stored


# -- /2 decisions appended to the /1 log ---------------------------------------------------------


@dataclass(frozen=True)
class MixedLog:
    db: str
    v2_ids: tuple[str, ...]  # newest last
    masked_ids: tuple[str, ...]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> MixedLog:
    """The /1 log with /2 decisions appended by the service's path: the acme requests again, under
    the activation the log already holds (the candidate policy), plain and masked."""
    db = copy_fixture(tmp_path_factory.mktemp("mixed") / "log")
    counter = iter(range(1000, 10_000))
    store = SnapshotStore(ACME / "entitlements", feeds={"risk": ACME / "feeds" / "risk"}, clock=lambda: T0)
    store.reload_all()
    log = SQLiteDecisionLog(Path(db), default_token_ttl=timedelta(seconds=300))
    policies = SQLitePolicyStore(Path(db), activation_keys=ActivationKeys((("fixture", ACTIVATION_KEY),)))
    requests = [json.loads(p.read_text()) for p in sorted((ACME / "requests").glob("*.json"))]
    ids: list[str] = []
    masked: list[str] = []
    try:
        for masker, start, into in ((None, 10, ids), (Masker(("subject.email", "subject.username", "context.ip"), MASK_KEY), 12, masked)):
            bridge = Bridge(store, log, policies, entropy=lambda n: next(counter).to_bytes(n, "big"), masker=masker, token_ttl_seconds=300)
            assert bridge.sync_policy(T0 + timedelta(minutes=start))  # follows the log's sealed activation
            for i, request in enumerate(requests):
                into.append(bridge.decide(request, T0 + timedelta(minutes=start, seconds=i))["decision_id"])
    finally:
        log.close()
        policies.close()
    return MixedLog(db, tuple(ids + masked), tuple(masked))


def v1_lines(name: str) -> list[str]:
    return expected(name).stdout.splitlines()


def test_mixed_log_records_are_v2_after_v1(mixed: MixedLog) -> None:
    log = SQLiteDecisionLog(Path(mixed.db), readonly=True)
    schemas = [getattr(r, "schema", None) for r in log.iterate(Query(limit=None))]
    assert schemas == [RECORD_SCHEMA_V1] * 24 + [RECORD_SCHEMA] * len(mixed.v2_ids)


def test_mixed_log_lists(mixed: MixedLog) -> None:
    text = kpb("decisions", "list", "--log", mixed.db, "--limit", "100")
    header, *old = v1_lines("list.txt")
    lines = text.stdout.splitlines()
    assert text.exit == 0 and lines[0] == header
    assert lines[1 + len(mixed.v2_ids) :] == old  # the /1 part exactly as before
    assert [line.split()[0] for line in lines[1 : 1 + len(mixed.v2_ids)]] == list(reversed(mixed.v2_ids))
    as_json = kpb("decisions", "list", "--log", mixed.db, "--limit", "100", "--json")
    documents = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.stdout.splitlines()[len(mixed.v2_ids) :] == v1_lines("list.ndjson")
    for document in documents[: len(mixed.v2_ids)]:
        assert document["schema"] == RECORD_SCHEMA
        assert set(document["identities"]) <= set(document.get("inputs", {}))  # referenced inputs shown with it
    assert any(document.get("inputs") for document in documents[: len(mixed.v2_ids)])
    export = kpb("decisions", "export", "--log", mixed.db).stdout.splitlines()
    assert export[:24] == v1_lines("export.ndjson")
    assert [json.loads(line)["decision_id"] for line in export[24:]] == list(mixed.v2_ids)


def test_mixed_log_verifies(mixed: MixedLog) -> None:
    out = kpb(*commands(mixed.db)["verify.txt"])
    total = 24 + len(mixed.v2_ids)
    # The chain continues across the format change; the old checkpoint still matches its prefix.
    pattern = (
        rf"OK: {total} records \(seq 1\.\.{total}\), head [0-9a-f]{{64}}, 1 checkpoint\(s\) matched, "
        r"2 activation\(s\) sealed, MACs checked \(KPB_ACTIVATION_KEYS\)"
    )
    assert out.exit == 0 and re.fullmatch(pattern, out.stdout.strip()), out.stdout


def test_mixed_log_reproduces_exactly(mixed: MixedLog) -> None:
    report = json.loads(kpb(*commands(mixed.db)["reproduce.json"]).stdout)
    total = 24 + len(mixed.v2_ids)
    assert (report["replayed"], report["unchanged"], report["changed"], report["errors"]) == (total, total, 0, 0)
    no_key = kpb(*commands(mixed.db)["reproduce.json"], env={"KPB_MASK_KEY": None})
    assert no_key.exit == 0  # recorded inputs need no masking key, in either format


@pytest.mark.parametrize("name", ["replay-candidate.json", "replay-current.json"])
def test_mixed_log_replays(mixed: MixedLog, name: str) -> None:
    """The /2 decisions were made under the candidate policy: replaying them under it changes
    nothing, so the report is the /1 report with more unchanged decisions."""
    out = kpb(*commands(mixed.db)[name])
    before: dict[str, Any] = json.loads(expected(name).stdout)
    report: dict[str, Any] = json.loads(out.stdout)
    assert out.exit == expected(name).exit
    assert report["replayed"] == before["replayed"] + len(mixed.v2_ids)
    assert report["unchanged"] == before["unchanged"] + len(mixed.v2_ids)
    for key in ("changed", "errors", "by_rule", "by_claim", "changed_decisions", "failed_decisions", "policy", "entitlements"):
        assert report[key] == before[key], key


def test_mixed_log_drifts(mixed: MixedLog) -> None:
    # At the fixture's instant the /2 decisions (made later) are not live yet: the same report.
    assert kpb(*commands(mixed.db)["drift.json"]) == expected("drift.json")
    later = T0 + timedelta(minutes=13)
    report = json.loads(kpb("drift", "--log", mixed.db, *CURRENT, "--now", later.strftime("%Y-%m-%dT%H:%M:%SZ"), "--json").stdout)
    assert report["checked"] > 0 and report["unresolvable"] == [] and report["errors"] == []
    assert report["subjects"] == []  # decided under the candidate policy and this snapshot: nothing drifted


def test_a_masked_v2_decision_is_explained_with_and_without_the_key(mixed: MixedLog) -> None:
    for decision_id in mixed.masked_ids:
        args = ("explain", decision_id, "--log", mixed.db, *CURRENT, "--now", LATER, "--json")
        with_key = json.loads(kpb(*args).stdout)["explanation"]
        assert "unresolvable" not in with_key and with_key["current"] is not None
        without = json.loads(kpb(*args, env={"KPB_MASK_KEY": None}).stdout)["explanation"]
        # Only a subject that joined no identity by a clear key is unknown without the key.
        assert ("unresolvable" in without) == (with_key["principals"][0]["subject_id"] is None)
        assert recorded_part(without) == recorded_part(with_key)


def recorded_part(explanation: dict[str, Any]) -> dict[str, Any]:
    """An explanation without its judgement of the present (current, notes, still granted)."""
    out = {k: v for k, v in explanation.items() if k not in ("current", "notes", "unresolvable", "values")}
    out["values"] = [{k: v for k, v in value.items() if k not in ("still_granted", "now_reasons")} for value in explanation["values"]]
    return out
