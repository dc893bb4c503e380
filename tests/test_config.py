"""Settings from the environment: secrets never printed, contradictory settings refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.errors import ConfigError

SECRET = "3f" * 16 + "a1" * 16  # 32 bytes, hex
# The shapes an operator gets wrong (security review, defect 6): the secret alone, a colon or a
# blank instead of '=', a secret with a stray character, a key id that is really the secret.
MALFORMED = [SECRET, f"sec1:{SECRET}", f"sec1 {SECRET}", f"sec1={SECRET}g", f"{SECRET}!={SECRET}", f"k1={SECRET},{SECRET}"]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_secret_list_is_refused_without_printing_the_secret(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": value})
    text = str(err.value) + repr(err.value.issues)
    assert "KPB_HMAC_SECRETS" in text and "entry" in text
    assert SECRET not in text and SECRET[:16] not in text and SECRET[-16:] not in text


def test_a_short_or_non_hex_secret_names_the_entry_and_its_key_id_only() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": f"k1={SECRET},k2=abcd"})
    (issue,) = err.value.issues
    assert issue.message == "entry 2 of 2 (key id 'k2'): the secret has 2 bytes; at least 32 are required"
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": f"k1=zz{SECRET}"})
    assert err.value.issues[0].message == "entry 1 of 1 (key id 'k1'): the secret is not hexadecimal"


def test_a_duplicate_key_id_is_an_error_not_a_silent_override() -> None:
    other = "ab" * 32
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": f"k1={SECRET},k1={other}"})
    assert [i.message for i in err.value.issues] == ["entry 2 of 2: key id 'k1' is given twice (each key id names one secret)"]
    assert other not in str(err.value)
    assert Settings.from_env({"KPB_HMAC_SECRETS": f"k1={SECRET},k2={other}"}).hmac_secrets == (
        ("k1", bytes.fromhex(SECRET)), ("k2", bytes.fromhex(other)))  # fmt: skip


def test_insecure_dev_together_with_a_caller_secret_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": f"k1={SECRET}", "KPB_INSECURE_DEV": "1"})
    assert [i.path for i in err.value.issues] == ["KPB_INSECURE_DEV"]
    assert SECRET not in str(err.value)


def test_a_list_of_separators_is_no_secret_at_all() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"KPB_HMAC_SECRETS": " , ,"})
    assert err.value.issues[0].path == "KPB_HMAC_SECRETS" and "is required" in err.value.issues[0].message


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KPB_")}
    return {**env, **extra}


@pytest.mark.parametrize("value", MALFORMED[:3])
def test_kpb_serve_exits_2_without_the_secret_in_its_output(value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "keycloak_policy_bridge.cli", "serve"], cwd=ROOT,
                            env=_clean_env(KPB_HMAC_SECRETS=value), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "KPB_HMAC_SECRETS" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_plain_gunicorn_on_the_wsgi_app_stops_with_the_message_and_no_traceback() -> None:
    """Operators may run gunicorn themselves; the module then reads the settings in the worker."""
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "--workers", "1", "--no-control-socket",
                "keycloak_policy_bridge.wsgi:app"]  # fmt: skip
    result = subprocess.run(gunicorn, cwd=ROOT, env=_clean_env(KPB_HMAC_SECRETS=f"sec1:{SECRET}"), capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "KPB_HMAC_SECRETS: entry 1 of 1" in output, output
    assert SECRET not in output and "Traceback" not in output
