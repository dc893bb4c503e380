"""`kpb serve`: a real gunicorn process answering on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ACME, ACME_SERVICE_ENV, ROOT
from served import Served, fresh_copy


def test_kpb_serve_answers_under_gunicorn(tmp_path: Path) -> None:
    entitlements = fresh_copy(ACME / "entitlements", tmp_path / "entitlements")
    risk = fresh_copy(ACME / "feeds" / "risk", tmp_path / "risk")
    env = {**os.environ, "KPB_DECISION_LOG": str(tmp_path / "d.db"), "KPB_FEEDS": f"risk={risk}"}
    env.pop("KPB_HMAC_SECRETS", None)
    served = Served(
        ["--insecure-dev", "--workers", "2", "--policy", str(ACME / "policy.json"), "--entitlements", str(entitlements)],
        env,
        tmp_path / "serve.log",
    )
    base = served.base
    try:
        body = (ACME / "requests" / "alice-login.json").read_bytes()
        request = urllib.request.Request(base + "/v1/claims", data=body, headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            decision = json.load(response)
        assert decision["effect"] == "permit" and decision["claims"]["tenant"] == "acme-eu"
        assert decision["context_feeds"]["risk"]["stale"] is False
    finally:
        output = served.stop()
    assert "INSECURE DEVELOPMENT MODE" in output


def test_kpb_serve_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    result = subprocess.run(
        [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "KPB_HMAC_SECRETS: is required" in result.stderr


def test_signed_requests_metrics_and_openapi_through_gunicorn(tmp_path: Path) -> None:
    """The production path: HMAC required, a raw-path signature, /metrics and /openapi.json."""
    from keycloak_policy_bridge.signature import signing_headers

    secret = bytes(range(32))
    entitlements = fresh_copy(ACME / "entitlements", tmp_path / "entitlements")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(KPB_DECISION_LOG=str(tmp_path / "d.db"), KPB_HMAC_SECRETS=f"k1={secret.hex()}")
    served = Served(
        ["--workers", "1", "--policy", str(ACME / "policy.json"), "--entitlements", str(entitlements)], env, tmp_path / "serve.log"
    )
    base = served.base
    try:
        body = (ACME / "requests" / "carol-refresh.json").read_bytes()
        unsigned = urllib.request.Request(base + "/v1/claims", data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            urllib.request.urlopen(unsigned, timeout=5)
            raise AssertionError("an unsigned request was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401 and json.load(exc)["error"] == "unauthorized"
        headers = {**signing_headers(secret, "k1", "POST", "/v1/claims", body, int(time.time())), "Content-Type": "application/json"}
        with urllib.request.urlopen(urllib.request.Request(base + "/v1/claims", data=body, headers=headers, method="POST"), timeout=5) as r:
            assert json.load(r)["effect"] == "deny"  # carol is terminated: a deny is a 200
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'kpb_decisions_total{effect="deny"} 1.0' in metrics
        assert 'kpb_request_failures_total{code="unauthorized"} 1.0' in metrics
        with urllib.request.urlopen(base + "/openapi.json", timeout=5) as r:
            assert json.load(r)["openapi"].startswith("3.1")
    finally:
        served.stop()


def test_bad_settings_that_only_workers_would_notice_fail_before_the_fork(tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KPB_")}, **ACME_SERVICE_ENV}
    for extra, words in [
        ({"KPB_HMAC_SECRETS": f"bad key!={'ab' * 32}"}, "KPB_HMAC_SECRETS: entry 1 of 1: the key id is not valid"),
        ({"KPB_INSECURE_DEV": "1", "KPB_LOG_LEVEL": "CHATTY"}, "KPB_LOG_LEVEL: unknown log level 'CHATTY'"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve"],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and words in result.stderr, result.stderr
        assert "ab" * 32 not in result.stderr
