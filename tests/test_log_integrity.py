"""Security review findings on the shared decision-log database (defect 4 and two related ones).

The attacker here can write the database file (sqlite3 on the host, a restored backup) but holds
none of the bridge's secrets: not the HMAC secrets, not the activation key, not the witness's
private key. Each test does what such an attacker does, by direct SQL, and checks that
``verify`` names it and that a worker does not act on it:

* a forged activation (a stored policy plus an ``activations`` row) is not followed by another
  worker, which keeps its policy, logs an ERROR and shows it in its metrics; ``verify`` names it;
* a rewritten ``activated_by`` and deleted activation history fail ``verify``;
* a wipe disguised as a prune (every decision deleted, ``meta.pruned_*`` set) fails ``verify``
  with a signed witness, because a real prune signs its boundary;
* one signed request sent to two bridge processes sharing the log is answered once: the second
  fails at append (``replayed_signature``) and is never recorded.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from conftest import ACME, ACME_SERVICE_ENV, NOW, service_settings
from keycloak_policy_bridge.bridge import Bridge, bridge_from_settings
from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.decision_log import ActivationKeys, SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.errors import AuthenticationError, ChainError

SECRET = bytes(range(32))
ORIGINAL = json.loads((ACME / "policy.json").read_text())
# What the attacker wants: bob's uncertified crm:admin granted (the acme policy requires
# certification within 90 days for high privilege; bob's was 180 days ago).
FORGED = json.loads(json.dumps(ORIGINAL).replace('"max_age_days": 90', '"max_age_days": 365'))
FORGED["version"] = ORIGINAL["version"] + "-forged"
BOB = json.loads((ACME / "requests" / "bob-login.json").read_text())
# An attacker dates the forgery after the policy file, so that a restarting worker prefers it.
FORGED_AT = "2099-01-01T00:00:00.000000Z"
NEW_VERSION = {**ORIGINAL, "version": ORIGINAL["version"] + "-admin"}


def workers(tmp_path: Path, **changes: Any) -> tuple[Bridge, Bridge]:
    """Two bridges on one log file, as two gunicorn workers are; HMAC secrets configured."""
    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),), **changes)
    return bridge_from_settings(settings, lambda: NOW), bridge_from_settings(settings, lambda: NOW)


def log_of(bridge: Bridge) -> SQLiteDecisionLog:
    assert isinstance(bridge.log, SQLiteDecisionLog)
    return bridge.log


def keys_of(bridge: Bridge) -> ActivationKeys | None:
    assert isinstance(bridge.policies, SQLitePolicyStore)
    return bridge.policies.activation_keys


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def forge_activation(path: Path, document: dict[str, Any], by: str = "ada (ad-1)", sophisticated: bool = False) -> int:
    """Store ``document`` and append an activation of it, as an attacker with the file would.

    The sophisticated attacker also fills every integrity column the way the bridge would,
    except for what needs a key: the public hash chain is recomputed and a MAC is copied from
    the previous activation. Returns the forged activation's seq.
    """
    with raw(path) as conn:
        conn.execute("INSERT OR IGNORE INTO policies VALUES (?, ?)", (digest(document), canonical_json(document)))
        conn.execute(
            "INSERT INTO activations (digest, version, activated_by, activated_at) VALUES (?, ?, ?, ?)",
            (digest(document), document["version"], by, FORGED_AT),
        )
        seq = int(conn.execute("SELECT MAX(seq) FROM activations").fetchone()[0])
        if sophisticated:
            from keycloak_policy_bridge.decision_log.activations import activation_hash as _activation_hash

            prev_hash, key_id, mac = conn.execute("SELECT hash, key_id, mac FROM activations WHERE seq = ?", (seq - 1,)).fetchone()
            h = _activation_hash(prev_hash, seq, digest(document), document["version"], by, FORGED_AT)
            conn.execute(
                "UPDATE activations SET prev_hash = ?, hash = ?, key_id = ?, mac = ? WHERE seq = ?", (prev_hash, h, key_id, mac, seq)
            )
    return seq


def has_admin(bridge: Bridge) -> bool:
    return "crm:admin" in json.dumps(bridge.decide(BOB, NOW)["claims"])


# -- defect 4: forged, rewritten and deleted activations -----------------------------------------


def test_the_forged_policy_would_grant_bob_crm_admin(tmp_path: Path) -> None:
    """Guard: the forgery matters (bob gets crm:admin under it) and a real activation is followed."""
    first, second = workers(tmp_path)
    assert not has_admin(second)
    first.activate(FORGED, by="ada (ad-1)", at=NOW)
    assert second.sync_policy(NOW) and has_admin(second)


@pytest.mark.parametrize("sophisticated", [False, True], ids=["naive", "chain-recomputed"])
def test_a_forged_activation_is_not_followed_and_verify_names_it(
    tmp_path: Path, sophisticated: bool, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = workers(tmp_path)
    before = second.policy.digest if second.policy else None
    seq = forge_activation(log_of(first).path, FORGED, sophisticated=sophisticated)
    with caplog.at_level(logging.ERROR, logger="kpb.bridge"):
        assert second.sync_policy(NOW) is False
    assert second.policy is not None and second.policy.digest == before and not has_admin(second)
    assert any(r.levelno == logging.ERROR and f"activation seq {seq}" in r.getMessage() for r in caplog.records), caplog.text
    refusal = second.activation_refusal
    assert refusal is not None and refusal.seq == seq
    with pytest.raises(ChainError, match=f"activation seq {seq}"):
        log_of(first).verify(activation_keys=keys_of(first))
    # A genuine activation afterwards is followed again, and the refusal clears.
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    assert second.sync_policy(NOW) and second.policy is not None and second.policy.version == NEW_VERSION["version"]
    assert second.activation_refusal is None


def test_a_forged_activation_shows_in_the_metrics(tmp_path: Path) -> None:
    from keycloak_policy_bridge.api import create_app

    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),))
    bridge = bridge_from_settings(settings, lambda: NOW)
    app = create_app(bridge, settings, clock=lambda: NOW)
    forge_activation(log_of(bridge).path, FORGED)
    bridge.sync_policy(NOW)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert "kpb_policy_activation_refused 1.0" in text
    assert "kpb_policy_activation_refusals_total 1.0" in text


def test_a_worker_starting_on_a_forged_activation_does_not_install_it(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    forge_activation(log_of(first).path, FORGED)
    settings = service_settings(tmp_path, insecure_dev=False, hmac_secrets=(("k1", SECRET),))
    late = bridge_from_settings(settings, lambda: NOW + timedelta(hours=1))
    assert late.policy is not None and late.policy.digest != digest(FORGED) and not has_admin(late)


def test_a_rewritten_activated_by_fails_verify(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    log_of(first).verify(activation_keys=keys_of(first))
    with raw(log_of(first).path) as conn:
        seq = conn.execute("SELECT MAX(seq) FROM activations").fetchone()[0]
        conn.execute("UPDATE activations SET activated_by = 'mallory (m-1)' WHERE seq = ?", (seq,))
    with pytest.raises(ChainError, match=f"activation seq {seq}"):
        log_of(first).verify(activation_keys=keys_of(first))


def test_a_rewritten_activated_by_with_a_recomputed_chain_needs_the_key(tmp_path: Path) -> None:
    """The public hash chain alone can be recomputed; the MAC cannot."""
    from keycloak_policy_bridge.decision_log.activations import activation_hash as _activation_hash

    first, _ = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    with raw(log_of(first).path) as conn:
        seq, d, v, at, prev = conn.execute(
            "SELECT seq, digest, version, activated_at, prev_hash FROM activations ORDER BY seq DESC"
        ).fetchone()
        conn.execute(
            "UPDATE activations SET activated_by = 'mallory (m-1)', hash = ? WHERE seq = ?",
            (_activation_hash(prev, seq, d, v, "mallory (m-1)", at), seq),
        )
    SQLiteDecisionLog(log_of(first).path, readonly=True).verify()  # without the key: the chain holds
    with pytest.raises(ChainError, match=f"activation seq {seq}.*MAC"):
        log_of(first).verify(activation_keys=keys_of(first))


def test_deleted_activation_history_fails_verify(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    for n in range(3):
        first.activate({**ORIGINAL, "version": f"v{n}"}, by="ada (ad-1)", at=NOW)
    with raw(log_of(first).path) as conn:
        conn.execute("DELETE FROM activations WHERE seq < (SELECT MAX(seq) FROM activations)")
    with pytest.raises(ChainError, match="activation seq 4"):
        log_of(first).verify(activation_keys=keys_of(first))


def test_deleting_every_activation_is_caught_by_a_checkpoint(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    first.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log_of(first).checkpoint(NOW, key, "witness-1")
    with raw(log_of(first).path) as conn:
        conn.execute("DELETE FROM activations")
    with pytest.raises(ChainError, match="activation"):
        log_of(first).verify([checkpoint], key.public_key(), activation_keys=keys_of(first))


def test_a_worker_refuses_to_go_back_when_the_latest_activation_is_deleted(tmp_path: Path) -> None:
    first, second = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    assert second.sync_policy(NOW)
    with raw(log_of(first).path) as conn:
        conn.execute("DELETE FROM activations WHERE seq = (SELECT MAX(seq) FROM activations)")
    assert second.sync_policy(NOW) is False
    assert second.policy is not None and second.policy.version == NEW_VERSION["version"]
    assert second.activation_refusal is not None


def test_an_untouched_service_log_verifies_with_its_activations(tmp_path: Path) -> None:
    first, second = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    second.sync_policy(NOW)
    second.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log_of(first).checkpoint(NOW, key, "witness-1")
    report = SQLiteDecisionLog(log_of(first).path, readonly=True).verify([checkpoint], key.public_key(), activation_keys=keys_of(first))
    assert report.records == 1 and report.activations == 2 and report.checkpoints_checked == 1


def test_a_dedicated_activation_key_is_used_and_the_hmac_secret_does_not_verify(tmp_path: Path) -> None:
    from keycloak_policy_bridge.decision_log import derived_activation_keys

    first, _ = workers(tmp_path, activation_keys=(("a1", bytes(range(100, 132))),))
    keys = keys_of(first)
    assert keys is not None and keys.keys[0][0] == "a1"
    log_of(first).verify(activation_keys=keys_of(first))
    with pytest.raises(ChainError, match="activation seq 1"):
        log_of(first).verify(activation_keys=derived_activation_keys((("k1", SECRET),)))


def test_a_log_from_before_sealed_activations_is_migrated(tmp_path: Path) -> None:
    """An existing database opens: its activations table gains the integrity columns; its
    unsealed rows are reported, never followed, and new activations are sealed after them."""
    path = tmp_path / "var" / "decisions.db"
    path.parent.mkdir()
    with raw(path) as conn:
        conn.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE decisions (seq INTEGER PRIMARY KEY, decision_id TEXT NOT NULL UNIQUE, evaluated_at TEXT NOT NULL,
                subject_id TEXT, keycloak_user_id TEXT, client_id TEXT, effect TEXT NOT NULL, rules TEXT NOT NULL,
                policy_digest TEXT NOT NULL, token_expires_at TEXT, body BLOB NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
            CREATE TABLE policies (digest TEXT PRIMARY KEY, document BLOB NOT NULL);
            CREATE TABLE activations (seq INTEGER PRIMARY KEY, digest TEXT NOT NULL, version TEXT NOT NULL,
                activated_by TEXT NOT NULL, activated_at TEXT NOT NULL);
            CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, head_hash TEXT NOT NULL,
                created_at TEXT NOT NULL, key_id TEXT, signature TEXT);
            INSERT INTO meta VALUES ('log_id', 'legacy0000000000000000000000000');
        """)
    forge_activation(path, FORGED)  # an unsealed row: legacy, or planted before the upgrade
    first, second = workers(tmp_path)
    assert first.policy is not None and first.policy.digest == digest(ORIGINAL)  # the file, not the unsealed row
    report = SQLiteDecisionLog(path, readonly=True).verify(activation_keys=keys_of(first))
    assert report.activations == 1 and report.unsealed_activations == 1
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    assert second.sync_policy(NOW) and second.policy is not None and second.policy.version == NEW_VERSION["version"]


