"""End to end: a real Keycloak (26.7.3 from keycloak-quarkus-dist, the acme realm, the mapper jar)
minting tokens through a real bridge (`kpb serve` under gunicorn), driven with python-keycloak.

The stack is started once for the module by scripts/stack.py under var/stack-e2e/ (its own
bridge port, decision log and export; Keycloak from scripts/keycloak.sh). Tests that change
shared state (the export, the active policy, the mapper's failure mode, the bridge process)
put it back in a `finally`. The replica test adds two bridges of its own on a PostgreSQL
database (``conftest.postgres_url``) and points the scope's mapper at them, with the same
Keycloak. Under CI=true a stack that cannot start fails the module; it is never skipped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakError

from conftest import ACME, ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import stack
from acme_oauth import Acme
from keycloak_policy_bridge.decision_log.postgres_reader import PostgresDecisionReader
from keycloak_policy_bridge.record.model import DecisionRecord
from keycloak_policy_bridge.signature import signing_headers

PATHS = stack.Paths(ROOT / "var" / "stack-e2e", bridge_port=8788)  # its own bridge, beside any demo one
BRIDGE_URL = PATHS.bridge_url
JAR = ROOT / "keycloak-spi" / "target" / "kpb-keycloak-mapper.jar"
ALICE, CAROL = "a11ce000-0000-4000-8000-000000000001", "ca201000-0000-4000-8000-000000000003"
RESEARCH_AGENT_SA = "9a7e0000-0000-4000-8000-0000000000cc"
KPB = Path(sys.executable).parent / "kpb"
Row = dict[str, str]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"end-to-end stack unavailable under CI: {reason}")
    pytest.skip(f"end-to-end stack unavailable ({reason}); `make test` builds and fetches everything")


@pytest.fixture(scope="module")
def acme() -> Iterator[Acme]:
    if not JAR.exists():
        _unavailable(f"{JAR.relative_to(ROOT)} is not built")
    if _keycloak_up():
        pytest.fail("a Keycloak is already running on the demo ports: stop it (`make stop`) before the end-to-end tests")
    stack.stage_export(PATHS.export)
    stack.stage_feed(PATHS.risk)
    for stale in PATHS.base.glob("decisions.db*"):  # a fresh log: the WAL files too
        stale.unlink()
    try:
        stack.start_bridge(PATHS)
        stack.keycloak("start", PATHS)
    except (SystemExit, subprocess.CalledProcessError) as exc:
        stack.stop_bridge(PATHS)
        pytest.fail(f"the end-to-end stack did not start: {exc}")
    try:
        yield Acme(stack.KEYCLOAK_URL, BRIDGE_URL)
    finally:
        stack.keycloak("stop", PATHS)
        stack.stop_bridge(PATHS)


def _keycloak_up() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{os.environ.get('KC_MGMT_PORT', '9000')}/health/ready", timeout=2):
            return True
    except OSError:
        return False


def refused(call: Callable[[], Any]) -> KeycloakError:
    """The Keycloak error ``call`` must raise (a refused grant)."""
    with pytest.raises(KeycloakError) as caught:
        call()
    return caught.value


def error_body(exc: KeycloakError) -> dict[str, Any]:
    body = exc.error_message
    parsed: dict[str, Any] = json.loads(body) if isinstance(body, (bytes, str)) else dict(body)
    return parsed


INACTIVE_TEXT = "Your account is not active. Contact the service desk."  # acme's deny-inactive-principal
DELEGATION_TEXT = "This application may not act on your behalf for this request."  # the bridge's kpb:delegation text


def denied_for_user(acme: Acme, exc: KeycloakError, text: str) -> dict[str, Any]:
    """A 403 access_denied whose description is ``text (reference <decision id>)``, nothing else:
    no rule id or reason. Returns the referenced decision from the log (where the reasons are)."""
    body = error_body(exc)
    assert exc.response_code == 403 and body["error"] == "access_denied", body
    description = body["error_description"]
    assert description.startswith(f"{text} (reference ") and description.endswith(")"), description
    decision_id = description[len(f"{text} (reference ") : -1]
    record: dict[str, Any]
    status, record = acme.bridge("GET", f"/v1/decisions/{decision_id}")
    assert status == 200 and record["effect"] == "deny", record
    assert record["result"]["user_message"] == text
    for reason in record["result"]["reasons"]:
        assert reason["rule"] not in description and reason["message"] not in description, (reason, description)
    return record


def restage(acme: Acme, edit: Callable[[list[Row]], list[Row]] | None) -> None:
    """Write a new export (``edit`` applied, or the original) and wait until every bridge worker
    decides with it: each worker's watcher polls the manifest once a second."""
    snapshot_id = stack.stage_export(PATHS.export, edit)
    _settle(
        lambda: {acme.bridge("GET", "/readyz", token="-")[1]["entitlements"]["entitlements"]["snapshot_id"] for _ in range(8)},
        {snapshot_id},
    )


