"""The active entitlement snapshot and context feeds, reloaded off the request path.

``SnapshotStore`` holds the snapshot a service evaluates against. ``reload`` loads and checks a
new one in the calling thread (a watcher thread, a signal handler, an admin call), then swaps a
single reference: a request that already took ``store.current`` finishes on the old snapshot,
and no request ever sees a half-built one. A rejected snapshot changes nothing; the last good one
keeps answering, and the rejection is counted and kept for ``status()`` (metrics, readiness,
``kpb entitlements check``).

With ``compile_to`` (a directory, what ``kpb serve`` uses), a snapshot is not loaded into each
process's heap: ``snapshot_compiler.compile_export`` compiles the export once into a file that
every worker of the host memory-maps (``snapshot_file``), a reload opens the new file and drops
the old mapping, and the drop guard compares record counts, so no process ever holds two copies.
Without it, the snapshot is loaded into this process's heap (tools, tests, small estates).

``DirectoryWatcher`` polls the manifest's fingerprint (mtime, size, inode). Exporters write the
data files first and the manifest last, so a changed manifest means a complete drop; a manifest
that changes while files are still being copied fails its hash checks and is retried on the
next change.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from keycloak_policy_bridge.context_feed import ContextFeed, load_feed
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.snapshot_compiler import compile_export, prune
from keycloak_policy_bridge.snapshot_file import file_size
from keycloak_policy_bridge.snapshot_loader import MANIFEST, LoadOptions, guard_issues, load_snapshot
from keycloak_policy_bridge.timeutil import format_rfc3339

LOG = logging.getLogger("kpb.entitlements")
T = TypeVar("T", Snapshot, ContextFeed)


@dataclass(frozen=True)
class Rejection:
    """A snapshot that was refused: when, from where, and every reason."""

    at: datetime
    directory: str
    message: str
    issues: tuple[Issue, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": format_rfc3339(self.at),
            "directory": self.directory,
            "message": self.message,
            "issues": [{"path": i.path, "code": i.code, "message": i.message} for i in self.issues],
        }

    def summary(self) -> dict[str, Any]:
        """The rejection as an unauthenticated caller may see it: when, and the issue codes.

        Issue paths and messages can quote an export's rows or a file a manifest named, and the
        directory is deployment detail; they stay in the admin API and the log.
        """
        return {"at": format_rfc3339(self.at), "codes": sorted({i.code for i in self.issues})}


@dataclass(frozen=True)
class ReloadOutcome:
    accepted: bool
    rejection: Rejection | None = None


class _Slot(Generic[T]):
    """One reloadable value (the snapshot, or one feed) with its history of rejections."""

    def __init__(self, directory: Path, load: Callable[[Path, T | None, bool], T], clock: Callable[[], datetime], what: str) -> None:
        self.directory = directory
        self._load: Callable[[Path, T | None, bool], T] = load
        self._clock = clock
        self._what = what
        self._lock = threading.Lock()  # serializes reloads; readers never take it
        self.current: T | None = None
        self.loaded_at: datetime | None = None
        self.reloads = 0
        self.rejections = 0
        self.last_rejection: Rejection | None = None
        self.fingerprint: tuple[int, ...] | None = None

    def reload(self, allow_drop: bool = False) -> ReloadOutcome:
        with self._lock:
            fingerprint = _fingerprint(self.directory)
            try:
                loaded = self._load(self.directory, self.current, allow_drop)
            except EntitlementSourceError as exc:
                self.rejections += 1
                self.fingerprint = fingerprint
                self.last_rejection = Rejection(self._clock(), str(self.directory), exc.message, exc.issues)
                LOG.warning(
                    "%s rejected; keeping %s: %s",
                    self._what,
                    self.current.digest if self.current is not None else "nothing (none loaded yet)",
                    "; ".join(f"{i.path}: {i.message}" for i in exc.issues[:20]) or exc.message,
                )
                return ReloadOutcome(False, self.last_rejection)
            self.current = loaded  # the swap: one reference assignment, atomic for readers
            self.loaded_at = self._clock()
            self.fingerprint = fingerprint
            self.reloads += 1
            LOG.info("%s loaded: %s (%d records)", self._what, loaded.digest, loaded.record_count)
            return ReloadOutcome(True)

    def changed(self) -> bool:
        return _fingerprint(self.directory) != self.fingerprint

    def status(self, public: bool = False) -> dict[str, Any]:
        current, rejection = self.current, self.last_rejection
        out: dict[str, Any] = {} if public else {"directory": str(self.directory)}
        out.update(
            loaded=current is not None,
            digest=current.digest if current is not None else None,
            snapshot_id=current.snapshot_id if current is not None else None,
            generated_at=format_rfc3339(current.generated_at) if current is not None else None,
            records=current.record_count if current is not None else 0,
            loaded_at=format_rfc3339(self.loaded_at) if self.loaded_at else None,
            reloads_total=self.reloads,
            rejections_total=self.rejections,
            last_rejection=None if rejection is None else rejection.summary() if public else rejection.to_dict(),
        )
        return out


class SnapshotStore:
    """The active snapshot and feeds of one bridge process.

    Args:
        directory: the entitlement export directory.
        feeds: context feed directories by expected feed name.
        options: profile and drop guard (``baseline_records`` is set from the active snapshot).
        clock: the adapter's clock, for ``loaded_at`` and rejection times only.
        compile_to: where compiled snapshot files go (shared by the processes of one bridge on
            this host); None loads the snapshot into this process's heap.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        feeds: dict[str, str | Path] | None = None,
        options: LoadOptions | None = None,
        clock: Callable[[], datetime],
        compile_to: str | Path | None = None,
    ) -> None:
        self.options = options or LoadOptions()
        self.compile_to = Path(compile_to) if compile_to is not None else None
        self.compiled: Path | None = None  # the file the active snapshot is read from
        self._snapshot: _Slot[Snapshot] = _Slot(Path(directory), self._load_snapshot, clock, "entitlement snapshot")
        self._feeds: dict[str, _Slot[ContextFeed]] = {
            name: _Slot(Path(path), _feed_loader(name), clock, f"context feed '{name}'") for name, path in (feeds or {}).items()
        }

    def _load_snapshot(self, directory: Path, current: Snapshot | None, allow_drop: bool) -> Snapshot:
        baseline = current.record_count if current is not None else None
        options = replace(self.options, baseline_records=baseline, allow_drop=allow_drop or self.options.allow_drop)
        if self.compile_to is None:
            return load_snapshot(directory, options)
        path, snapshot = compile_export(directory, self.compile_to, options)
        issues = guard_issues(directory, snapshot.record_count, options)
        if issues:
            raise EntitlementSourceError(f"{directory}: snapshot rejected ({len(issues)} problem(s))", issues)
        # Accepted (the slot swaps it in next): older files go; processes still reading one keep
        # their mapping until they swap too.
        self.compiled = path
        prune(self.compile_to, keep=path)
        return snapshot

    @property
    def snapshot(self) -> Snapshot | None:
        """The active snapshot (None until one loads). Take it once per request."""
        return self._snapshot.current

    def feeds(self) -> dict[str, ContextFeed]:
        """The loaded feeds, by name (a feed that never loaded is absent: the policy sees it stale)."""
        return {name: slot.current for name, slot in self._feeds.items() if slot.current is not None}

    def reload(self, allow_drop: bool = False) -> ReloadOutcome:
        """Reload the entitlement snapshot; the active one stays on any rejection."""
        return self._snapshot.reload(allow_drop)

    def reload_feed(self, name: str) -> ReloadOutcome:
        """Reload one context feed.

        Raises:
            KeyError: no feed of that name is configured.
        """
        return self._feeds[name].reload()

    def reload_all(self, allow_drop: bool = False) -> dict[str, ReloadOutcome]:
        """Reload the snapshot and every feed; return each outcome by name ("entitlements" first)."""
        outcomes = {"entitlements": self.reload(allow_drop)}
        outcomes.update({name: slot.reload() for name, slot in self._feeds.items()})
        return outcomes

    def reload_changed(self) -> dict[str, ReloadOutcome]:
        """Reload whatever changed on disk since its last (accepted or rejected) attempt."""
        outcomes = {}
        if self._snapshot.changed():
            outcomes["entitlements"] = self.reload()
        for name, slot in self._feeds.items():
            if slot.changed():
                outcomes[name] = slot.reload()
        return outcomes

    def status(self, public: bool = False) -> dict[str, Any]:
        """Everything an operator or a metrics endpoint needs about what is loaded.

        ``public=True`` is the view for unauthenticated callers (``/readyz``): no directories, and
        a rejection reduced to its time and issue codes (``Rejection.summary``).
        """
        entitlements = self._snapshot.status(public)
        if not public:
            entitlements["storage"] = "memory" if self.compile_to is None else "file"
            entitlements["compiled"] = None
            compiled = self.compiled
            if compiled is not None:
                try:
                    entitlements["compiled"] = {"path": str(compiled), "bytes": file_size(compiled)}
                except OSError:
                    entitlements["compiled"] = {"path": str(compiled), "bytes": None}  # pruned by a newer compile
        return {"entitlements": entitlements, "feeds": {n: s.status(public) for n, s in self._feeds.items()}}


