"""``kpb``: the command-line adapter. Each module registers one command group on ``main``."""

# Imported for what importing does: each module registers its commands (explain: kpb explain;
# replay: kpb replay and kpb drift; the others their groups).
from keycloak_policy_bridge.cli import decisions, entitlements, evaluate, explain, policy, replay, serve  # noqa: F401
from keycloak_policy_bridge.cli.app import main

__all__ = ["main"]
