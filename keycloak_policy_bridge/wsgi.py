"""WSGI entry point: ``gunicorn 'keycloak_policy_bridge.wsgi:app'`` (settings from ``KPB_*``)."""

from __future__ import annotations

import atexit
import os
import sys
from datetime import UTC, datetime

from keycloak_policy_bridge import cel_native
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.bridge_watcher import BridgeWatcher
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.errors import ConfigError
from keycloak_policy_bridge.logging_json import configure as configure_logging


def _clock() -> datetime:
    return datetime.now(UTC)


configure_logging(os.environ.get("KPB_LOG_LEVEL", "INFO"))  # one JSON object per line, keyed by decision_id
try:
    settings = Settings.from_env(os.environ)
except ConfigError as exc:
    # Every problem, each naming its variable (never a secret), and no traceback: exit code 3 is
    # gunicorn's worker-boot error, on which the arbiter stops rather than respawning forever.
    sys.stderr.write(f"kpb: {exc}\n")
    raise SystemExit(3) from None
cel_native.ENABLED = settings.cel_native  # the core keeps a plain flag; the adapter sets it from the settings
bridge = bridge_from_settings(settings, _clock)
watcher = BridgeWatcher(bridge, settings.watch_interval_seconds, _clock)
watcher.start()  # reloads, policy sync and heartbeats, off the request path; woken by the replica channel
atexit.register(bridge.channel.close)  # a worker that exits cleanly is gone from the replicas at once
atexit.register(watcher.stop)  # runs first (last registered): no heartbeat after the channel closed
app = create_app(bridge, settings, clock=_clock)