def _settle(sample: Callable[[], set[Any]], expected: set[Any], seconds: float = 20) -> None:
    """Wait until ``sample()`` (answers on new connections) gives ``expected``, then once more after
    three watch intervals: sync workers take turns by whoever accepts first, so a run of answers
    can all come from one worker while the other has not caught up yet."""
    deadline = time.monotonic() + seconds
    while (seen := sample()) != expected:
        assert time.monotonic() < deadline, f"bridge workers on {seen}, expected {expected}"
        time.sleep(0.5)
    time.sleep(3)
    assert (seen := sample()) == expected, f"bridge workers on {seen} after settling, expected {expected}"


def without(subject: str, value: str | None = None) -> Callable[[list[Row]], list[Row]]:
    """Drop ``subject``'s entitlement ``value`` (or all its rows)."""
    return lambda rows: [r for r in rows if not (r["subject_id"] == subject and (value is None or r["entitlement_value"] == value))]


def terminated(subject: str) -> Callable[[list[Row]], list[Row]]:
    return lambda rows: [{**r, "subject_status": "terminated"} if r["subject_id"] == subject else r for r in rows]


# -- logins and grants ---------------------------------------------------------------------------


def test_a_login_gets_the_governed_claims_and_its_decision_is_in_the_log(acme: Acme) -> None:
    claims = acme.claims(acme.login("alice")["access_token"])
    assert sorted(claims["roles"]) == ["crm:read", "crm:write", "finance:approve"]
    assert claims["tenant"] == "acme-eu"
    assert "realm_access" not in claims and "resource_access" not in claims  # withdrawn by remove_claims
    status, record = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}")
    assert status == 200, record
    assert record["request"]["grant_type"] == "password" and record["request"]["subject"]["id"] == ALICE
    assert record["effect"] == "permit" and sorted(record["result"]["claims"]["roles"]) == sorted(claims["roles"])


def test_a_refresh_after_the_export_changes_carries_the_new_entitlements(acme: Acme) -> None:
    tokens = acme.login("alice")
    assert "crm:write" in acme.claims(tokens["access_token"])["roles"]
    restage(acme, without("E1001", "crm:write"))
    try:
        refreshed = acme.claims(acme.refresh(tokens["refresh_token"])["access_token"])
        assert sorted(refreshed["roles"]) == ["crm:read", "finance:approve"]
        status, record = acme.bridge("GET", f"/v1/decisions/{refreshed['authz_decision_id']}")
        assert status == 200 and record["request"]["grant_type"] == "refresh_token"
    finally:
        restage(acme, None)


def test_client_credentials_for_a_service_account(acme: Acme) -> None:
    claims = acme.claims(acme.client_credentials("billing-bot")["access_token"])
    assert sorted(claims["roles"]) == ["billing:invoice.read", "billing:invoice.write"]
    assert claims["exp"] - claims["iat"] <= 300
    status, record = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}")
    assert status == 200 and record["request"]["subject"]["kind_hint"] == "service_account"
    assert record["request"]["subject"]["service_account_client_id"] == "billing-bot"


