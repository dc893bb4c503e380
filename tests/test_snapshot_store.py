"""Hot reload: a good snapshot swaps in atomically; a bad one changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from conftest import ACME, NOW, make_request
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.snapshot_loader import LoadOptions
from keycloak_policy_bridge.snapshot_store import DirectoryWatcher, SnapshotStore

CLOCK = lambda: datetime(2026, 11, 28, 9, 0, tzinfo=UTC)  # noqa: E731


def copy_acme(target: Path) -> Path:
    shutil.copytree(ACME / "entitlements", target)
    return target


def rewrite(directory: Path, lines: list[str] | None = None, **manifest_changes: object) -> None:
    """Replace the data file (keeping the manifest consistent) and/or patch the manifest."""
    manifest = json.loads((directory / "manifest.json").read_text())
    if lines is not None:
        data = ("\n".join(lines) + "\n").encode()
        (directory / "entitlements.csv").write_bytes(data)
        manifest["files"][0].update(records=len(lines) - 1, sha256=hashlib.sha256(data).hexdigest())
    manifest.update(manifest_changes)
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a visible change even on coarse clocks


def acme_lines() -> list[str]:
    return (ACME / "entitlements" / "entitlements.csv").read_text().splitlines()


def test_initial_load_and_status(tmp_path: Path) -> None:
    store = SnapshotStore(copy_acme(tmp_path / "e"), clock=CLOCK)
    assert store.snapshot is None
    assert store.reload().accepted
    status = store.status()["entitlements"]
    assert status["loaded"] and status["records"] == 22 and status["reloads_total"] == 1 and status["rejections_total"] == 0
    assert status["loaded_at"] == "2026-11-28T09:00:00Z"


def test_a_truncated_export_is_rejected_and_the_old_snapshot_keeps_answering(tmp_path: Path) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK)
    store.reload()
    good = store.snapshot
    data = (directory / "entitlements.csv").read_bytes()
    (directory / "entitlements.csv").write_bytes(data[: len(data) // 2])  # the transfer broke off
    outcome = store.reload()
    assert not outcome.accepted and outcome.rejection is not None
    assert outcome.rejection.issues[0].code == "hash_mismatch"
    assert store.snapshot is good
    policy = load_policy(ACME / "policy.json")
    alice = json.loads((ACME / "requests" / "alice-login.json").read_text())
    from keycloak_policy_bridge.request import parse_request

    assert store.snapshot is not None
    assert evaluate(policy, store.snapshot, parse_request(alice), NOW).claims["roles"] == ["crm:read", "crm:write", "finance:approve"]
    status = store.status()["entitlements"]
    assert status["rejections_total"] == 1 and status["last_rejection"]["issues"][0]["code"] == "hash_mismatch"


def test_a_large_drop_is_rejected_unless_allowed(tmp_path: Path) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK)
    store.reload()
    rewrite(directory, acme_lines()[:12])  # 11 of 22 records: half the estate "lost its access"
    outcome = store.reload()
    assert not outcome.accepted and outcome.rejection is not None
    assert [i.code for i in outcome.rejection.issues] == ["record_drop"]
    assert "50% fewer than the last good snapshot (22)" in outcome.rejection.issues[0].message
    assert store.snapshot is not None and store.snapshot.record_count == 22
    assert store.reload(allow_drop=True).accepted
    assert store.snapshot.record_count == 11


def test_a_small_drop_within_the_threshold_is_accepted(tmp_path: Path) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK, options=LoadOptions(max_drop=0.10))
    store.reload()
    rewrite(directory, acme_lines()[:-2])  # 20 of 22: a normal day's leavers
    assert store.reload().accepted


@pytest.mark.parametrize("change", [{"complete": False}, {"spec": "nope"}])
def test_incomplete_or_malformed_manifest_is_rejected(tmp_path: Path, change: dict[str, Any]) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK)
    store.reload()
    good = store.snapshot
    rewrite(directory, **change)
    assert not store.reload().accepted and store.snapshot is good


def test_header_only_export_never_revokes_everything(tmp_path: Path) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK, options=LoadOptions(allow_drop=True))
    store.reload()
    rewrite(directory, acme_lines()[:1])  # header only, and a manifest that agrees
    outcome = store.reload()
    assert outcome.rejection is not None and [i.code for i in outcome.rejection.issues] == ["empty_snapshot"]
    assert store.snapshot is not None and store.snapshot.record_count == 22


def test_watcher_reloads_only_what_changed(tmp_path: Path) -> None:
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK)
    assert set(store.reload_changed()) == {"entitlements"}  # first sight counts as a change
    assert store.reload_changed() == {}
    lines = acme_lines()
    rewrite(directory, lines[:-1] + [lines[-1].replace("docs:search", "docs:read")])
    outcome = store.reload_changed()
    assert outcome["entitlements"].accepted
    assert store.snapshot is not None and store.snapshot.identity("A3002").records[0].value == "docs:read"  # type: ignore[union-attr]
    # a rejected drop is not retried on every poll, only when the manifest changes again
    (directory / "entitlements.csv").write_text("broken")
    rewrite(directory)
    assert not store.reload_changed()["entitlements"].accepted
    assert store.reload_changed() == {}


def test_watcher_thread_starts_and_stops(tmp_path: Path) -> None:
    store = SnapshotStore(copy_acme(tmp_path / "e"), clock=CLOCK)
    watcher = DirectoryWatcher(store, interval=0.01)
    watcher.start()
    try:
        for _ in range(500):
            if store.snapshot is not None:
                break
            threading.Event().wait(0.01)
    finally:
        watcher.stop()
    assert store.snapshot is not None


def test_reload_under_concurrent_evaluation_never_fails_an_evaluation(tmp_path: Path) -> None:
    """Requests take store.snapshot once; reloads swap the reference between them."""
    directory = copy_acme(tmp_path / "e")
    store = SnapshotStore(directory, clock=CLOCK, options=LoadOptions(allow_drop=True))
    store.reload()
    failures, results = evaluate_through_reloads(store, directory, 20)
    assert failures == []
    assert results == {("crm:read", "crm:write", "finance:approve"), ("crm:read", "crm:write")}


def evaluate_through_reloads(store: SnapshotStore, directory: Path, reloads: int) -> tuple[list[BaseException], set[tuple[str, ...]]]:
    """Three threads evaluate alice's login against ``store.snapshot`` while ``directory`` flips
    between the acme export and one without finance:approve, reloaded ``reloads`` times (each
    accepted); returns the evaluations' failures and the role sets they saw."""
    policy = load_policy(ACME / "policy.json")
    request = make_request(subject={"id": "a11ce000-0000-4000-8000-000000000001", "username": "alice"})
    failures: list[BaseException] = []
    results: set[tuple[str, ...]] = set()
    stop = threading.Event()

    def evaluate_loop() -> None:
        while not stop.is_set():
            try:
                snapshot = store.snapshot
                assert snapshot is not None
                decision = evaluate(policy, snapshot, request, NOW)
                results.add(tuple(decision.claims["roles"]))
            except BaseException as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)

    threads = [threading.Thread(target=evaluate_loop) for _ in range(3)]
    for thread in threads:
        thread.start()
    lines = acme_lines()
    without_finance = [line for line in lines if "finance:approve" not in line]
    for i in range(reloads):
        rewrite(directory, lines if i % 2 else without_finance)
        assert store.reload().accepted
    stop.set()
    for thread in threads:
        thread.join()
    return failures, results


def test_sighup_reloads_in_the_background(tmp_path: Path) -> None:
    import signal

    from keycloak_policy_bridge.snapshot_store import reload_on_signal

    store = SnapshotStore(copy_acme(tmp_path / "e"), clock=CLOCK)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        reload_on_signal(store)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(500):
            if store.snapshot is not None:
                break
            threading.Event().wait(0.01)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert store.snapshot is not None and store.status()["entitlements"]["reloads_total"] == 1