# -- a wipe disguised as a prune ---------------------------------------------------------------


def test_a_wipe_disguised_as_a_prune_fails_verify_with_a_signed_witness(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    for _ in range(5):
        first.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    witness = [log_of(first).checkpoint(NOW, key, "witness-1")]
    with raw(log_of(first).path) as conn:
        last, head = conn.execute("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM decisions")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_through_seq', ?)", (str(last),))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_head_hash', ?)", (head,))
    with pytest.raises(ChainError, match=f"prune boundary at seq {last}"):
        log_of(first).verify(witness, key.public_key())


def test_a_real_prune_signs_its_boundary_and_verifies(tmp_path: Path) -> None:
    first, _ = workers(tmp_path)
    for _ in range(5):
        first.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    witness = [log_of(first).checkpoint(NOW, key, "witness-1")]
    assert log_of(first).prune(NOW + timedelta(seconds=1), NOW, private_key=key, key_id="witness-1") == 5
    boundary = log_of(first).prune_boundary()
    assert boundary is not None and boundary.kind == "prune" and boundary.seq == 5
    assert log_of(first).verify(witness + [boundary], key.public_key()).records == 0
    # A boundary moved by hand no longer matches its signed statement.
    with raw(log_of(first).path) as conn:
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'pruned_through_seq'")
    with pytest.raises(ChainError, match="prune boundary"):
        log_of(first).verify(witness, key.public_key())


