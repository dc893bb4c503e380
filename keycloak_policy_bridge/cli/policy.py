"""`kpb policy`: validate, test and print the schema of policy documents."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from keycloak_policy_bridge.cli.app import fail, main
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.json_schema import load_schema
from keycloak_policy_bridge.policy import POLICY_SCHEMA, load_policy
from keycloak_policy_bridge.policy_suite import run_suite


@main.group()
def policy() -> None:
    """Validate, test and inspect policy documents."""


@policy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def policy_validate(files: tuple[str, ...]) -> None:
    """Validate policy FILES: schema, CEL, references, reserved claims.

    Prints every problem with its JSON path and exits 1; prints a one-line summary per valid
    file and exits 0.

    \b
    Example:
      kpb policy validate examples/acme/policy.json
    """
    failed = False
    for name in files:
        try:
            compiled = load_policy(name)
        except BridgeError as exc:
            failed = True
            click.echo(f"{name}: INVALID: {exc.message}")
            for issue in exc.issues:
                click.echo(f"  {issue.path}: {issue.message}")
            continue
        click.echo(f"{name}: OK: {compiled.summary()}")
        for warning in compiled.warnings:
            click.echo(f"  warning: {warning.path}: {warning.message}", err=True)
    sys.exit(1 if failed else 0)


@policy.command("test")
@click.argument("policy_file", type=click.Path(dir_okay=False))
@click.argument("suites", nargs=-1, required=True, type=click.Path())
@click.option("--verbose", "-v", is_flag=True, help="Also list passing cases.")
def policy_test(policy_file: str, suites: tuple[str, ...], verbose: bool) -> None:
    """Run policy test SUITES (files, or directories of *.json) against POLICY_FILE.

    \b
    Example:
      kpb policy test examples/acme/policy.json examples/acme/tests/
    """
    try:
        compiled = load_policy(policy_file)
    except BridgeError as exc:
        fail(exc, 2)
    paths: list[Path] = []
    for suite in suites:
        path = Path(suite)
        paths.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    passed = failed = 0
    for path in paths:
        try:
            results = run_suite(compiled, path)
        except BridgeError as exc:
            fail(exc, 2)
        for result in results:
            if result.passed:
                passed += 1
                if verbose:
                    click.echo(f"PASS {path.name} :: {result.name}")
                continue
            failed += 1
            click.echo(f"FAIL {path.name} :: {result.name}")
            for failure in result.failures:
                click.echo(f"  {failure}")
            reasons = [f"{r['rule']}({r['kind']}): {r['message']}" for r in result.actual["reasons"]]
            if reasons:
                click.echo("  reasons: " + "; ".join(reasons))
    click.echo(f"policy-tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


@policy.command("schema")
def policy_schema() -> None:
    """Print the policy JSON Schema (point an editor's $schema at a saved copy)."""
    click.echo(json.dumps(load_schema(POLICY_SCHEMA), indent=2))
