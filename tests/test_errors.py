"""The one error tree: every error the adapters answer is a class of errors.py, with a stable
code and status (the wire codes clients and tests depend on)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from conftest import ROOT
from keycloak_policy_bridge import bridge, errors
from keycloak_policy_bridge.errors import (
    AdminDisabledError,
    BridgeError,
    DuplicateFeedError,
    ForbiddenError,
    InternalError,
    NotReadyError,
    ReplayGateError,
    SnapshotRejectedError,
)

ADAPTERS = [
    ROOT / "keycloak_policy_bridge" / "api",
    ROOT / "keycloak_policy_bridge" / "cli",
    ROOT / "keycloak_policy_bridge" / "workers.py",
]


@pytest.mark.parametrize(
    ("cls", "code", "status"),
    [
        (NotReadyError, "not_ready", 503),
        (AdminDisabledError, "admin_disabled", 503),
        (ForbiddenError, "forbidden", 403),
        (ReplayGateError, "replay_gate", 409),
        (SnapshotRejectedError, "snapshot_rejected", 422),
        (InternalError, "internal_error", 500),
        (DuplicateFeedError, "duplicate_feed", 500),
    ],
)
def test_the_adapters_codes_are_error_classes_with_their_wire_codes(cls: type[BridgeError], code: str, status: int) -> None:
    assert issubclass(cls, BridgeError)
    assert (cls.code, cls.http_status) == (code, status)
    assert cls.__module__ == "keycloak_policy_bridge.errors"
    assert inspect.getdoc(cls), f"{cls.__name__}: the docstring says when it is raised"


def test_not_ready_error_lives_in_the_error_tree() -> None:
    assert "class NotReadyError" not in inspect.getsource(bridge)
    assert vars(bridge)["NotReadyError"] is errors.NotReadyError  # what Bridge.decide raises (imported there)


def test_every_error_code_is_unique_and_snake_case() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BridgeError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), "two error classes share a code"
    assert all(code.replace("_", "a").isalpha() and code.islower() for code in codes)


def _adapter_sources() -> list[Path]:
    files: list[Path] = []
    for path in ADAPTERS:
        files.extend(sorted(path.glob("*.py")) if path.is_dir() else [path])
    return files


def test_the_adapters_define_no_error_class_of_their_own() -> None:
    for path in _adapter_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and _is_error(node)]
        assert not defined, f"{path.relative_to(ROOT)}: error classes belong in errors.py: {defined}"


def _is_error(node: ast.AST) -> bool:
    return isinstance(node, ast.ClassDef) and any(isinstance(base, ast.Name) and base.id.endswith("Error") for base in node.bases)