def test_an_ordinary_checkpoint_does_not_authorize_a_prune(tmp_path: Path) -> None:
    """A signed checkpoint says 'the head was H'; only a prune statement says 'delete through here'."""
    first, _ = workers(tmp_path)
    for _ in range(3):
        first.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    checkpoint = log_of(first).checkpoint(NOW, key, "witness-1")
    with raw(log_of(first).path) as conn:
        conn.execute("DELETE FROM decisions")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_through_seq', ?)", (str(checkpoint.seq),))
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('pruned_head_hash', ?)", (checkpoint.head_hash,))
    with pytest.raises(ChainError, match="prune boundary"):
        log_of(first).verify([checkpoint], key.public_key())


# -- cross-process replay ----------------------------------------------------------------------


def test_a_nonce_is_accepted_once_across_processes(tmp_path: Path) -> None:
    """Two log instances (two worker processes) appending the same signed request's nonce."""
    from keycloak_policy_bridge.decision_log import Nonce

    first, second = workers(tmp_path)
    nonce = Nonce(bytes(32), expires_at=2_000_000_300, now=2_000_000_000)
    first.decide(BOB, NOW, nonce=nonce)
    with pytest.raises(AuthenticationError) as err:
        second.decide(BOB, NOW, nonce=nonce)
    assert err.value.reason == "replayed_signature"
    assert first.log.count() == 1  # the replay was never recorded
    second.decide(BOB, NOW, nonce=Nonce(bytes(31) + b"\x01", expires_at=2_000_000_300, now=2_000_000_000))
    assert first.log.count() == 2