def _feed_loader(name: str) -> Callable[[Path, ContextFeed | None, bool], ContextFeed]:
    def load(directory: Path, current: ContextFeed | None, allow_drop: bool) -> ContextFeed:
        feed = load_feed(directory)
        if feed.name != name:
            raise EntitlementSourceError(
                f"{directory}: feed is '{feed.name}', configured as '{name}'", [Issue("$.feed", f"expected '{name}'", "bad_manifest")]
            )
        return feed

    return load


def _fingerprint(directory: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(directory / MANIFEST)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class DirectoryWatcher:
    """Polls a store's directories and reloads what changed, in a daemon thread.

    Subclasses extend ``tick`` (``bridge_watcher.BridgeWatcher`` also follows policy activations).

    Args:
        store: the store to reload.
        interval: seconds between polls.
    """

    thread_name = "kpb-snapshot-watcher"

    def __init__(self, store: SnapshotStore, interval: float = 5.0) -> None:
        self.store = store
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def tick(self) -> None:
        """One poll: reload whatever changed on disk."""
        self.store.reload_changed()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a watcher that dies silently would freeze what it watches forever
                LOG.exception("%s: unexpected error; will retry", self.thread_name)


def reload_on_signal(store: SnapshotStore, signum: int = signal.SIGHUP) -> None:
    """Reload everything when the process receives ``signum`` (SIGHUP by default).

    The handler only starts a thread: loading a million-row export inside a signal handler
    would stall whatever the main thread was doing. Call from the main thread.
    """

    def handler(_signum: int, _frame: Any) -> None:
        threading.Thread(target=store.reload_all, name="kpb-signal-reload", daemon=True).start()

    signal.signal(signum, handler)