def test_a_service_account_is_refused_an_interactive_grant(acme: Acme) -> None:
    # Keycloak already refuses: billing-bot has no direct-access grants. The policy refuses too,
    # should a realm ever allow it: the same request, signed like the mapper's, to the real bridge.
    refused(lambda: acme.client("billing-bot").token("service-account-billing-bot", "x", scope="openid"))
    body = (ACME / "requests" / "billing-bot-password.json").read_bytes()
    headers = {
        **signing_headers(bytes.fromhex(stack.hmac_secret(PATHS)), stack.HMAC_KEY_ID, "POST", "/v1/claims", body, int(time.time())),
        "Content-Type": "application/json",
    }
    with urllib.request.urlopen(
        urllib.request.Request(BRIDGE_URL + "/v1/claims", data=body, headers=headers, method="POST"), timeout=10
    ) as r:
        decision = json.load(r)
    assert decision["effect"] == "deny"
    assert "service-accounts-no-interactive-grants" in [reason["rule"] for reason in decision["reasons"]]


def test_userinfo_and_introspection_are_decided_as_their_own_events(acme: Acme) -> None:
    """Keycloak re-runs the mapper for userinfo and for introspection: each is a decision of its
    own (event userinfo / introspection), recomputed now rather than copied from the token."""
    token = acme.login("bob", scope="openid crm")["access_token"]
    minted = acme.claims(token)
    userinfo = acme.client("acme-web").userinfo(token)
    assert sorted(userinfo["roles"]) == sorted(minted["roles"]) and userinfo["authz_decision_id"] != minted["authz_decision_id"]
    introspected = acme.client("crm-api").introspect(token)  # Keycloak 26: the introspecting client must be in aud
    assert introspected["active"] is True and sorted(introspected["roles"]) == sorted(minted["roles"])
    assert introspected["authz_decision_id"] not in (minted["authz_decision_id"], userinfo["authz_decision_id"])
    for claims, event in ((userinfo, "userinfo"), (introspected, "introspection")):
        status, record = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}")
        assert status == 200 and record["request"]["event"] == event and record["request"]["subject"]["username"] == "bob"


# -- delegation ------------------------------------------------------------------------------------


def test_token_exchange_names_the_agent_in_act_and_intersects_roles(acme: Acme) -> None:
    alice = acme.login("alice")["access_token"]
    claims = acme.claims(acme.exchange("research-agent", alice)["access_token"])
    assert claims["sub"] == ALICE and claims["azp"] == "research-agent"
    assert claims["act"] == {"sub": RESEARCH_AGENT_SA, "client_id": "research-agent"}
    assert claims["roles"] == ["crm:read"]  # alice's roles that the agent also holds
    assert claims["exp"] - claims["iat"] <= 300
    status, record = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}")
    assert status == 200 and [a["client_id"] for a in record["request"]["actors"]] == ["research-agent"]


def test_a_delegation_chain_deeper_than_two_actors_is_denied(acme: Acme) -> None:
    hop1 = acme.exchange("research-agent", acme.login("alice")["access_token"])["access_token"]
    hop2 = acme.exchange("summarizer-agent", hop1)["access_token"]
    hop2_claims = acme.claims(hop2)
    assert hop2_claims["act"]["client_id"] == "summarizer-agent" and hop2_claims["act"]["act"]["client_id"] == "research-agent"
    error = refused(lambda: acme.exchange("triage-agent", hop2))
    assert error.response_code == 403 and error_body(error)["error"] == "access_denied"
    denied_for_user(acme, error, DELEGATION_TEXT)  # the chain depth is for the log, not the client
    status, listed = acme.bridge("GET", f"/v1/decisions?subject={ALICE}&client=triage-agent&limit=1")
    assert status == 200 and listed["decisions"], listed
    last = listed["decisions"][0]
    assert last["effect"] == "deny" and [a["client_id"] for a in last["request"]["actors"]] == [
        "triage-agent",
        "summarizer-agent",
        "research-agent",
    ]
    assert any("chain" in reason["message"] for reason in last["result"]["reasons"]), last["result"]["reasons"]


# -- denials, ttl ----------------------------------------------------------------------------------