def test_expired_nonces_are_forgotten(tmp_path: Path) -> None:
    from keycloak_policy_bridge.decision_log import Nonce

    first, _ = workers(tmp_path)
    first.decide(BOB, NOW, nonce=Nonce(b"\x01" * 32, expires_at=1_000, now=900))
    first.decide(BOB, NOW, nonce=Nonce(b"\x02" * 32, expires_at=100_000, now=99_000))  # purges what expired long before
    with raw(log_of(first).path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM nonces").fetchone()[0] == 1


# -- the commands ------------------------------------------------------------------------------


def test_the_verify_and_prune_commands(tmp_path: Path) -> None:
    """`kpb decisions verify` checks activation MACs with the service's key from the environment;
    `kpb decisions prune --key` signs its boundary; a faked boundary fails `verify --public-key`."""
    from click.testing import CliRunner
    from cryptography.hazmat.primitives import serialization

    from keycloak_policy_bridge.cli import main

    first, _ = workers(tmp_path)
    first.activate(NEW_VERSION, by="ada (ad-1)", at=NOW)
    for _ in range(3):
        first.decide(BOB, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "w.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "w.pub.pem").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    log, env = str(log_of(first).path), {"KPB_HMAC_SECRETS": f"k1={SECRET.hex()}", "KPB_ACTIVATION_KEYS": ""}
    runner = CliRunner()
    ok = runner.invoke(main, ["decisions", "verify", "--log", log], env=env)
    assert ok.exit_code == 0 and "2 activation(s) sealed, MACs checked" in ok.output, ok.output
    copy = tmp_path / "copy.db"
    with raw(log_of(first).path) as conn:
        conn.execute(f"VACUUM INTO '{copy}'")
    seq = forge_activation(copy, FORGED, sophisticated=True)
    bad = runner.invoke(main, ["decisions", "verify", "--log", str(copy)], env=env)
    assert bad.exit_code == 1 and f"TAMPERED: activation seq {seq}" in bad.output, bad.output

    pruned = runner.invoke(
        main, ["decisions", "prune", "--log", log, "--before", "2026-11-28T09:00:00Z", "--key", str(tmp_path / "w.pem")], env=env
    )
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout.splitlines()[-1])["kind"] == "prune"
    signed = runner.invoke(main, ["decisions", "verify", "--log", log, "--public-key", str(tmp_path / "w.pub.pem")], env=env)
    assert signed.exit_code == 0 and "prune boundary signed" in signed.output, signed.output
    with raw(log_of(first).path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'pruned_checkpoint'")
    wiped = runner.invoke(main, ["decisions", "verify", "--log", log, "--public-key", str(tmp_path / "w.pub.pem")], env=env)
    assert wiped.exit_code == 1 and "TAMPERED: prune boundary at seq 3" in wiped.output, wiped.output


def test_activation_keys_are_read_from_the_environment_and_never_shown() -> None:
    from keycloak_policy_bridge.config import Settings
    from keycloak_policy_bridge.errors import ConfigError

    env = {**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={SECRET.hex()}", "KPB_ACTIVATION_KEYS": f"a2={'cd' * 32},a1={'ab' * 32}"}
    assert [k for k, _ in Settings.from_env(env).activation_keys] == ["a2", "a1"]
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**env, "KPB_ACTIVATION_KEYS": f"a1={'ab' * 16}"})
    assert "KPB_ACTIVATION_KEYS" in str(err.value) and "ab" * 16 not in str(err.value)
