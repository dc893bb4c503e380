"""``BridgeWatcher``: keeps one bridge process current, off the request path.

One daemon thread per process (``wsgi`` starts it). Each tick reloads changed snapshots and feeds
(``SnapshotStore.reload_changed``), follows the latest policy activation (``Bridge.sync_policy``)
and reports what the process serves (``Bridge.report``). It ticks every ``interval`` seconds and
at once when the bridge's replica channel reports an event: an activation or a reload requested
of every replica (``decision_log.replicas``). The poll is the fallback for an event lost or never
sent (the SQLite channel sends none).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from keycloak_policy_bridge.bridge import Bridge
from keycloak_policy_bridge.decision_log.replicas import RELOAD, ChannelEvent
from keycloak_policy_bridge.snapshot_store import DirectoryWatcher

LOG = logging.getLogger("kpb.bridge")


class BridgeWatcher(DirectoryWatcher):
    """Keeps one process current, off the request path: reloads changed snapshots and feeds
    (``SnapshotStore.reload_changed``), follows policy activations made by other workers and
    replicas (``Bridge.sync_policy``), reloads everything when a reload was requested of every
    replica, and reports what it serves (``Bridge.report``). A daemon thread; ``stop`` ends it.

    It ticks every ``interval`` seconds and at once whenever the bridge's replica channel
    reports an event (``notify``): the poll is the fallback for an event lost or never sent.
    """

    thread_name = "kpb-bridge-watcher"

    def __init__(self, bridge: Bridge, interval: float, clock: Callable[[], datetime]) -> None:
        super().__init__(bridge.store, interval)
        self.bridge = bridge
        self.clock = clock
        self._wake = threading.Event()
        self._reload_due = threading.Event()

    def start(self) -> None:
        super().start()
        self.bridge.channel.listen(self.notify)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        super().stop(timeout)

    def notify(self, event: ChannelEvent) -> None:
        """Wake the watcher for ``event`` (called by the channel's thread; returns at once)."""
        if event.kind == RELOAD and not event.local:  # the requesting process has reloaded already
            self._reload_due.set()
        self._wake.set()

    def tick(self) -> None:
        if self._reload_due.is_set():
            self._reload_due.clear()
            outcomes = self.store.reload_all()
            LOG.info(
                "entitlement reload requested of every replica: %s",
                ", ".join(f"{name} {'accepted' if o.accepted else 'rejected'}" for name, o in outcomes.items()),
            )
        else:
            super().tick()
        self.bridge.sync_policy(self.clock())
        self.bridge.report(self.clock())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # a watcher that dies silently would freeze what it watches forever
                LOG.exception("%s: unexpected error; will retry", self.thread_name)
