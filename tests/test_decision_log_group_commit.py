"""``decision_log.group_commit``: the leader/follower queue both SQL writers share."""

from __future__ import annotations

import threading
import time

from keycloak_policy_bridge.decision_log.chain import RecordColumns
from keycloak_policy_bridge.decision_log.group_commit import GroupCommit
from keycloak_policy_bridge.decision_log.rows import PendingAppend
from keycloak_policy_bridge.errors import DecisionLogError


def entry(n: int) -> PendingAppend:
    columns = RecordColumns(f"d{n}", "t", None, None, None, "permit", "[]", "p", "e")
    return PendingAppend(b"{}", columns, {}, {})


class Recorder:
    """A ``write`` that takes its time, records each batch and notices overlapping calls."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.inside = 0
        self.overlapped = False
        self.seconds = seconds
        self.lock = threading.Lock()

    def __call__(self, batch: list[PendingAppend]) -> None:
        with self.lock:
            self.inside += 1
            self.overlapped |= self.inside > 1
        time.sleep(self.seconds)  # a commit's fsync or round trip: appends queue up behind it
        for e in batch:
            e.hash, e.done = f"h-{e.columns.decision_id}", True
        with self.lock:
            self.batches.append([e.columns.decision_id for e in batch])
            self.inside -= 1


def test_concurrent_appends_share_commits_one_writer_at_a_time() -> None:
    write = Recorder()
    group = GroupCommit(write)
    entries = [entry(n) for n in range(64)]
    written: list[int] = []
    threads = [threading.Thread(target=lambda e=e: written.append(group.submit(e))) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(e.done and e.hash == f"h-{e.columns.decision_id}" for e in entries)
    assert sorted(i for b in write.batches for i in b) == sorted(f"d{n}" for n in range(64))  # each exactly once
    assert not write.overlapped
    assert len(write.batches) < 64  # batched: appends that arrived during a commit shared the next
    assert sum(written) == 64 and written.count(0) == 64 - len(write.batches)  # one leader per batch


def test_a_lone_append_is_its_own_leader() -> None:
    write = Recorder(0)
    e = entry(1)
    assert GroupCommit(write).submit(e) == 1
    assert write.batches == [["d1"]] and e.hash == "h-d1"


def test_a_closed_queue_refuses_without_writing() -> None:
    write = Recorder(0)
    group = GroupCommit(write)
    group.close()
    e = entry(1)
    assert group.submit(e) == 0
    assert e.done and e.hash is None and isinstance(e.error, DecisionLogError) and "closed" in str(e.error)
    assert write.batches == [] and group.closed
