"""`kpb evaluate`: one claims request, offline, with the service's engine."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from keycloak_policy_bridge import strict_json
from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.cli.app import fail, load_export, main, parse_now
from keycloak_policy_bridge.context_feed import load_feeds
from keycloak_policy_bridge.decision_log import SQLiteDecisionLog, SQLitePolicyStore
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.errors import BridgeError, RequestError
from keycloak_policy_bridge.policy import load_policy
from keycloak_policy_bridge.record import Masker, build_record
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.ulid import make_ulid


@main.command("evaluate")
@click.option("--policy", "policy_file", required=True, type=click.Path(dir_okay=False), help="Policy JSON file.")
@click.option("--entitlements", "snapshot_dir", required=True, type=click.Path(file_okay=False), help="Snapshot directory.")
@click.option(
    "--request", "request_file", required=True, type=click.Path(dir_okay=False, allow_dash=True), help="Request JSON file, or - for stdin."
)
@click.option("--now", "now_text", help="Evaluation instant (RFC 3339); default: the current time.")
@click.option("--feed", "feed_dirs", multiple=True, type=click.Path(file_okay=False), help="A context feed directory (repeatable).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Record the decision in this decision log (created if missing).")
@click.option("--mask", "mask_paths", multiple=True, help="Request path to store as a keyed hash in the log, e.g. context.ip (repeatable).")
@click.option("--mask-key-env", default="KPB_MASK_KEY", show_default=True, help="Environment variable holding the masking key.")
@click.option(
    "--format",
    "output",
    type=click.Choice(["json", "text"]),
    default="json",
    show_default=True,
    help="json: the contract-v1 response; text: a short human summary.",
)
def evaluate_command(
    policy_file: str,
    snapshot_dir: str,
    request_file: str,
    now_text: str | None,
    feed_dirs: tuple[str, ...],
    log_path: str | None,
    mask_paths: tuple[str, ...],
    mask_key_env: str,
    output: str,
) -> None:
    """Evaluate one claims request offline, with the engine the service uses.

    Prints the contract-v1 response on stdout and exits 0 for permit and deny alike; an
    invalid input exits 2 with the problem on stderr. The decision id is derived from the
    inputs, so the same inputs and --now print the same document.

    \b
    Example:
      kpb evaluate --policy examples/acme/policy.json --entitlements examples/acme/entitlements \\
          --request examples/acme/requests/alice-login.json --now 2026-11-28T08:00:00Z
    """
    now = parse_now(now_text)
    try:
        compiled = load_policy(policy_file)
        snapshot = load_export(snapshot_dir)
        feeds = load_feeds(feed_dirs)  # a feed name given twice exits 2, as in every command
        document = _read_request(request_file)
        request = parse_request(document)
    except BridgeError as exc:
        fail(exc, 2)
    decision = evaluate(compiled, snapshot, request, now, feeds)
    seed = hashlib.sha256(canonical_json([compiled.digest, snapshot.digest, sorted(f.digest for f in feeds.values()), document])).digest()
    # Offline, the id is derived from the inputs (same inputs, same document); a recorded
    # decision is an event and gets a fresh id.
    decision_id = make_ulid(now, os.urandom(10) if log_path else seed)
    if log_path:
        masker = None
        if mask_paths:
            key = os.environ.get(mask_key_env, "")
            if not key:
                fail(BridgeError(f"--mask needs a masking key in the environment variable {mask_key_env}"), 2)
            masker = Masker(mask_paths, key.encode())
        try:
            log = SQLiteDecisionLog(Path(log_path))
            SQLitePolicyStore(Path(log_path)).store_policy(compiled.document)
            log.append(build_record(decision_id, decision, request, snapshot, feeds, masker=masker))
        except BridgeError as exc:
            fail(exc, 2)  # never print a decision that was not recorded
    response = decision.response(decision_id)
    if output == "json":
        click.echo(json.dumps(response, indent=2, ensure_ascii=False))
        return
    click.echo(_summary(response))


def _summary(response: dict[str, Any]) -> str:
    """A few lines a person reads at a glance: effect, claims, lifetime cap, reasons."""
    lines = [f"{response['effect'].upper()}  decision {response['decision_id']}"]
    for claim, value in response["claims"].items():
        lines.append(f"  {claim} = {json.dumps(value, ensure_ascii=False)}")
    if "max_ttl_seconds" in response:
        lines.append(f"  max_ttl_seconds = {response['max_ttl_seconds']}")
    if response["remove_claims"]:
        lines.append(f"  remove_claims = {', '.join(response['remove_claims'])}")
    for reason in response["reasons"]:
        lines.append(f"  [{reason['kind']}] {reason['rule']}: {reason['message']}")
    return "\n".join(lines)


def _read_request(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise RequestError(f"{path}: cannot read request ({exc.strerror})") from None
    try:
        return strict_json.loads(text)  # the service's parser: what it would refuse, this refuses
    except strict_json.StrictJsonError as exc:
        where = "" if exc.path == "$" else f"{exc.path}, "
        raise RequestError(f"{path}: not valid JSON ({where}line {exc.line} column {exc.column}): {exc.reason}") from None
