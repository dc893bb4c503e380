"""Policy test suites: requests with expected decisions, run against a candidate policy.

The shape follows Cerbos test suites and ``opa test``: a suite file names a base entitlement
snapshot and a fixed ``now``, then lists cases, each a request (inline, or a file with an optional
deep-merge patch) and the expectations that must hold. ``kpb policy test`` runs suites and
exits 1 when any case fails; expected and actual are printed side by side.

Expectations (all optional; every one given must hold):
  effect            "permit" | "deny"
  claims            the exact claims object
  claims_include    each listed claim: list claims must contain these values, others be equal
  claims_exclude    claim names that must be absent, or {claim: [values]} that must be absent
  max_ttl_seconds   exact value (null: no cap)
  remove_claims     exact list
  reasons           each pattern ({rule, kind, claim, message_contains}) must match a reason
  user_message      exact text the refused user reads (null: none, as on a permit)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keycloak_policy_bridge import strict_json
from keycloak_policy_bridge.context_feed import ContextFeed, feed_from_document, load_feed
from keycloak_policy_bridge.engine import evaluate
from keycloak_policy_bridge.entitlements import Snapshot, snapshot_from_document
from keycloak_policy_bridge.errors import BridgeError, PolicyTestFileError
from keycloak_policy_bridge.json_schema import schema_issues
from keycloak_policy_bridge.policy import Policy
from keycloak_policy_bridge.request import parse_request
from keycloak_policy_bridge.snapshot_loader import load_snapshot
from keycloak_policy_bridge.timeutil import parse_rfc3339


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case. ``failures`` is empty when it passed."""

    suite: str
    name: str
    failures: tuple[str, ...]
    actual: dict[str, Any]

    @property
    def passed(self) -> bool:
        return not self.failures


def load_suite(path: str | Path) -> dict[str, Any]:
    """Read and schema-check a suite file.

    Raises:
        PolicyTestFileError: unreadable, not JSON, or not a valid suite (every problem listed).
    """
    location = str(path)
    try:
        document = strict_json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise PolicyTestFileError(f"{location}: cannot read ({exc.strerror})") from None
    except strict_json.StrictJsonError as exc:
        where = "" if exc.path == "$" else f"{exc.path}, "
        raise PolicyTestFileError(f"{location}: not valid JSON ({where}line {exc.line} column {exc.column}): {exc.reason}") from None
    issues = schema_issues("policy-tests.v1.schema.json", document)
    if issues:
        raise PolicyTestFileError(f"{location}: not a valid policy test file", issues)
    suite: dict[str, Any] = document
    return suite


def run_suite(policy: Policy, path: str | Path) -> list[CaseResult]:
    """Run every case of the suite at ``path`` against ``policy``.

    Raises:
        PolicyTestFileError: the suite, a request file or an entitlement source it names is bad.
    """
    suite_path = Path(path)
    suite = load_suite(suite_path)
    base = suite_path.parent
    snapshots: dict[str, Snapshot] = {}
    feed_cache: dict[str, ContextFeed] = {}
    default_now = suite.get("now")
    default_entitlements = suite.get("entitlements")
    results = []
    for index, case in enumerate(suite["tests"]):
        where = f"{suite_path}: tests[{index}] ({case['name']})"
        now_text = case.get("now", default_now)
        if now_text is None:
            raise PolicyTestFileError(f"{where}: no 'now' in the case or the suite")
        try:
            now = parse_rfc3339(now_text)
        except ValueError:
            raise PolicyTestFileError(f"{where}: 'now' is not an RFC 3339 timestamp with an offset") from None
        source = case.get("entitlements", default_entitlements)
        if source is None:
            raise PolicyTestFileError(f"{where}: no 'entitlements' in the case or the suite")
        snapshot = _snapshot(source, base, snapshots, where)
        feeds = {**suite.get("feeds", {}), **case.get("feeds", {})}
        loaded_feeds = {name: _feed(name, spec, base, feed_cache, where) for name, spec in feeds.items() if spec is not None}
        document = _request_document(case, base, where)
        try:
            request = parse_request(document)
        except BridgeError as exc:
            raise PolicyTestFileError(f"{where}: request is invalid", exc.issues) from None
        decision = evaluate(policy, snapshot, request, now, loaded_feeds)
        actual = decision.response("test")
        results.append(CaseResult(str(suite.get("name", suite_path.name)), case["name"], tuple(_check(case["expect"], actual)), actual))
    return results


