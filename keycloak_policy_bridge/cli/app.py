"""The ``kpb`` click group and what every command shares.

Exit codes: 0 success; 1 a validation failure, a failing policy test, a rejected snapshot or a
replay that changed something; 2 a usage error or an input that cannot be read (click's
convention). Commands call the core and format its result; they never ``sys.exit`` inside it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import NoReturn

import click

from keycloak_policy_bridge import __version__
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.timeutil import parse_rfc3339


def fail(exc: BridgeError, code: int = 1) -> NoReturn:
    click.echo(f"error [{exc.code}]: {exc}", err=True)
    sys.exit(code)


def parse_now(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)  # the adapter owns the clock; the engine never reads it
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise click.BadParameter("must be an RFC 3339 timestamp with an offset, e.g. 2026-11-28T08:00:00Z", param_hint="--now") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kpb")
def main() -> None:
    """keycloak-policy-bridge: governed, recorded token claims for Keycloak."""
