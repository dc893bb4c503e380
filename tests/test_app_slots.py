"""app_slots: a request holds a slot while it runs Python and gives it back while it only waits."""

from __future__ import annotations

import threading

from keycloak_policy_bridge import app_slots


def test_released_gives_the_slot_back_for_the_wait_and_takes_it_again() -> None:
    slots = threading.BoundedSemaphore(1)
    with app_slots.held(slots):
        assert not slots.acquire(blocking=False)  # the one slot is ours
        with app_slots.released():
            assert slots.acquire(blocking=False)  # free while we wait: another request may run
            slots.release()
        assert not slots.acquire(blocking=False)  # ours again
    assert slots.acquire(blocking=False)  # and free after the request
    slots.release()


def test_released_outside_a_request_does_nothing() -> None:
    with app_slots.released():  # CLI, tests, another server: no slot, nothing to give back
        pass


def test_a_waiting_request_lets_another_one_run() -> None:
    slots = threading.BoundedSemaphore(1)
    waiting, ran = threading.Event(), threading.Event()

    def first() -> None:
        with app_slots.held(slots), app_slots.released():
            waiting.set()
            assert ran.wait(5)  # the second request ran while this one waited

    def second() -> None:
        assert waiting.wait(5)
        with app_slots.held(slots):
            ran.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert ran.is_set() and not any(t.is_alive() for t in threads)


def test_the_slot_is_taken_again_even_when_the_wait_raises() -> None:
    slots = threading.BoundedSemaphore(1)
    with app_slots.held(slots):
        try:
            with app_slots.released():
                raise RuntimeError("the write failed")
        except RuntimeError:
            pass
        assert not slots.acquire(blocking=False)
    assert slots.acquire(blocking=False)
