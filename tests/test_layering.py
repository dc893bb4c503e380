"""setup.cfg's import-linter contracts cover the whole core: a new module cannot slip past them."""

from __future__ import annotations

import configparser
import pkgutil

import keycloak_policy_bridge
from conftest import ROOT

ADAPTERS = {"api", "cli", "wsgi", "workers"}
CORE_CONTRACTS = ("core-no-frameworks", "core-no-adapters")


def _contract_sources(name: str) -> set[str]:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return set(config[f"importlinter:contract:{name}"]["source_modules"].split())


def test_the_core_contracts_list_every_module_but_the_adapters() -> None:
    modules = {m.name for m in pkgutil.iter_modules(keycloak_policy_bridge.__path__)}
    assert ADAPTERS <= modules, "an adapter was renamed: update ADAPTERS and setup.cfg"
    core = {f"keycloak_policy_bridge.{name}" for name in modules - ADAPTERS}
    for contract in CORE_CONTRACTS:
        assert _contract_sources(contract) == core, f"setup.cfg [importlinter:contract:{contract}] source_modules"
