"""RFC 3339 parsing: offsets required, everything normalized to UTC."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T02:00:04Z", datetime(2026, 11, 28, 2, 0, 4, tzinfo=UTC)),
        ("2026-11-28T03:00:04+01:00", datetime(2026, 11, 28, 2, 0, 4, tzinfo=UTC)),
        ("2026-11-28T02:00:04.5z", datetime(2026, 11, 28, 2, 0, 4, 500000, tzinfo=UTC)),
    ],
)
def test_parse(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("text", ["2026-11-28T02:00:04", "11/28/2026", "", "tomorrow"])
def test_parse_rejects_naive_and_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_format_round_trips() -> None:
    moment = datetime(2026, 11, 28, 2, 0, 4, 120000, tzinfo=UTC)
    assert format_rfc3339(moment) == "2026-11-28T02:00:04.120000Z"
    assert parse_rfc3339(format_rfc3339(moment)) == moment
    assert format_rfc3339(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"
