"""ULID encoding (decision ids)."""

from __future__ import annotations

import random
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


def test_matches_the_spec_s_bit_by_bit_encoding() -> None:
    """The 26 characters are the 130-bit number (2 zero bits, 48-bit time, 80-bit entropy) in
    Crockford base32, most significant first: checked against that definition, written plainly."""
    rng = random.Random(20261203)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    for _ in range(2000):
        millis, entropy = rng.randrange(253_402_300_799_000), rng.randbytes(10)  # up to year 9999, datetime's limit
        number = (millis << 80) | int.from_bytes(entropy, "big")
        expected = "".join(alphabet[(number >> (5 * (25 - i))) & 31] for i in range(26))
        moment = datetime.fromtimestamp(millis / 1000, UTC)
        if int(moment.timestamp() * 1000) != millis:  # float rounding of the instant itself; not what is tested
            continue
        assert make_ulid(moment, entropy) == expected
