"""Compiling an export once per host: the cache, its lock, its rejections, and a store serving
compiled files through reloads (the hot-reload guarantees of test_snapshot_store, on files)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from keycloak_policy_bridge.errors import EntitlementSourceError
from keycloak_policy_bridge.snapshot_compiler import REJECTED, compile_export, export_key, prune
from keycloak_policy_bridge.snapshot_file import SUFFIX
from keycloak_policy_bridge.snapshot_loader import LoadOptions, load_snapshot
from keycloak_policy_bridge.snapshot_store import SnapshotStore
from test_snapshot_store import CLOCK, acme_lines, copy_acme, evaluate_through_reloads, rewrite

ALICE = {"id": "a11ce000-0000-4000-8000-000000000001", "username": "alice"}


def compiled_files(cache: Path) -> list[Path]:
    return sorted(cache.glob(f"*{SUFFIX}"))


def test_an_export_is_compiled_once_and_opened_after(tmp_path: Path) -> None:
    directory, cache = copy_acme(tmp_path / "e"), tmp_path / "cache"
    path, snapshot = compile_export(directory, cache)
    first = path.stat()
    again, same = compile_export(directory, cache)
    assert again == path and same is snapshot
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert snapshot.digest == load_snapshot(directory).digest
    assert [p.name for p in cache.iterdir() if p.name.endswith(".partial")] == []


def test_a_changed_export_is_a_new_file_and_prune_keeps_other_exports(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    directory, other = copy_acme(tmp_path / "e"), copy_acme(tmp_path / "other")
    old, _ = compile_export(directory, cache)
    others, _ = compile_export(other, cache)
    rewrite(directory, [line for line in acme_lines() if "finance:approve" not in line])
    new, snapshot = compile_export(directory, cache)
    assert new != old and snapshot.record_count == load_snapshot(directory).record_count
    assert export_key(directory, LoadOptions()) in new.name
    assert prune(cache, keep=new) == [old]
    assert compiled_files(cache) == sorted([new, others])


def test_a_rejection_is_remembered_and_reported_alike(tmp_path: Path) -> None:
    directory, cache = copy_acme(tmp_path / "e"), tmp_path / "cache"
    lines = acme_lines()
    lines[3] = lines[3].replace("human", "robot", 1)
    rewrite(directory, lines)
    with pytest.raises(EntitlementSourceError) as expected:
        load_snapshot(directory)
    with pytest.raises(EntitlementSourceError) as first:
        compile_export(directory, cache)
    remembered = list(cache.glob(f"*{REJECTED}"))
    assert len(remembered) == 1 and compiled_files(cache) == []
    assert json.loads(remembered[0].read_text())["issues"][0]["code"] == "bad_value"
    with pytest.raises(EntitlementSourceError) as second:
        compile_export(directory, cache)
    assert first.value.issues == second.value.issues == expected.value.issues


def _compile_in_a_process(directory: str, cache: str, out: str) -> None:
    path, snapshot = compile_export(directory, cache)
    Path(out).write_text(json.dumps([str(path), snapshot.digest, os.stat(path).st_ino]))


def test_processes_asking_at_once_share_one_compile(tmp_path: Path) -> None:
    directory, cache = copy_acme(tmp_path / "e"), tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"out{n}.json" for n in range(3)]
    processes = [context.Process(target=_compile_in_a_process, args=(str(directory), str(cache), str(o))) for o in outs]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    answers = [json.loads(o.read_text()) for o in outs]
    assert len({tuple(a) for a in answers}) == 1  # one path, one digest, one inode: compiled once
    assert len(compiled_files(cache)) == 1


def test_a_compiled_store_survives_reloads_under_concurrent_evaluation(tmp_path: Path) -> None:
    """The hot-reload guarantee, with every reload a new compiled file: no evaluation fails."""
    directory, cache = copy_acme(tmp_path / "e"), tmp_path / "cache"
    store = SnapshotStore(directory, clock=CLOCK, options=LoadOptions(allow_drop=True), compile_to=cache)
    assert store.reload().accepted
    assert store.status()["entitlements"]["storage"] == "file"
    failures, results = evaluate_through_reloads(store, directory, 8)
    assert failures == []
    assert results == {("crm:read", "crm:write", "finance:approve"), ("crm:read", "crm:write")}
    assert len(compiled_files(cache)) == 1  # older files pruned as newer ones were served
    assert store.status()["entitlements"]["compiled"]["path"] == str(compiled_files(cache)[0])


def test_a_compiled_store_keeps_its_snapshot_through_bad_exports_and_large_drops(tmp_path: Path) -> None:
    directory, cache = copy_acme(tmp_path / "e"), tmp_path / "cache"
    store = SnapshotStore(directory, clock=CLOCK, compile_to=cache)
    assert store.reload().accepted
    served = store.snapshot
    assert served is not None
    lines = acme_lines()
    rewrite(directory, lines[: len(lines) // 2])  # half the records: a drop beyond 10%
    outcome = store.reload()
    assert not outcome.accepted and outcome.rejection is not None
    assert [i.code for i in outcome.rejection.issues] == ["record_drop"]
    assert store.snapshot is served
    (directory / "entitlements.csv").write_bytes(b"subject_id\n")  # truncated: hash mismatch
    outcome = store.reload()
    assert not outcome.accepted and store.snapshot is served
    assert outcome.rejection is not None and "hash_mismatch" in {i.code for i in outcome.rejection.issues}
    rewrite(directory, lines[: len(lines) // 2])
    assert store.reload(allow_drop=True).accepted  # the operator's explicit decision
    assert store.snapshot is not None and store.snapshot.record_count < served.record_count