def test_a_terminated_subject_is_refused_at_login_and_at_refresh(acme: Acme) -> None:
    error = refused(lambda: acme.login("carol"))
    assert error.response_code == 403 and error_body(error)["error"] == "access_denied"
    assert denied_for_user(acme, error, INACTIVE_TEXT)["result"]["principals"][0]["subject_id"] == "E1003"
    tokens = acme.login("alice")
    restage(acme, terminated("E1001"))
    try:
        error = refused(lambda: acme.refresh(tokens["refresh_token"]))
        assert error.response_code == 403 and error_body(error)["error"] == "access_denied"
        denied_for_user(acme, error, INACTIVE_TEXT)
    finally:
        restage(acme, None)


def test_max_ttl_seconds_shortens_exp(acme: Acme) -> None:
    status, active = acme.bridge("GET", "/v1/policy")
    assert status == 200
    original = active["policy"]
    shorter = json.loads(json.dumps(original))
    shorter["version"] = original["version"] + "-e2e-ttl"
    for rule in shorter["rules"]:
        if rule["id"] == "service-accounts-short-lived":
            rule["max_ttl_seconds"] = 90
    status, body = acme.bridge("PUT", "/v1/policy", shorter)
    assert status == 200, body
    try:
        _wait_for_policy(acme, shorter["version"])
        claims = acme.claims(acme.client_credentials("billing-bot")["access_token"])
        assert 85 <= claims["exp"] - claims["iat"] <= 90  # the realm gives 300 s; the policy says 90
    finally:
        status, body = acme.bridge("PUT", "/v1/policy", original)
        assert status == 200, body
        _wait_for_policy(acme, original["version"])


def _wait_for_policy(acme: Acme, version: str) -> None:
    _settle(lambda: {acme.bridge("GET", "/v1/policy")[1]["version"] for _ in range(8)}, {version})


# -- the bridge down ---------------------------------------------------------------------------------


def _governed_scope_mapper(admin: KeycloakAdmin) -> tuple[str, dict[str, Any]]:
    scope = admin.get_client_scope_by_name("kpb-governed")
    assert scope is not None, "the realm has no kpb-governed client scope"
    (mapper,) = [m for m in admin.get_mappers_from_client_scope(scope["id"]) if m["protocolMapper"] == "kpb-policy-bridge-mapper"]
    return scope["id"], mapper


def test_bridge_down_fail_closed_is_an_oauth_error_and_degraded_is_a_flagged_short_token(acme: Acme) -> None:
    admin = acme.master_admin()
    scope_id, mapper = _governed_scope_mapper(admin)
    original = dict(mapper["config"])
    stack.stop_bridge(PATHS)
    try:
        error = refused(lambda: acme.login("alice"))
        assert error.response_code == 503 and error_body(error)["error"] == "temporarily_unavailable"
        # A fixed text: never the failure's kind, the bridge URL or the status it answered.
        assert error_body(error)["error_description"] == "Authorization policy service unavailable; try again later."

        admin.update_mapper_in_client_scope(
            scope_id, mapper["id"], {**mapper, "config": {**original, "kpb.failure.mode": "degraded", "kpb.degraded.ttl.seconds": "60"}}
        )
        claims = acme.claims(acme.login("alice")["access_token"])
        assert claims["authz_degraded"] is True
        assert claims["exp"] - claims["iat"] <= 60
        assert "roles" not in claims and "tenant" not in claims and "authz_decision_id" not in claims
        assert "realm_access" not in claims and "resource_access" not in claims  # no ungoverned authority either
    finally:
        admin.update_mapper_in_client_scope(scope_id, mapper["id"], {**mapper, "config": original})
        stack.start_bridge(PATHS)
    deadline = time.monotonic() + 30  # the mapper's circuit breaker lets a trial call through after its open period
    while True:
        try:
            claims = acme.claims(acme.login("alice")["access_token"])
            break
        except KeycloakError:
            assert time.monotonic() < deadline, "logins still fail after the bridge came back"
            time.sleep(1)
    assert "authz_degraded" not in claims and claims["roles"]


# -- the mapper as an AuthZEN enforcement point ---------------------------------------------------------


