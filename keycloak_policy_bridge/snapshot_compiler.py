"""Compiling an export directory into a snapshot file once, for every process of one bridge.

``compile_export`` returns the compiled file (``snapshot_file``) for what the export directory
holds now. The first process to ask compiles it; the others wait on a lock and open the result.
The compile runs in a child interpreter: a ten-million-row export is parsed for a minute without
holding the asking worker's GIL (its requests keep their latency), and the heap the parse needed
goes back to the operating system when the child exits instead of staying in a long-lived worker.

A compiled file is named ``<source>-<key>``: the source names the export directory (its resolved
path), the key what it holds (this module's format, the manifest's bytes, the name, size,
modification time and inode of every file in the directory, and the profile), so a changed drop
is a new file, an unchanged one is never compiled twice, and bridges of different exports can
share one cache without pruning each other's files. A rejected export is
remembered under its key as well (``<key>.rejected.json``, its issues), so every worker reports
the same rejection without parsing the export again.

Concurrency: ``<cache>/.compile.lock`` (an ``flock``) serializes compiles among the processes of
one host that share ``cache``; the file appears under its final name by an atomic rename, after it
is complete and synced. Nothing here knows about drop guards: they judge an export against the
snapshot a store serves (``snapshot_loader.guard_issues``), not the file.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.snapshot_file import FORMAT, SUFFIX, SnapshotFileBuilder, open_snapshot_file
from keycloak_policy_bridge.snapshot_loader import MANIFEST, LoadOptions, load_snapshot

LOCK = ".compile.lock"
REJECTED = ".rejected.json"
_EXIT_REJECTED = 2


def export_key(directory: Path, options: LoadOptions) -> str:
    """The key of what ``directory`` holds now (see the module docstring); 32 hex digits."""
    try:
        manifest = (directory / MANIFEST).read_bytes()
    except OSError:
        manifest = b""
    files = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.is_file():
            st = entry.stat()
            files.append([entry.name, st.st_size, st.st_mtime_ns, st.st_ino])
    profile = options.profile.digest if options.profile is not None else None
    return digest({"format": FORMAT, "manifest": manifest.hex(), "files": files, "profile": profile})[7:39]


def source_name(directory: Path) -> str:
    """The export directory's part of a compiled file's name (16 hex digits)."""
    return digest(str(directory.resolve()))[7:23]


def compile_export(directory: str | Path, cache: str | Path, options: LoadOptions | None = None) -> tuple[Path, Snapshot]:
    """The compiled snapshot of the export in ``directory`` (compiled now if no process has yet),
    opened, with its file.

    It is opened under the compile lock, so that no other process can prune the file between its
    compile and its opening (an open snapshot outlives its file's name).
    ``options.baseline_records`` and the drop settings are ignored (guards are the caller's).

    Raises:
        EntitlementSourceError: the export is rejected (its issues, as ``load_snapshot`` reports
            them), now or by an earlier compile of the same export.
    """
    root, cache = Path(directory), Path(cache)
    options = LoadOptions(profile=options.profile if options else None)
    cache.mkdir(parents=True, exist_ok=True)
    name = f"{source_name(root)}-{export_key(root, options)}"
    target, rejected = cache / f"{name}{SUFFIX}", cache / f"{name}{REJECTED}"
    with _locked(cache / LOCK):
        if target.exists():
            return target, open_snapshot_file(target)
        if rejected.exists():
            raise _rejection(json.loads(rejected.read_text(encoding="utf-8")))
        partial = cache / f"{name}.{os.getpid()}.partial"
        partial.unlink(missing_ok=True)
        child = subprocess.run(
            [sys.executable, "-m", "keycloak_policy_bridge.snapshot_compiler", str(root), str(partial)],
            input=pickle.dumps(options),
            capture_output=True,
            check=False,
        )
        if child.returncode == _EXIT_REJECTED:
            partial.unlink(missing_ok=True)
            document = json.loads(child.stdout)
            _write_atomically(rejected, json.dumps(document).encode())
            raise _rejection(document)
        if child.returncode != 0 or not partial.exists():
            partial.unlink(missing_ok=True)
            tail = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise EntitlementSourceError(
                f"{root}: compiling the snapshot failed (exit {child.returncode})", [Issue(str(root), tail[0], "compile_failed")]
            )
        os.replace(partial, target)
        _sync_directory(cache)
        return target, open_snapshot_file(target)


def prune(cache: str | Path, keep: Path) -> list[Path]:
    """Remove the compiled files and remembered rejections of ``keep``'s export directory that
    are older than ``keep`` (the file now served); other exports' files are left alone.

    A process still serving a removed file keeps reading it: its mapping outlives the name.
    """
    removed: list[Path] = []
    source = keep.name.split("-", 1)[0] + "-"
    with _locked(Path(cache) / LOCK):
        try:
            kept = keep.stat().st_mtime_ns
        except FileNotFoundError:
            return removed  # a newer compile pruned it already; that one prunes the rest
        for path in Path(cache).iterdir():
            if path == keep or not path.name.startswith(source) or not path.name.endswith((SUFFIX, REJECTED)):
                continue
            if path.stat().st_mtime_ns <= kept:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _rejection(document: dict[str, Any]) -> EntitlementSourceError:
    return EntitlementSourceError(str(document["message"]), [Issue.from_dict(i) for i in document["issues"]])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _child(directory: str, partial: str) -> int:
    """The child's side: compile ``directory`` into ``partial``; print a rejection as JSON."""
    options = pickle.loads(sys.stdin.buffer.read())  # from our own parent, never from a network
    # A short-lived process that builds no reference cycles: the collector's repeated passes over
    # a million subjects' fields would cost about a seventh of the compile, and free nothing.
    gc.disable()
    _exit_with_parent(os.getppid())
    builder = SnapshotFileBuilder(partial)
    try:
        load_snapshot(directory, options, builder=builder)
    except EntitlementSourceError as exc:
        builder.abandon()
        sys.stdout.write(json.dumps({"message": exc.message, "issues": [i.to_dict() for i in exc.issues]}))
        return _EXIT_REJECTED
    return 0


def _exit_with_parent(parent: int) -> None:
    """Stop compiling when the asking process is gone (a worker killed mid-reload): nobody would
    rename the result, and a later ask compiles again."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="kpb-compile-orphan-watch", daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1], sys.argv[2]))
