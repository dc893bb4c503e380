"""Group commit: many threads append, one commits everything queued so far (a leader).

Used by both SQL writers (``sqlite``, ``postgres``): a commit costs one fsync or one round trip
to the database whatever its size, so the appends that arrive while a commit runs share the next.

Concurrency contract. ``submit(entry)`` may be called by any number of threads at once. A thread
that finds no leader becomes the leader; any other queues its entry and sleeps on the entry's own
lock (``PendingAppend.wake``), so a commit wakes only the threads whose entries it wrote. The
leader takes every queued entry, its own included, as one batch and calls ``write(batch)``;
``write`` is called by one thread at a time, must not raise, and sets ``done`` (and ``hash`` or
``error``) on every entry of the batch. The leader then wakes the batch's other threads and hands
leadership to the oldest entry queued meanwhile, or gives it up when none is. While it waits or
commits, a thread holds no application slot (``app_slots.released``). After ``close()`` an entry
is refused (its ``error`` says the log is closed) without ``write`` being called.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from keycloak_policy_bridge import app_slots
from keycloak_policy_bridge.decision_log.rows import PendingAppend
from keycloak_policy_bridge.errors import DecisionLogError


class GroupCommit:
    """The leader/follower queue of one writer (module docstring).

    Args:
        write: commits one batch (see the contract above).
    """

    def __init__(self, write: Callable[[list[PendingAppend]], None]) -> None:
        self._write = write
        self._mutex = threading.Lock()  # guards _pending, _leading and _closed
        self._pending: list[PendingAppend] = []
        self._leading = False  # a leader is committing (or about to): new entries wait for it
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Refuse every later entry (entries already queued are still written by their leader)."""
        with self._mutex:
            self._closed = True

    def submit(self, entry: PendingAppend) -> int:
        """Commit ``entry`` with whatever else is queued; return how many entries this thread
        wrote as a leader (0 when another thread wrote its entry, or when the log is closed).
        On return ``entry.done`` is set, with its ``hash`` or its ``error``."""
        written = 0
        with app_slots.released():  # from here on this thread only waits, or waits on the database
            with self._mutex:
                if self._closed:
                    entry.error, entry.done = DecisionLogError("the log is closed"), True
                    return 0
                self._pending.append(entry)
                lead = not self._leading
                self._leading = True
            if not lead:
                entry.wake.acquire()  # written by a leader, or made the leader
            while not entry.done:  # the leader: write everything queued so far, own entry included
                with self._mutex:
                    batch, self._pending = self._pending, []
                self._write(batch)
                written += len(batch)
                with self._mutex:
                    for other in batch:
                        if other is not entry:
                            other.wake.release()
                    if self._pending:
                        self._pending[0].wake.release()  # the oldest waiter leads the next commit
                    else:
                        self._leading = False
        return written