def _snapshot(source: Any, base: Path, cache: dict[str, Snapshot], where: str) -> Snapshot:
    key = json.dumps(source, sort_keys=True) if not isinstance(source, str) else str((base / source).resolve())
    if key not in cache:
        try:
            cache[key] = load_snapshot(base / source) if isinstance(source, str) else snapshot_from_document(source, where)
        except BridgeError as exc:
            raise PolicyTestFileError(f"{where}: entitlements: {exc.message}", exc.issues) from None
    return cache[key]


def _feed(name: str, spec: Any, base: Path, cache: dict[str, ContextFeed], where: str) -> ContextFeed:
    key = json.dumps([name, spec], sort_keys=True) if not isinstance(spec, str) else str((base / spec).resolve())
    if key not in cache:
        try:
            cache[key] = load_feed(base / spec) if isinstance(spec, str) else feed_from_document(name, spec, where)
        except BridgeError as exc:
            raise PolicyTestFileError(f"{where}: feeds.{name}: {exc.message}", exc.issues) from None
    return cache[key]


def _request_document(case: dict[str, Any], base: Path, where: str) -> Any:
    request = case["request"]
    if isinstance(request, str):
        try:
            request = strict_json.loads((base / request).read_bytes())  # what the service would accept
        except (OSError, strict_json.StrictJsonError) as exc:
            raise PolicyTestFileError(f"{where}: cannot read request file '{request}' ({exc})") from None
    else:
        request = copy.deepcopy(request)
    if "request_patch" in case:
        request = merge_patch(request, case["request_patch"])
    return request


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check(expect: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    failures = []
    claims = actual["claims"]
    if "effect" in expect and expect["effect"] != actual["effect"]:
        failures.append(f"effect: expected {expect['effect']}, got {actual['effect']}")
    if "claims" in expect and expect["claims"] != claims:
        failures.append(f"claims: expected {_j(expect['claims'])}, got {_j(claims)}")
    for claim, want in expect.get("claims_include", {}).items():
        have = claims.get(claim)
        if isinstance(want, list) and isinstance(have, list):
            missing = [v for v in want if v not in have]
            if missing:
                failures.append(f"claims.{claim}: expected to include {_j(missing)}, got {_j(have)}")
        elif have != want:
            failures.append(f"claims.{claim}: expected {_j(want)}, got {_j(have)}")
    exclude = expect.get("claims_exclude", [])
    if isinstance(exclude, list):
        for claim in exclude:
            if claim in claims:
                failures.append(f"claims.{claim}: expected absent, got {_j(claims[claim])}")
    else:
        for claim, values in exclude.items():
            have = claims.get(claim)
            present = [v for v in values if isinstance(have, list) and v in have or have == v]
            if present:
                failures.append(f"claims.{claim}: expected not to contain {_j(present)}, got {_j(have)}")
    if "max_ttl_seconds" in expect and expect["max_ttl_seconds"] != actual.get("max_ttl_seconds"):
        failures.append(f"max_ttl_seconds: expected {_j(expect['max_ttl_seconds'])}, got {_j(actual.get('max_ttl_seconds'))}")
    if "remove_claims" in expect and sorted(expect["remove_claims"]) != sorted(actual["remove_claims"]):
        failures.append(f"remove_claims: expected {_j(expect['remove_claims'])}, got {_j(actual['remove_claims'])}")
    for pattern in expect.get("reasons", []):
        if not any(_reason_matches(pattern, r) for r in actual["reasons"]):
            got = [f"{r['rule']}/{r['kind']}" for r in actual["reasons"]] or ["none"]
            failures.append(f"reasons: expected one matching {_j(pattern)}, got {', '.join(got)}")
    if "user_message" in expect and expect["user_message"] != actual.get("user_message"):
        failures.append(f"user_message: expected {_j(expect['user_message'])}, got {_j(actual.get('user_message'))}")
    return failures


def _reason_matches(pattern: dict[str, Any], reason: dict[str, Any]) -> bool:
    for key, value in pattern.items():
        if key == "message_contains":
            if value not in reason["message"]:
                return False
        elif reason.get(key) != value:
            return False
    return True


def _j(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