GOVERNED = ("roles", "tenant")  # the acme policy's claims


def test_authzen_mode_mints_the_same_governed_claims_as_kpb_mode(acme: Acme) -> None:
    """The governed scope's mapper switched to ``kpb.pdp.protocol=authzen`` (the gate, then a
    resource search for ``roles``) against the same bridge: the same claims and lifetime ceiling as
    ``/v1/claims``, the token's decision id recorded with the AuthZEN request, and a denied subject
    refused with the same OAuth error and text."""
    before = {
        "alice": acme.claims(acme.login("alice")["access_token"]),
        "billing-bot": acme.claims(acme.client_credentials("billing-bot")["access_token"]),
    }
    admin = acme.master_admin()
    scope_id, mapper = _governed_scope_mapper(admin)
    original = dict(mapper["config"])
    admin.update_mapper_in_client_scope(
        scope_id, mapper["id"], {**mapper, "config": {**original, "kpb.pdp.protocol": "authzen", "kpb.authzen.claims": "roles"}}
    )
    try:
        after = {"alice": acme.claims(acme.login("alice")["access_token"])}
        after["billing-bot"] = acme.claims(acme.client_credentials("billing-bot")["access_token"])
        for name, claims in after.items():
            assert {c: claims.get(c) for c in GOVERNED} == {c: before[name].get(c) for c in GOVERNED}, name
            assert claims["roles"], name
            assert claims["exp"] - claims["iat"] == before[name]["exp"] - before[name]["iat"], name  # the same ceiling applied
            status, record = acme.bridge("GET", f"/v1/decisions/{claims['authz_decision_id']}")
            assert status == 200 and record["effect"] == "permit", record
            gate = record["request"]["context"]["authzen"]
            assert gate["action"]["name"] == f"issue:access_token:{record['request']['grant_type']}"
            assert record["request"]["event"] == "token"
            assert sorted(record["result"]["claims"]["roles"]) == sorted(claims["roles"])
        assert after["billing-bot"]["exp"] - after["billing-bot"]["iat"] <= 300
        alice = acme.bridge("GET", f"/v1/decisions/{after['alice']['authz_decision_id']}")[1]["request"]
        assert (alice["subject"]["id"], alice["subject"]["username"], alice["client"]["client_id"]) == (ALICE, "alice", "acme-web")

        error = refused(lambda: acme.login("carol"))
        record = denied_for_user(acme, error, INACTIVE_TEXT)
        assert record["request"]["context"]["authzen"]["subject"]["properties"]["username"] == "carol"
    finally:
        admin.update_mapper_in_client_scope(scope_id, mapper["id"], {**mapper, "config": original})
    restored = acme.claims(acme.login("alice")["access_token"])  # kpb mode again: /v1/claims
    assert "authzen" not in acme.bridge("GET", f"/v1/decisions/{restored['authz_decision_id']}")[1]["request"].get("context", {})


# -- evidence: explain, replay, drift ------------------------------------------------------------------


