"""Admin API (issue 5): decisions, explain, replay, policy and entitlement reloads.

Registered by ``create_app``; every route requires a bearer JWT from Keycloak with the admin
realm role. (Filled in by the admin-API work.)
"""

from __future__ import annotations

from flask import Blueprint

admin = Blueprint("admin", __name__)
