"""The replica channel on PostgreSQL (``postgres_events``): notifications wake listeners within
milliseconds, reload requests are recorded and come back ``local`` to their sender, heartbeats
say which process serves what, and a listener survives the database going away.

Every test runs against a real PostgreSQL server (``conftest.postgres_server``; the outage tests
start their own).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from conftest import start_postgres
from keycloak_policy_bridge.decision_log import postgres_events
from keycloak_policy_bridge.decision_log.postgres import PostgresDecisionLog
from keycloak_policy_bridge.decision_log.postgres_events import PostgresReplicaChannel
from keycloak_policy_bridge.decision_log.postgres_policies import PostgresPolicyStore
from keycloak_policy_bridge.decision_log.postgres_schema import SCHEMA_VERSION
from keycloak_policy_bridge.decision_log.replicas import (
    ACTIVATION,
    CONNECTED,
    RELOAD,
    ChannelEvent,
    ReplicaIdentity,
    ServedDigests,
    summarize,
)
from keycloak_policy_bridge.errors import DecisionLogError
from postgres_server import PostgresServer
from test_decision_log_contract import KEYS

AT = datetime(2026, 12, 3, 20, 0, tzinfo=UTC)
SERVED_A = ServedDigests("sha256:" + "a" * 64, "sha256:" + "e" * 64, "snap-1", (("risk", "sha256:" + "f" * 64),))
SERVED_B = ServedDigests("sha256:" + "a" * 64, "sha256:" + "d" * 64, "snap-2", ())


class Events:
    """What a channel's listener delivered, in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue[ChannelEvent] = queue.Queue()

    def __call__(self, event: ChannelEvent) -> None:
        self.queue.put(event)

    def next(self, kind: str, timeout: float = 10.0) -> ChannelEvent:
        """The next event of ``kind`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            event = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if event.kind == kind:
                return event


def channel(url: str, name: str, pid: int = 1, interval: float = 60.0) -> PostgresReplicaChannel:
    return PostgresReplicaChannel(url, ReplicaIdentity(name, f"host-{name}", pid), interval)


@pytest.fixture
def listening(postgres_url: str) -> Iterator[tuple[PostgresReplicaChannel, Events]]:
    """A channel whose listener is connected, and its events."""
    ch, events = channel(postgres_url, "listener"), Events()
    ch.listen(events)
    events.next(CONNECTED)
    yield ch, events
    ch.close()


def test_an_activation_wakes_a_listener_at_once(postgres_url: str, listening: tuple[PostgresReplicaChannel, Events]) -> None:
    _, events = listening
    store = PostgresPolicyStore(postgres_url, KEYS)
    started = time.perf_counter()
    recorded = store.record_activation("sha256:" + "1" * 64, "v2", "ada", AT)
    event = events.next(ACTIVATION, timeout=1.0)
    elapsed = time.perf_counter() - started
    print(f"activation commit -> listener woken: {elapsed * 1000:.1f} ms")
    assert event == ChannelEvent(ACTIVATION, recorded.seq) and elapsed < 1.0
    store.close()


def test_a_reload_request_is_recorded_and_reaches_every_listener(
    postgres_url: str, listening: tuple[PostgresReplicaChannel, Events]
) -> None:
    other, events = listening
    sender, sender_events = channel(postgres_url, "sender"), Events()
    sender.listen(sender_events)
    sender_events.next(CONNECTED)
    request = sender.request_reload("ada (ad-1)", AT)
    assert request.shared and request.seq == 1
    assert events.next(RELOAD, timeout=1.0) == ChannelEvent(RELOAD, 1, local=False)
    assert sender_events.next(RELOAD, timeout=1.0) == ChannelEvent(RELOAD, 1, local=True)  # it reloaded already
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT seq, requested_by, requested_at FROM reload_requests").fetchall() == [
            (1, "ada (ad-1)", "2026-12-03T20:00:00Z")
        ]
    sender.close()
    other.request_reload("bob", AT)
    assert events.next(RELOAD, timeout=1.0).local


def test_reload_requests_keep_only_the_newest_rows(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_events, "RELOADS_KEPT", 3)
    ch = channel(postgres_url, "a")
    for _ in range(5):
        ch.request_reload("ada", AT)
    with psycopg.connect(postgres_url) as conn:
        assert [row[0] for row in conn.execute("SELECT seq FROM reload_requests ORDER BY seq")] == [3, 4, 5]
    ch.close()


def test_heartbeats_show_who_serves_what_and_gone_processes_drop_out(postgres_url: str) -> None:
    a1, a2, b = channel(postgres_url, "a", 11), channel(postgres_url, "a", 12), channel(postgres_url, "b", 21, interval=2.0)
    a1.heartbeat(SERVED_A, AT)
    a2.heartbeat(SERVED_A, AT)
    b.heartbeat(SERVED_B, AT)
    states = a1.replicas()
    assert [(s.identity, s.served) for s in states] == [
        (ReplicaIdentity("a", "host-a", 11), SERVED_A),
        (ReplicaIdentity("a", "host-a", 12), SERVED_A),
        (ReplicaIdentity("b", "host-b", 21), SERVED_B),
    ]
    summary = summarize(states, a1.scope)
    assert summary.to_dict() == {
        "live": 2,
        "processes": 3,
        "policy_digests": 1,
        "entitlements_digests": 2,
        "consistent": False,
        "scope": "database",
    }
    b.heartbeat(SERVED_A, AT)  # an upsert: still one row for b
    assert summarize(a2.replicas(), "database").consistent

    # b's interval is 2 s: a heartbeat 7 s old is past three intervals (a's 60 s ones are not).
    with psycopg.connect(postgres_url) as conn:
        conn.execute("UPDATE replicas SET updated_at = updated_at - interval '7 seconds'")
    assert [s.identity.name for s in a1.replicas()] == ["a", "a"]
    a1.heartbeat(SERVED_A, AT)  # deletes the gone rows on the way
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT replica, pid FROM replicas ORDER BY pid").fetchall() == [("a", 11), ("a", 12)]
    a2.close()  # a process that exits cleanly is gone at once
    assert [s.identity.pid for s in a1.replicas()] == [11]
    a1.close()
    b.close()


def test_a_database_at_version_1_is_migrated_and_keeps_its_rows(postgres_url: str) -> None:
    log = PostgresDecisionLog(postgres_url)
    log.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("DROP TABLE replicas, reload_requests")
        conn.execute("UPDATE kpb_schema SET version = 1")
        log_id = conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
    ch = channel(postgres_url, "a")
    ch.heartbeat(SERVED_A, AT)
    assert SCHEMA_VERSION == 2
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT version FROM kpb_schema").fetchone() == (2,)
        assert conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone() == log_id
        assert conn.execute("SELECT count(*) FROM replicas").fetchone() == (1,)
    ch.close()


@pytest.fixture(scope="module")
def own_server() -> Iterator[PostgresServer]:
    """A server of this module's own, for the tests that stop it (``conftest.start_postgres``)."""
    server = start_postgres("kpb-pg-events-")
    yield server
    server.remove()


