"""keycloak-policy-bridge: token claims as governed, recorded policy decisions.

The core (``policy``, ``engine``, ``entitlements``, ``decision``) is plain Python with no
framework imports; the CLI and (later) the Flask API are thin adapters over it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
