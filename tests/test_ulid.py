"""ULID encoding (decision ids)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keycloak_policy_bridge.ulid import make_ulid


def test_matches_the_spec_example_timestamp() -> None:
    # The ULID spec's example: 1469918176385 ms encodes as 01ARYZ6S41.
    assert make_ulid(datetime.fromtimestamp(1469918176.385, UTC), bytes(10)).startswith("01ARYZ6S41")


def test_sorts_by_time_and_uses_the_entropy() -> None:
    t = datetime(2026, 11, 28, tzinfo=UTC)
    a, b = make_ulid(t, b"\xff" * 10), make_ulid(t + timedelta(milliseconds=1), bytes(10))
    assert len(a) == 26 and a < b
    assert make_ulid(t, b"\x01" * 10) != make_ulid(t, b"\x02" * 10)


def test_rejects_short_entropy() -> None:
    with pytest.raises(ValueError):
        make_ulid(datetime(2026, 1, 1, tzinfo=UTC), b"short")
