"""Operations endpoints and hooks (issue 5): metrics, OpenAPI, structured logs.

``observe_decision`` and ``observe_failure`` are called by the claims route. (Filled in by the
operations work.)
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask

ops = Blueprint("ops", __name__)


def observe_decision(app: Flask, response: dict[str, Any], seconds: float) -> None:
    """Called after each recorded decision."""


def observe_failure(app: Flask, code: str) -> None:
    """Called when a claims request fails (its error code)."""