def test_kpb_explain_token_verifies_against_the_realm_jwks(acme: Acme) -> None:
    token = acme.login("alice")["access_token"]
    result = subprocess.run(
        [
            str(KPB),
            "explain",
            "--token",
            "-",
            "--log",
            str(PATHS.log),
            "--jwks-url",
            f"{acme.issuer}/protocol/openid-connect/certs",
            "--issuer",
            acme.issuer,
            "--leeway",
            "5",
        ],
        input=token,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    decision_id = acme.claims(token)["authz_decision_id"]
    assert result.returncode in (0, 1), result.stderr
    assert decision_id in result.stdout and "finance:approve" in result.stdout
    assert token not in result.stdout + result.stderr
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = subprocess.run(
        [str(KPB), "explain", "--token", "-", "--log", str(PATHS.log), "--jwks-url", f"{acme.issuer}/protocol/openid-connect/certs"],
        input=tampered,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "signature" in bad.stderr.lower()


def test_replay_of_recorded_decisions_against_a_candidate(acme: Acme) -> None:
    claims = acme.claims(acme.login("alice")["access_token"])
    assert "finance:approve" in claims["roles"]
    candidate = json.loads((ACME / "candidate-policy.json").read_text())  # certification 90 -> 30 days
    status, report = acme.bridge("POST", "/v1/replay", {"policy": candidate, "subject": ALICE, "limit": 50})
    assert status == 200, report
    assert report["changed"] >= 1 and report["errors"] == 0
    assert {c["decision_id"] for c in report["changed_decisions"]} >= {claims["authz_decision_id"]}
    changed = next(c for c in report["changed_decisions"] if c["decision_id"] == claims["authz_decision_id"])
    assert changed["removed"] == {"roles": ["finance:approve"]}


def test_drift_revoke_ends_the_sessions_of_subjects_who_lost_entitlements(acme: Acme) -> None:
    tokens = acme.login("alice")
    assert "crm:write" in acme.claims(tokens["access_token"])["roles"]
    restage(acme, without("E1001", "crm:write"))
    try:
        env = {**os.environ, "KPB_KEYCLOAK_ADMIN_SECRET": "kpb-admin-client-demo-secret"}
        result = subprocess.run(
            [
                str(KPB),
                "drift",
                "--log",
                str(PATHS.log),
                "--policy",
                str(ACME / "policy.json"),
                "--entitlements",
                str(PATHS.export),
                "--feed",
                str(PATHS.risk),
                "--json",
                "--revoke",
                "--keycloak-url",
                acme.keycloak_url,
                "--realm",
                "acme",
                "--admin-client",
                "kpb-admin-client",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        drifted = {s["keycloak_user_id"]: s for s in report["subjects"]}
        assert "crm:write" in drifted[ALICE]["claims"]["roles"]
        assert {"subject_id": "E1001", "keycloak_user_id": ALICE, "outcome": "revoked", "error": None} in report["revocations"]
        assert "kpb-admin-client-demo-secret" not in result.stdout + result.stderr

        error = refused(lambda: acme.refresh(tokens["refresh_token"]))
        assert error.response_code == 400 and error_body(error)["error"] == "invalid_grant"
        fresh = acme.claims(acme.login("alice")["access_token"])
        assert sorted(fresh["roles"]) == ["crm:read", "finance:approve"]
    finally:
        restage(acme, None)


# -- bridge replicas on PostgreSQL (issue 15) ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _decisions_answered(replica: stack.Paths) -> int:
    """The replica's ``kpb_decisions_total`` (its one worker's counters: the whole replica's)."""
    with urllib.request.urlopen(replica.bridge_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return int(sum(float(v) for v in re.findall(r"^kpb_decisions_total\{[^}]*\} (\S+)$", text, re.M)))


def _mint(acme: Acme, reader: PostgresDecisionReader, tokens: int) -> list[tuple[DecisionRecord, float]]:
    """``tokens`` governed tokens, password grants and client credentials in turn: each one's
    decision as the PostgreSQL log holds it, and the seconds its token request took."""
    grants = (lambda: acme.login("alice"), lambda: acme.client_credentials("billing-bot"))
    minted = []
    for n in range(tokens):
        started = time.perf_counter()
        claims = acme.claims(grants[n % 2]()["access_token"])
        seconds = time.perf_counter() - started
        assert claims["roles"] and claims["tenant"] == "acme-eu" and "authz_degraded" not in claims, claims
        minted.append((reader.get(claims["authz_decision_id"]), seconds))  # DecisionNotFoundError if not in the log
    return minted


def test_tokens_keep_being_minted_while_one_bridge_replica_is_stopped(acme: Acme, postgres_url: str) -> None:
    """Two replicas on one PostgreSQL decision log are the scope mapper's bridge URLs (A first).
    With A stopped (SIGTERM) every token is still minted with its governed claims and a decision
    that replica B recorded in the shared log; the first ones fail over from A (``attempt`` 2 in
    the recorded request), and once A's circuit breaker is open A is skipped and a token costs
    about what it costs with both replicas up. Each replica runs one worker, so its /metrics
    counts all its decisions."""
    admin = acme.master_admin()
    scope_id, mapper = _governed_scope_mapper(admin)
    original = dict(mapper["config"])
    threshold = int(original.get("kpb.circuit.failure.threshold", "5"))
    a, b = (stack.Paths(PATHS.base, _free_port(), f"replica-{name}", postgres_url) for name in "ab")
    reader = PostgresDecisionReader(postgres_url)
    try:
        for replica in (a, b):
            stack.start_bridge(replica, workers=1)
        urls = f"{a.bridge_url},{b.bridge_url}"
        admin.update_mapper_in_client_scope(scope_id, mapper["id"], {**mapper, "config": {**original, "kpb.bridge.url": urls}})
        both_up = _mint(acme, reader, 6)
        assert (_decisions_answered(a), _decisions_answered(b)) == (6, 0)  # the mapper asks its first URL
        assert all("attempt" not in record.request for record, _ in both_up)

        stack.stop_bridge(a)
        a_down = _mint(acme, reader, threshold + 10)
        assert _decisions_answered(b) == len(a_down)  # every token of this phase was decided by B
        attempts = [record.request.get("attempt") for record, _ in a_down]
        assert attempts[:threshold] == [2] * threshold, attempts  # A refused the connection: failover within the request
        assert attempts[threshold] is None, attempts  # A's breaker is open: skipped, B asked first
        up_ms = statistics.median(s for _, s in both_up) * 1000
        skipped_ms = statistics.median(s for _, s in a_down[threshold:]) * 1000
        print(f"ms per token: both replicas up {up_ms:.1f}; A stopped, its breaker open {skipped_ms:.1f} (medians)")
        # Shown, not asserted (speed lives in bench/): that A is skipped without a call is what the
        # missing ``attempt`` above proves; on a loaded 2-vCPU machine one run measured 176 vs 439 ms.
    finally:
        admin.update_mapper_in_client_scope(scope_id, mapper["id"], {**mapper, "config": original})
        for replica in (a, b):
            stack.stop_bridge(replica)
        reader.close()
    assert acme.claims(acme.login("alice")["access_token"])["roles"]  # the stack's own bridge again


# -- rotating the shared secret (last: it restarts Keycloak) ------------------------------------------


def _signed_claims_status(secret_hex: str, key_id: str) -> int:
    body = (ACME / "requests" / "carol-refresh.json").read_bytes()
    headers = {
        **signing_headers(bytes.fromhex(secret_hex), key_id, "POST", "/v1/claims", body, int(time.time())),
        "Content-Type": "application/json",
    }
    try:
        with urllib.request.urlopen(
            urllib.request.Request(BRIDGE_URL + "/v1/claims", data=body, headers=headers, method="POST"), timeout=10
        ) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code)


def test_rotating_the_shared_secret_in_the_documented_order_never_fails_a_token(acme: Acme) -> None:
    """docs/operations.md section 7: the bridge accepts old and new, Keycloak switches to the
    new, the bridge drops the old. Every step mints governed tokens; the old secret is refused
    at the end. This test restarts Keycloak (keeping its data) and runs last."""
    old, new = (stack.HMAC_KEY_ID, stack.hmac_secret(PATHS)), ("acme-kc-2", secrets.token_hex(32))
    both = f"{old[0]}={old[1]},{new[0]}={new[1]}"

    stack.stop_bridge(PATHS)
    stack.start_bridge(PATHS, secrets=both)  # 1. the bridge accepts both
    assert acme.claims(acme.login("alice")["access_token"])["roles"]

    stack.keycloak("stop", PATHS)  # 2. Keycloak signs with the new secret
    stack.keycloak("start", PATHS, key=new, keep_data=True)
    assert acme.claims(acme.login("alice")["access_token"])["roles"]

    stack.stop_bridge(PATHS)  # 3. the bridge drops the old one
    stack.start_bridge(PATHS, secrets=f"{new[0]}={new[1]}")
    assert acme.claims(acme.login("alice")["access_token"])["roles"]
    assert _signed_claims_status(old[1], old[0]) == 401
    assert _signed_claims_status(new[1], new[0]) == 200
