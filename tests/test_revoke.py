"""Acting on drift (`revoke`): one logout per drifted Keycloak user, failures reported per
subject without stopping the others, and the CLI's refusal to run without its settings."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.drift import DriftedSubject
from keycloak_policy_bridge.errors import KeycloakRevocationError
from keycloak_policy_bridge.revoke import keycloak_admin, revoke


def subject(subject_id: str | None, user_id: str | None) -> DriftedSubject:
    return DriftedSubject(
        subject_id=subject_id,
        keycloak_user_id=user_id,
        decisions=("01M8",),
        claims={"roles": ["crm:write"]},
        denied_now=False,
        reasons=(),
        token_expires_at="2026-11-28T08:05:00Z",
    )


class FakeAdmin:
    def __init__(self, refuse: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.calls: list[str] = []
        self.refuse = refuse

    def user_logout(self, user_id: str) -> dict[str, Any]:
        self.calls.append(user_id)
        if user_id in self.refuse:
            error = RuntimeError("403: forbidden")
            error.response_code = 403  # type: ignore[attr-defined]
            raise error
        return {}


def test_each_drifted_user_is_logged_out_once() -> None:
    admin = FakeAdmin()
    results = revoke([subject("E1001", "u-1"), subject("E1001", "u-1"), subject("S2001", "sa-1")], admin)
    assert admin.calls == ["u-1", "sa-1"]
    assert [(r.subject_id, r.outcome) for r in results] == [("E1001", "revoked"), ("S2001", "revoked")]


def test_a_subject_without_a_keycloak_user_is_skipped_and_says_why() -> None:
    admin = FakeAdmin()
    (result,) = revoke([subject("E9", None)], admin)
    assert admin.calls == [] and result.outcome == "skipped" and "no Keycloak user id" in (result.error or "")


def test_one_failure_does_not_stop_the_others() -> None:
    admin = FakeAdmin(refuse={"u-1"})
    results = revoke([subject("E1001", "u-1"), subject("E1002", "u-2")], admin)
    assert admin.calls == ["u-1", "u-2"]
    assert [(r.outcome, r.error) for r in results] == [("failed", "RuntimeError (HTTP 403)"), ("revoked", None)]


def test_an_unreachable_keycloak_is_one_clear_error_without_the_secret() -> None:
    with pytest.raises(KeycloakRevocationError) as caught:
        keycloak_admin("http://127.0.0.1:9", "acme", "kpb-admin-client", "s3cret-value")
    assert "cannot be reached" in caught.value.message and "s3cret-value" not in str(caught.value)


@pytest.mark.parametrize(
    ("args", "env", "missing"),
    [
        ([], {}, "--keycloak-url, --realm, --admin-client, the secret in $KPB_KEYCLOAK_ADMIN_SECRET"),
        (
            ["--keycloak-url", "http://127.0.0.1:9", "--realm", "acme", "--admin-client", "c"],
            {},
            "the secret in $KPB_KEYCLOAK_ADMIN_SECRET",
        ),
    ],
)
def test_drift_revoke_refuses_to_start_without_its_settings(args: list[str], env: dict[str, str], missing: str) -> None:
    result = CliRunner().invoke(
        main,
        ["drift", "--log", "x.db", "--policy", "p.json", "--entitlements", "e", "--revoke", *args],
        env={"KPB_KEYCLOAK_ADMIN_SECRET": "", **env},
    )
    assert result.exit_code == 2
    assert f"--revoke needs {missing}" in result.output
