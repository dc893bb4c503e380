"""Application slots: how many requests of a worker process run Python at once.

A gthread worker reads each request in its own thread but lets only a few of them run the
application at a time (``workers.APP_SLOTS``): under one GIL, more runnable threads only lengthen
every request's latency. A request that then *waits* without running Python (for its decision
record to be committed and fsynced, which takes milliseconds of disk time) should not keep its
slot: another request can validate and decide meanwhile, and its record joins the next group
commit. This module is that contract, free of any server framework:

* ``held(slots)``: the server runs the application for one request inside it (the current
  thread takes a slot of ``slots`` and remembers it);
* ``released()``: code that blocks without needing the GIL (``decision_log``'s group-commit wait)
  runs inside it: the current thread's slot, if it holds one, is given back for the wait and
  taken again before the code continues. Outside ``held`` (tests, CLI, other servers) it does
  nothing.

Thread-safety: the slot a thread holds is thread-local; ``slots`` is any semaphore.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Slots(Protocol):
    """What a semaphore offers (``threading.Semaphore``, ``BoundedSemaphore``)."""

    def acquire(self, blocking: bool = ..., timeout: float | None = ...) -> bool: ...

    def release(self, n: int = ...) -> None: ...


_local = threading.local()


@contextmanager
def held(slots: Slots) -> Iterator[None]:
    """Run the body holding one of ``slots`` (waiting for one if none is free)."""
    slots.acquire()
    _local.slots = slots
    try:
        yield
    finally:
        _local.slots = None
        slots.release()


@contextmanager
def released() -> Iterator[None]:
    """Run the body without the current thread's slot (none held: no effect)."""
    slots: Slots | None = getattr(_local, "slots", None)
    if slots is None:
        yield
        return
    _local.slots = None
    slots.release()
    try:
        yield
    finally:
        slots.acquire()
        _local.slots = slots
