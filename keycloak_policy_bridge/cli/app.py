"""The ``kpb`` click group and what every command shares.

Exit codes: 0 success; 1 a validation failure, a failing policy test, a rejected snapshot or a
replay that changed something; 2 a usage error or an input that cannot be read (click's
convention). Commands call the core and format its result; they never ``sys.exit`` inside it.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from keycloak_policy_bridge import __version__
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.timeutil import parse_rfc3339

if TYPE_CHECKING:
    from keycloak_policy_bridge.entitlements import Snapshot


def fail(exc: BridgeError, code: int = 1) -> NoReturn:
    click.echo(f"error [{exc.code}]: {exc}", err=True)
    sys.exit(code)


def load_export(directory: str | Path) -> Snapshot:
    """The snapshot of an export directory, for commands that evaluate against it (evaluate,
    explain, replay, drift).

    With ``KPB_SNAPSHOT_CACHE`` set to a directory (as on a bridge's host), the export's compiled
    file is used, compiled there first if no bridge has yet: a ten-million-row estate opens in
    milliseconds instead of loading for minutes into this process. Otherwise it is loaded here.

    Raises:
        EntitlementSourceError: the export is rejected.
    """
    from keycloak_policy_bridge.snapshot_loader import load_snapshot

    cache = os.environ.get("KPB_SNAPSHOT_CACHE", "").strip()
    if not cache or cache.lower() == "memory":
        return load_snapshot(directory)
    from keycloak_policy_bridge.snapshot_compiler import compile_export

    return compile_export(directory, cache)[1]


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
