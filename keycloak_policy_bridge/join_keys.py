"""The subject join keys: which request field carries which IGA identity field, and how it compares.

One table, read by every module that joins a Keycloak principal to an IGA identity or undoes a
masked key: the engine's subject lookup, the recorder (masking the identities it records),
replay and explain (clearing masked keys again). Contract v1 section 2 fixes the order: user id,
service-account client id, username, e-mail; username and e-mail compare case-insensitively, so
they are compared, and hashed when masked, lower-cased.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JoinKey:
    """One join key: the identity field (``Identity`` attribute, export column) and the request's
    ``subject`` field that carries it; ``folded`` keys compare lower-cased."""

    field: str
    request_field: str
    folded: bool

    @property
    def path(self) -> str:
        """The request path, as masking configuration names it (``subject.email``)."""
        return f"subject.{self.request_field}"

    def normalize(self, value: str) -> str:
        """The form in which the key is compared and hashed."""
        return value.lower() if self.folded else value


# In the contract's join order.
JOIN_KEYS: tuple[JoinKey, ...] = (
    JoinKey("keycloak_user_id", "id", folded=False),
    JoinKey("keycloak_client_id", "service_account_client_id", folded=False),
    JoinKey("username", "username", folded=True),
    JoinKey("email", "email", folded=True),
)
BY_FIELD: Mapping[str, JoinKey] = {k.field: k for k in JOIN_KEYS}
BY_PATH: Mapping[str, JoinKey] = {k.path: k for k in JOIN_KEYS}


def request_keys(subject: Mapping[str, Any]) -> dict[str, Any]:
    """The join keys a request's ``subject`` carries, by identity field (``Snapshot.resolve``'s
    keyword arguments, without the verification flag and the options)."""
    return {k.field: subject.get(k.request_field) for k in JOIN_KEYS}


def folded_path(path: str) -> bool:
    """True when a masked request path holds a key compared lower-cased (hashed lower-cased too)."""
    key = BY_PATH.get(path)
    return key is not None and key.folded
