"""Settings from the environment: secrets never printed, contradictory settings refused, no
default pointing into examples/, and a feed name given once."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ACME, ACME_SERVICE_ENV, ROOT
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.errors import ConfigError

SECRET = "3f" * 16 + "a1" * 16  # 32 bytes, hex
# The shapes an operator gets wrong (security review, defect 6): the secret alone, a colon or a
# blank instead of '=', a secret with a stray character, a key id that is really the secret.
MALFORMED = [SECRET, f"sec1:{SECRET}", f"sec1 {SECRET}", f"sec1={SECRET}g", f"{SECRET}!={SECRET}", f"k1={SECRET},{SECRET}"]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_secret_list_is_refused_without_printing_the_secret(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": value})
    text = str(err.value) + repr(err.value.issues)
    assert "KPB_HMAC_SECRETS" in text and "entry" in text
    assert SECRET not in text and SECRET[:16] not in text and SECRET[-16:] not in text


def test_a_short_or_non_hex_secret_names_the_entry_and_its_key_id_only() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={SECRET},k2=abcd"})
    (issue,) = err.value.issues
    assert issue.message == "entry 2 of 2 (key id 'k2'): the secret has 2 bytes; at least 32 are required"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1=zz{SECRET}"})
    assert err.value.issues[0].message == "entry 1 of 1 (key id 'k1'): the secret is not hexadecimal"


def test_a_duplicate_key_id_is_an_error_not_a_silent_override() -> None:
    other = "ab" * 32
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={SECRET},k1={other}"})
    assert [i.message for i in err.value.issues] == ["entry 2 of 2: key id 'k1' is given twice (each key id names one secret)"]
    assert other not in str(err.value)
    assert Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={SECRET},k2={other}"}).hmac_secrets == (
        ("k1", bytes.fromhex(SECRET)),
        ("k2", bytes.fromhex(other)),
    )


def test_insecure_dev_together_with_a_caller_secret_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": f"k1={SECRET}", "KPB_INSECURE_DEV": "1"})
    assert [i.path for i in err.value.issues] == ["KPB_INSECURE_DEV"]
    assert SECRET not in str(err.value)


def test_a_list_of_separators_is_no_secret_at_all() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_HMAC_SECRETS": " , ,"})
    assert err.value.issues[0].path == "KPB_HMAC_SECRETS" and "is required" in err.value.issues[0].message


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    return {**env, **extra}


@pytest.mark.parametrize("value", MALFORMED[:3])
def test_kpb_serve_exits_2_without_the_secret_in_its_output(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve"],
        cwd=ROOT,
        env=_clean_env(KPB_HMAC_SECRETS=value),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "KPB_HMAC_SECRETS" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_plain_gunicorn_on_the_wsgi_app_stops_with_the_message_and_no_traceback() -> None:
    """Operators may run gunicorn themselves; the module then reads the settings in the worker."""
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-control-socket",
        "keycloak_policy_bridge.wsgi:app",
    ]
    result = subprocess.run(
        gunicorn, cwd=ROOT, env=_clean_env(KPB_HMAC_SECRETS=f"sec1:{SECRET}"), capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "KPB_HMAC_SECRETS: entry 1 of 1" in output, output
    assert SECRET not in output and "Traceback" not in output


# -- required settings: no default into examples/ ------------------------------------------------


def test_the_policy_and_the_export_have_no_default() -> None:
    fields = {field.name: field for field in dataclasses.fields(Settings)}
    assert fields["policy"].default is dataclasses.MISSING and fields["entitlements"].default is dataclasses.MISSING
    assert not [f.name for f in fields.values() if "examples" in str(f.default)], "a setting defaults into examples/"


def test_a_missing_policy_or_export_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_INSECURE_DEV": "1"})
    assert [i.path for i in err.value.issues] == ["KPB_POLICY", "KPB_ENTITLEMENTS"]
    assert all("is required" in i.message for i in err.value.issues)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_INSECURE_DEV": "1", "KPB_POLICY": "p.json", "KPB_ENTITLEMENTS": ""})  # empty is unset
    assert [i.path for i in err.value.issues] == ["KPB_ENTITLEMENTS"]
    settings = Settings.from_env({"KPB_INSECURE_DEV": "1", "KPB_POLICY": "p.json", "KPB_ENTITLEMENTS": "export"})
    assert (settings.policy, settings.entitlements) == (Path("p.json"), Path("export"))


def test_kpb_serve_without_the_policy_and_the_export_exits_2_naming_both() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keycloak_policy_bridge.cli", "serve", "--insecure-dev"],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "KPB_POLICY: is required" in result.stderr and "KPB_ENTITLEMENTS: is required" in result.stderr
    assert "DEMO" not in result.stderr  # kpb serve no longer stages the acme example by itself


# -- feed names ---------------------------------------------------------------------------------


def test_a_feed_name_given_twice_in_kpb_feeds_is_refused_naming_both_directories() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**ACME_SERVICE_ENV, "KPB_INSECURE_DEV": "1", "KPB_FEEDS": "risk=/feeds/a,other=/feeds/b,risk=/feeds/c"})
    (issue,) = err.value.issues
    assert issue.path == "KPB_FEEDS"
    assert issue.message == "two context feeds are named 'risk': /feeds/a and /feeds/c (give each feed name once)"
    two = Settings.from_env({**ACME_SERVICE_ENV, "KPB_INSECURE_DEV": "1", "KPB_FEEDS": "risk=/feeds/a,other=/feeds/b"})
    assert two.feeds == (("risk", Path("/feeds/a")), ("other", Path("/feeds/b")))


def test_kpb_serve_refuses_a_repeated_feed_name_before_starting() -> None:
    risk = str(ACME / "feeds" / "risk")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "keycloak_policy_bridge.cli",
            "serve",
            "--insecure-dev",
            "--feed",
            f"risk={risk}",
            "--feed",
            "risk=/tmp/risk2",
        ],
        cwd=ROOT,
        env=_clean_env(**ACME_SERVICE_ENV),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"KPB_FEEDS: two context feeds are named 'risk': {risk} and /tmp/risk2 (give each feed name once)" in result.stderr


# -- KPB_CEL_NATIVE: a setting, applied by the adapter (the core module never reads the environment) --------


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("1", True), ("On", True), ("yes", True), ("0", False), ("OFF", False), ("false", False)]
)
def test_cel_native_is_a_setting_on_by_default(value: str | None, expected: bool) -> None:
    env = {"KPB_INSECURE_DEV": "1", **ACME_SERVICE_ENV, **({"KPB_CEL_NATIVE": value} if value is not None else {})}
    assert Settings.from_env(env).cel_native is expected


def test_a_cel_native_value_that_is_no_switch_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_INSECURE_DEV": "1", **ACME_SERVICE_ENV, "KPB_CEL_NATIVE": "maybe"})
    assert [i.path for i in err.value.issues] == ["KPB_CEL_NATIVE"]


def test_the_cel_native_module_does_not_read_the_environment_and_the_wsgi_adapter_sets_its_flag() -> None:
    from keycloak_policy_bridge import cel_native

    source = Path(cel_native.__file__).read_text(encoding="utf-8")
    assert "os.environ" not in source and "getenv" not in source and "import os" not in source
    wsgi = (ROOT / "keycloak_policy_bridge" / "wsgi.py").read_text(encoding="utf-8")
    assert "cel_native.ENABLED = settings.cel_native" in wsgi
