"""Defect 4 and cross-worker replay through a real `kpb serve --workers 2` (gunicorn; sync and gthread).

* One HMAC-signed request sent ten times on fresh connections is answered once: each worker has
  its own replay cache, and the shared decision log refuses the nonce the second time.
* An activation forged by direct SQL in the served log is followed by no worker: both keep
  serving the policy file's version, log an ERROR, and show the refusal in /metrics.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import ACME
from keycloak_policy_bridge.canonical import canonical_json, digest
from keycloak_policy_bridge.signature import signing_headers
from served import Served, fresh_copy, request

SECRET = bytes(range(32))
WORKER_CLASSES = ("sync", "gthread")  # both worker models `kpb serve` offers; the replay check must not depend on either
ORIGINAL = json.loads((ACME / "policy.json").read_text())


def serve(tmp_path: Path, worker_class: str) -> Served:
    entitlements = fresh_copy(ACME / "entitlements", tmp_path / "entitlements")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    env.update(KPB_DECISION_LOG=str(tmp_path / "d.db"), KPB_HMAC_SECRETS=f"k1={SECRET.hex()}", KPB_WATCH_INTERVAL_SECONDS="1")
    served = Served(
        ["--workers", "2", "--worker-class", worker_class, "--policy", str(ACME / "policy.json"), "--entitlements", str(entitlements)],
        env,
        tmp_path / "serve.log",
    )
    # /readyz answered by one worker says nothing of the other: wait until both have booted.
    deadline = time.monotonic() + 30
    while len(booted(served)) < 2:
        assert time.monotonic() < deadline, served.output()[-3000:]
        time.sleep(0.2)
    time.sleep(0.5)  # the policy step follows the snapshot load
    return served


def booted(served: Served) -> set[int]:
    return {json.loads(line)["pid"] for line in served.output().splitlines() if line.startswith("{") and "snapshot loaded" in line}


def post(base: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    return request(base, "POST", "/v1/claims", body, headers)


def signed(body: bytes) -> dict[str, str]:
    return signing_headers(SECRET, "k1", "POST", "/v1/claims", body, int(time.time()))


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_a_signed_request_sent_ten_times_to_two_workers_is_answered_once(tmp_path: Path, worker_class: str) -> None:
    served = serve(tmp_path, worker_class)
    try:
        body = (ACME / "requests" / "dave-login.json").read_bytes()
        headers = signed(body)
        first, second = workers_of(served.pid)
        # Route deterministically: stop one worker while the other answers, then swap. (Left to
        # the accept race, one worker may take all ten, and its own cache would hide the defect.)
        answers = [
            only(served.base, body, headers, answering=first, stopped=second),
            only(served.base, body, headers, answering=second, stopped=first),
        ]
        answers += [post(served.base, body, headers) for _ in range(8)]
    finally:
        served.stop()
    permits = [a for status, a in answers if status == 200]
    refused = [a for status, a in answers if status == 401]
    assert len(permits) == 1 and len(refused) == 9, answers
    assert answers[0][0] == 200 and {a["error"] for a in refused} == {"unauthorized"}
    with sqlite3.connect(tmp_path / "d.db") as conn:
        rows = conn.execute("SELECT COUNT(*) FROM decisions WHERE keycloak_user_id = ?", (json.loads(body)["subject"]["id"],)).fetchone()[0]
    assert rows == 1  # the replays were never recorded


def workers_of(master: int) -> list[int]:
    """The gunicorn workers of ``master`` (its child processes), waiting until there are two."""
    deadline = time.monotonic() + 10
    while True:
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                children.append(int(stat.parent.name))
        if len(children) == 2 or time.monotonic() > deadline:
            assert len(children) == 2, children
            return sorted(children)
        time.sleep(0.2)


def only(base: str, body: bytes, headers: dict[str, str], answering: int, stopped: int) -> tuple[int, Any]:
    """``post`` while ``stopped`` is paused (SIGSTOP), so that ``answering`` takes the connection."""
    os.kill(stopped, signal.SIGSTOP)
    try:
        return post(base, body, headers)
    finally:
        os.kill(stopped, signal.SIGCONT)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_an_activation_forged_in_the_served_log_is_followed_by_no_worker(tmp_path: Path, worker_class: str) -> None:
    served = serve(tmp_path, worker_class)
    forged = {**ORIGINAL, "version": ORIGINAL["version"] + "-forged"}
    try:
        with sqlite3.connect(tmp_path / "d.db", isolation_level=None) as conn:
            conn.execute("INSERT OR IGNORE INTO policies VALUES (?, ?)", (digest(forged), canonical_json(forged)))
            seq = conn.execute(
                "INSERT INTO activations (digest, version, activated_by, activated_at) VALUES (?, ?, ?, ?)",
                (digest(forged), forged["version"], "ada (ad-1)", "2026-11-28T08:30:00.000000Z"),
            ).lastrowid
        time.sleep(3)  # three watch intervals
        alice = json.loads((ACME / "requests" / "alice-login.json").read_text())
        versions = set()
        for n in range(12):
            body = json.dumps({**alice, "request_id": f"r-{n}"}).encode()  # each attempt signed afresh
            status, decision = post(served.base, body, signed(body))
            assert status == 200, decision
            versions.add(decision["policy"]["version"])
        scrapes = []
        for _ in range(6):
            with urllib.request.urlopen(urllib.request.Request(served.base + "/metrics", headers={"Connection": "close"}), timeout=5) as r:
                scrapes.append(r.read().decode())
    finally:
        output = served.stop()
    assert versions == {ORIGINAL["version"]}
    assert all("kpb_policy_activation_refused 1.0" in text for text in scrapes)
    errors = [json.loads(line) for line in output.splitlines() if line.startswith("{") and '"ERROR"' in line]
    assert len({e["pid"] for e in errors if f"activation seq {seq} " in e["message"] and "refused" in e["message"]}) == 2, output[-3000:]
