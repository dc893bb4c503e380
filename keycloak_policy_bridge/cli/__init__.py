"""``kpb``: the command-line adapter. Each module registers one command group on ``main``."""

from keycloak_policy_bridge.cli import decisions, entitlements, evaluate, policy, serve  # noqa: F401  (they register commands)
from keycloak_policy_bridge.cli import explain  # noqa: F401  (registers kpb explain)
from keycloak_policy_bridge.cli import replay  # noqa: F401  (registers kpb replay and kpb drift)
from keycloak_policy_bridge.cli.app import main

__all__ = ["main"]
