"""The commands that read a log, on PostgreSQL (issue 15): ``KPB_DATABASE_URL`` and no ``--log``
selects the database, as for ``kpb serve``; an explicit ``--log FILE`` still means SQLite; a URL's
password never appears in any output or error. Against a real PostgreSQL server
(``conftest.postgres_server``); the commands run in process (``CliRunner``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import ACME
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
from keycloak_policy_bridge.decision_log.postgres_schema import describe
from test_decision_log_contract import KEYS, RECORDS

POLICY = ACME / "policy.json"
SNAPSHOT = ACME / "entitlements"
PASSWORD = "Sup3r-s3cret-pw"
KEYS_ENV = {"KPB_ACTIVATION_KEYS": f"k1={bytes(range(32)).hex()}", "KPB_HMAC_SECRETS": ""}


def with_password(url: str) -> str:
    """``url`` with a password (the test server trusts loopback: it is not checked, but it is in the URL)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A database holding the contract records, the acme policy and its activation; its URL with a password."""
    url = with_password(postgres_url)
    log, store = PostgresDecisionLog(url), PostgresPolicyStore(url, activation_keys=KEYS)
    store.record_activation(store.store_policy(json.loads(POLICY.read_text())), "v1", "ada (ad-1)", RECORDS[0].evaluated_at)
    for record in RECORDS:
        log.append(record)
    log.close()
    store.close()
    yield url


def run(*args: str, env: dict[str, str | None]) -> Result:
    result = CliRunner().invoke(main, list(args), env={"KPB_DATABASE_URL": None, "KPB_DECISION_LOG": None, **KEYS_ENV, **env})
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr, result.output
    return result


def key_files(tmp_path: Path) -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private, public = tmp_path / "w.pem", tmp_path / "w.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return str(private), str(public)


def test_decisions_commands_read_the_database_named_by_kpb_database_url(pg_url: str, tmp_path: Path) -> None:
    env: dict[str, str | None] = {"KPB_DATABASE_URL": pg_url}
    listed = run("decisions", "list", "--json", "--limit", "100", env=env)
    assert listed.exit_code == 0, listed.output
    assert {json.loads(line)["decision_id"] for line in listed.stdout.splitlines()} == {r.decision_id for r in RECORDS}
    shown = run("decisions", "show", RECORDS[2].decision_id, env=env)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["decision_id"] == RECORDS[2].decision_id

    verified = run("decisions", "verify", env=env)
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith(f"OK: {len(RECORDS)} records (seq 1..{len(RECORDS)}), head ")
    assert "1 activation(s) sealed, MACs checked (KPB_ACTIVATION_KEYS)" in verified.stdout

    private, public = key_files(tmp_path)
    checkpointed = run("decisions", "checkpoint", "--key", private, "--key-id", "w1", env=env)
    assert checkpointed.exit_code == 0, checkpointed.output
    checkpoint = json.loads(checkpointed.stdout)
    assert (checkpoint["seq"], checkpoint["count"], checkpoint["key_id"]) == (len(RECORDS), len(RECORDS), "w1")
    (tmp_path / "cp.jsonl").write_text(checkpointed.stdout)

    cut = RECORDS[3].evaluated_at.isoformat()
    pruned = run("decisions", "prune", "--before", cut, "--key", private, "--key-id", "w1", env=env)
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stderr.startswith("pruned 3 decision(s)") and json.loads(pruned.stdout)["kind"] == "prune"
    signed = run("decisions", "verify", "--checkpoints", str(tmp_path / "cp.jsonl"), "--public-key", public, env=env)
    assert signed.exit_code == 0, signed.output
    assert f"OK: {len(RECORDS) - 3} records (seq 4..{len(RECORDS)})" in signed.stdout and "1 checkpoint(s) matched" in signed.stdout
    assert "prune boundary signed" in signed.stdout

    exported = run("decisions", "export", env=env)
    assert exported.exit_code == 0 and len(exported.stdout.splitlines()) == len(RECORDS) - 3


def test_explain_replay_and_drift_read_the_database(pg_url: str) -> None:
    env: dict[str, str | None] = {"KPB_DATABASE_URL": pg_url}
    record = RECORDS[0]
    explained = run("explain", record.decision_id, env=env)
    assert explained.exit_code == 0, explained.output
    assert explained.stdout.startswith(f"decision {record.decision_id}: {record.effect.upper()} at ")

    replayed = run("replay", "--recorded", env=env)
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed {len(RECORDS)}  unchanged {len(RECORDS)}  changed 0  errors 0" in replayed.stdout

    now = RECORDS[-1].evaluated_at.isoformat()
    drifted = run("drift", "--policy", str(POLICY), "--entitlements", str(SNAPSHOT), "--now", now, "--json", env=env)
    assert drifted.exit_code == 0, drifted.output
    report = json.loads(drifted.stdout)
    assert report["checked"] > 0 and report["errors"] == []


def test_an_explicit_log_file_wins_over_kpb_database_url(pg_url: str, tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    log, store = SQLiteDecisionLog(path), SQLitePolicyStore(path, activation_keys=KEYS)
    mine = replace(RECORDS[0], decision_id="01FILEONLY0000000000000000")
    log.append(mine)
    log.close()
    store.close()
    env: dict[str, str | None] = {"KPB_DATABASE_URL": pg_url, "KPB_DECISION_LOG": str(tmp_path / "other.db")}
    from_file = run("decisions", "list", "--log", str(path), "--json", env=env)
    assert from_file.exit_code == 0 and [json.loads(x)["decision_id"] for x in from_file.stdout.splitlines()] == [mine.decision_id]
    verified = run("decisions", "verify", "--log", str(path), env=env)
    assert verified.exit_code == 0 and verified.stdout.startswith("OK: 1 records"), verified.output
    # Without --log, KPB_DATABASE_URL comes before KPB_DECISION_LOG.
    from_db = run("decisions", "list", "--json", "--limit", "100", env=env)
    assert from_db.exit_code == 0 and len(from_db.stdout.splitlines()) == len(RECORDS)
    only_file = run("decisions", "list", "--json", env={"KPB_DECISION_LOG": str(path)})
    assert only_file.exit_code == 0 and mine.decision_id in only_file.stdout


def test_no_log_at_all_is_a_usage_error_naming_both_variables() -> None:
    result = run("decisions", "list", env={})
    assert result.exit_code == 2
    assert "give --log FILE (SQLite), or set KPB_DATABASE_URL (PostgreSQL) or KPB_DECISION_LOG (SQLite)" in result.stderr
    bad = run("decisions", "verify", env={"KPB_DATABASE_URL": f"mysql://root:{PASSWORD}@db/kpb"})
    assert bad.exit_code == 2 and "KPB_DATABASE_URL must be a postgresql:// URL" in bad.stderr


def test_a_database_without_a_log_is_refused_and_not_created(postgres_url: str) -> None:
    import psycopg

    result = run("decisions", "verify", env={"KPB_DATABASE_URL": with_password(postgres_url)})
    assert result.exit_code == 2
    assert f"error [decision_log_unavailable]: {describe(postgres_url)}: no decision log there" in result.stderr
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


UNREACHABLE = f"postgresql://kpb:{PASSWORD}@127.0.0.1:1/kpb"


@pytest.mark.parametrize(
    "args",
    [("decisions", "list"), ("decisions", "checkpoint"), ("explain", "01NOPE"), ("decisions", "migrate", "--from", "{file}")],
    ids=["list", "checkpoint", "explain", "migrate"],
)
def test_an_unreachable_database_is_named_without_its_password(args: tuple[str, ...], tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    SQLiteDecisionLog(path).append(RECORDS[0])
    result = run(*(a.replace("{file}", str(path)) for a in args), env={"KPB_DATABASE_URL": UNREACHABLE})
    assert result.exit_code == 2, result.output
    assert "postgresql://127.0.0.1:1/kpb: cannot open the decision log" in result.stderr, result.stderr


def test_migrate_command_copies_and_prints_both_heads(pg_url: str, postgres_server: object, tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    log = SQLiteDecisionLog(path)
    for record in RECORDS:
        log.append(record)
    log.close()
    import psycopg

    from postgres_server import next_database_name

    name = next_database_name()
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:  # type: ignore[attr-defined]
        conn.execute(f"CREATE DATABASE {name}")
    target = with_password(postgres_server.database_url(name))  # type: ignore[attr-defined]
    try:
        migrate_twice(path, target, pg_url)
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as conn:  # type: ignore[attr-defined]
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def migrate_twice(path: Path, target: str, pg_url: str) -> None:
    done = run("decisions", "migrate", "--from", str(path), env={"KPB_DATABASE_URL": target})
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0] == f"migrated {path} -> {describe(target)} (one transaction, COPY)"
    heads = [line.split()[-2] for line in lines if line.endswith("(source)") or line.endswith("(copy)")]
    assert len(heads) == 2 and heads[0] == heads[1] and len(heads[0]) == 64
    again = run("decisions", "migrate", "--from", str(path), "--to", target, env={})
    assert again.exit_code == 2 and f"{describe(target)}: not an empty database" in again.stderr
    # The database that already held a log (pg_url) is refused too, and the copy verifies on its own.
    refused = run("decisions", "migrate", "--from", str(path), env={"KPB_DATABASE_URL": pg_url})
    assert refused.exit_code == 2 and "not an empty database" in refused.stderr
    verified = run("decisions", "verify", env={"KPB_DATABASE_URL": target})
    assert verified.exit_code == 0 and verified.stdout.startswith(f"OK: {len(RECORDS)} records"), verified.output