def listeners(server: PostgresServer) -> int:
    with psycopg.connect(server.url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (postgres_events.LISTENER_NAME,)).fetchone()
    return int(row[0]) if row else 0


def test_a_listener_survives_an_outage_logs_it_once_and_catches_up(own_server: PostgresServer, caplog: pytest.LogCaptureFixture) -> None:
    ch, events = channel(f"postgresql://postgres:pw-secret@127.0.0.1:{own_server.port}/postgres", "a"), Events()
    ch.listen(events)
    events.next(CONNECTED)
    caplog.set_level(logging.WARNING, logger="kpb.replicas")
    own_server.stop()
    time.sleep(2.5)  # several reconnection attempts (0.1, 0.25, 0.5, 1 s...)
    assert not ch.connected and ch.outages == 1 and ch._thread is not None and ch._thread.is_alive()
    lost = [r.getMessage() for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and "pw-secret" not in lost[0], lost
    started = time.monotonic()
    with pytest.raises(DecisionLogError, match="cannot read the replicas' heartbeats") as err:
        ch.replicas()  # /readyz and /metrics read this: it must fail promptly
    assert time.monotonic() - started < 5 and "pw-secret" not in str(err.value)
    own_server.start()
    events.next(CONNECTED, timeout=10)
    assert [r.getMessage() for r in caplog.records if "is back" in r.getMessage()] == [
        f"replica channel to postgresql://127.0.0.1:{own_server.port}/postgres is back; following what changed meanwhile"
    ]
    store = PostgresPolicyStore(own_server.url, KEYS)
    started = time.monotonic()
    store.record_activation("sha256:" + "2" * 64, "v3", "ada", AT)
    events.next(ACTIVATION, timeout=1.0)
    assert time.monotonic() - started < 1.0
    store.close()
    ch.close()


def test_a_reload_requested_while_a_listener_was_away_is_delivered_when_it_is_back(
    own_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ch, events = channel(own_server.url, "a"), Events()
    ch.listen(events)
    events.next(CONNECTED)
    assert listeners(own_server) == 1
    monkeypatch.setattr(postgres_events, "BACKOFF", (4.0,))  # a window to request in while it is away
    own_server.stop()
    own_server.start()
    sender = channel(own_server.url, "b")
    request = sender.request_reload("ada", AT)
    assert listeners(own_server) == 0  # the notification went nowhere
    events.next(CONNECTED, timeout=10)
    assert events.next(RELOAD, timeout=1.0) == ChannelEvent(RELOAD, request.seq)
    sender.close()
    ch.close()


def test_no_server_is_a_decision_log_error_naming_no_password(tmp_path: Path) -> None:
    port = PostgresServer(tmp_path / "never-started").port
    with pytest.raises(DecisionLogError, match=f"postgresql://127.0.0.1:{port}/postgres") as err:
        PostgresReplicaChannel(f"postgresql://postgres:pw-secret@127.0.0.1:{port}/postgres", ReplicaIdentity("a", "h", 1), 5.0)
    assert "pw-secret" not in str(err.value)
