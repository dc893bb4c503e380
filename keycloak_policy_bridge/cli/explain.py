"""`kpb explain`: why a recorded decision (or a token carrying its id) has the claims it has."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from keycloak_policy_bridge.cli.app import fail, load_export, main, parse_now
from keycloak_policy_bridge.cli.decisions import LOG_OPTION, open_log, open_policies
from keycloak_policy_bridge.cli.replay import MASK_KEY_OPTION, masker_from_env
from keycloak_policy_bridge.context_feed import load_feeds
from keycloak_policy_bridge.errors import BridgeError, TokenError
from keycloak_policy_bridge.explain import CurrentInputs, Explanation, GrantSource, explain
from keycloak_policy_bridge.policy import Policy, load_policy
from keycloak_policy_bridge.record import DecisionRecord
from keycloak_policy_bridge.reevaluate import PolicyCache
from keycloak_policy_bridge.token import TokenFindings, decision_id_of, decode_unverified, explain_token, token_header, verify_token


@main.command("explain")
@click.argument("decision_id", required=False)
@LOG_OPTION
@click.option("--token", "token_text", help="A JWT carrying authz_decision_id, or - to read it from stdin. Never printed.")
@click.option(
    "--policy", "policy_file", type=click.Path(dir_okay=False), help="The current policy, to tell whether each value is still granted."
)
@click.option("--entitlements", "snapshot_dir", type=click.Path(file_okay=False), help="The current snapshot directory (with --policy).")
@click.option("--feed", "feed_dirs", multiple=True, type=click.Path(file_okay=False), help="A current context feed directory (repeatable).")
@MASK_KEY_OPTION
@click.option("--jwks-url", help="Verify the token with the JWKS at this URL (Keycloak: <issuer>/protocol/openid-connect/certs).")
@click.option("--jwks", "jwks_file", type=click.Path(dir_okay=False), help="Verify the token with the JWKS in this file.")
@click.option("--public-key", "public_key_file", type=click.Path(dir_okay=False), help="Verify the token with this PEM public key.")
@click.option("--issuer", help="Require this iss.")
@click.option("--audience", help="Require this aud.")
@click.option("--leeway", type=click.IntRange(min=0), default=0, show_default=True, help="Clock skew allowed for exp/nbf/iat (seconds).")
@click.option("--no-verify", is_flag=True, help="Read the token without verifying it (output is labelled UNVERIFIED).")
@click.option("--now", "now_text", help="The instant to judge expiry and re-evaluate at (RFC 3339); default: now.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
def explain_command(
    decision_id: str | None,
    log_path: str | None,
    token_text: str | None,
    policy_file: str | None,
    snapshot_dir: str | None,
    feed_dirs: tuple[str, ...],
    mask_key_env: str,
    jwks_url: str | None,
    jwks_file: str | None,
    public_key_file: str | None,
    issuer: str | None,
    audience: str | None,
    leeway: int,
    no_verify: bool,
    now_text: str | None,
    as_json: bool,
) -> None:
    """Explain a recorded decision: per claim value, the rule, its condition and the
    entitlement records (file:line) behind it; with current inputs, whether it is still granted.

    With --token, the token is verified first (unless --no-verify), its authz_decision_id is
    explained, and every claim the decision does not account for is reported.

    A subject joined by a masked key is joined to the current snapshot with the masking key
    (read from the variable --mask-key-env names), as kpb replay does; without it, the recorded
    decision is still explained and the current part is reported as unresolvable.

    Exit codes: 0 explained (and the token, if any, is fully accounted for); 1 the token has
    claims the decision does not account for; 2 an error (unknown decision, bad signature,
    alg none, expired token, unknown algorithm, unreadable log).

    \b
    Examples:
      kpb explain 01JD... --log decisions.db
      kpb explain 01JD... --log decisions.db --policy policy.json --entitlements snapshot/ --feed feeds/risk
      kpb explain --token "$JWT" --log decisions.db --jwks-url https://kc/realms/acme/protocol/openid-connect/certs \\
          --issuer https://kc/realms/acme
    """
    now = parse_now(now_text)
    key_options = [o for o, v in (("--jwks-url", jwks_url), ("--jwks", jwks_file), ("--public-key", public_key_file)) if v]
    if (decision_id is None) == (token_text is None):
        raise click.UsageError("give either a decision ID or --token, not both and not neither")
    if (policy_file is None) != (snapshot_dir is None):
        raise click.UsageError("--policy and --entitlements go together (the current policy and snapshot)")
    if feed_dirs and policy_file is None:
        raise click.UsageError("--feed needs --policy and --entitlements")
    if token_text is None and (key_options or no_verify or issuer or audience):
        raise click.UsageError("--jwks-url, --jwks, --public-key, --issuer, --audience and --no-verify apply to --token")
    if token_text is not None:
        if no_verify and (key_options or issuer or audience):
            raise click.UsageError("--no-verify cannot be combined with a key, --issuer or --audience")
        if not no_verify and len(key_options) != 1:
            raise click.UsageError("give exactly one of --jwks-url, --jwks or --public-key to verify the token, or --no-verify")

    token_info: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None
    try:
        if token_text is not None:
            token = _read_token(token_text)
            header = token_header(token)
            if no_verify:
                claims = decode_unverified(token)
            else:
                claims = verify_token(
                    token,
                    jwks=_read_jwks(jwks_file) if jwks_file else None,
                    jwks_url=jwks_url,
                    public_key_pem=_read_pem(public_key_file) if public_key_file else None,
                    issuer=issuer,
                    audience=audience,
                    now=now,
                    leeway=leeway,
                )
            alg, kid = header.get("alg"), header.get("kid")
            token_info = {
                "verified": not no_verify,
                "alg": alg if isinstance(alg, str) else None,
                "kid": kid if isinstance(kid, str) else None,
                "issuer_checked": issuer,
                "audience_checked": audience,
            }
            decision_id = decision_id_of(claims)
        assert decision_id is not None
        record, recorded_policy = _read_log(log_path, decision_id)
        current: CurrentInputs | None = None
        if policy_file is not None and snapshot_dir is not None:
            current = (load_policy(policy_file), load_export(snapshot_dir), load_feeds(feed_dirs))
        explanation = explain(record, recorded_policy, current=current, now=now, masker=masker_from_env(mask_key_env))
        findings = explain_token(claims, record) if claims is not None else None
    except BridgeError as exc:
        _fail(exc)

    if as_json:
        document: dict[str, Any] = {"explanation": explanation.to_dict()}
        if token_info is not None and findings is not None:
            document = {"token": token_info, "decision_id": explanation.decision_id, **document, "findings": findings.to_dict()}
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        lines: list[str] = []
        if token_info is not None:
            lines += _token_lines(token_info)
        lines += _explanation_lines(explanation, mask_key_env)
        if findings is not None:
            lines += _finding_lines(findings)
        click.echo("\n".join(lines))
    if findings is not None and not findings.clean:
        sys.exit(1)


def _fail(exc: BridgeError) -> NoReturn:
    fail(exc, 2)
    raise AssertionError("unreachable")  # fail exits


def _read_token(text: str) -> str:
    token = sys.stdin.read() if text == "-" else text
    token = token.strip()
    if not token:
        raise TokenError("no token given")
    return token


def _read_jwks(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the JWKS file ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TokenError(f"{path}: the JWKS file is not JSON") from None


def _read_pem(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the public key file ({exc.strerror})") from None


def _read_log(log_path: str | None, decision_id: str) -> tuple[DecisionRecord, Policy]:
    """The record and the policy it was evaluated with, from the log ``decisions.open_log``
    finds (a file or a database); opened only for reading.

    Raises:
        DecisionNotFoundError, DecisionLogError: as ``DecisionLogReader.get`` and ``PolicyCache.get``.
    """
    record = open_log(log_path).get(decision_id)
    return record, PolicyCache(open_policies(log_path)).get(record.policy_digest)


# -- human output ------------------------------------------------------------------------------


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _token_lines(info: dict[str, Any]) -> list[str]:
    if not info["verified"]:
        head = "token: UNVERIFIED (--no-verify): signature, expiry, issuer and audience were NOT checked"
    else:
        checks = [f"{info['alg']} signature", "exp/nbf"]
        if info["issuer_checked"]:
            checks.append(f"iss = {info['issuer_checked']}")
        if info["audience_checked"]:
            checks.append(f"aud includes {info['audience_checked']}")
        head = f"token: verified ({', '.join(checks)}" + (f"; key {info['kid']}" if info["kid"] else "") + ")"
    return [head]


def _explanation_lines(e: Explanation, mask_key_env: str) -> list[str]:
    lines = [
        f"decision {e.decision_id}: {e.effect.upper()} at {e.evaluated_at}",
        f"  policy {e.policy_id} {e.policy_version} ({e.policy_digest[:19]}), snapshot {e.snapshot_digest[:19]}",
    ]
    for p in e.principals:
        lines.append(
            f"  {p.get('role')}: {p.get('subject_id') or '(not in the IGA snapshot)'} ({p.get('kind')}, {p.get('status')}, "
            f"joined by {p.get('matched_by') or 'nothing'})"
        )
    if e.masked:
        lines.append(f"  masked in the record: {', '.join(e.masked)}")
    if e.values:
        lines.append("claims:")
    for v in e.values:
        lines.append(f"  {v.claim} = {_value(v.value)}")
        if v.note:
            lines.append(f"    {v.note}")
        for s in v.sources:
            lines += _source_lines(s)
        if v.still_granted is not None:
            lines.append(f"    still granted now: {'yes' if v.still_granted else 'no'}")
            for r in v.now_reasons:
                rule = f"{r['rule']}: " if r.get("rule") else ""
                lines.append(f"      [{r.get('kind')}] {rule}{r.get('message')}")
    if e.remove_claims:
        lines.append(f"removed claims: {', '.join(e.remove_claims)}")
    if e.max_ttl_seconds is not None:
        lines.append(f"token lifetime capped at {e.max_ttl_seconds}s")
    if e.reasons:
        lines.append("reasons:" if e.effect == "permit" else "denied because:")
    for reason in e.reasons:
        where = f" ({reason.evaluation_pass} pass)" if reason.evaluation_pass else ""
        lines.append(f"  [{reason.kind}] {reason.rule.id}{where}: {reason.message}")
        if reason.rule.path:
            info = reason.rule
            lines.append(f"    rule {info.path}: {info.description}" if info.description else f"    rule {info.path}")
            lines.append(f"    condition: {info.condition}" if info.condition else "    condition: none (the rule's scope alone)")
        elif reason.rule.builtin:
            lines.append(f"    {reason.rule.description}")
        elif not reason.rule.known:
            lines.append("    (this rule id is not in the recorded policy)")
    if e.current is not None:
        c = e.current
        lines.append(
            f"now: {c.effect.upper()} under {c.policy['id']} {c.policy['version']} ({c.policy['digest'][:19]}), "
            f"snapshot {c.snapshot_digest[:19]}, at {c.evaluated_at}"
        )
        if e.effect != "permit" or c.effect != "permit":
            for r in c.reasons:
                lines.append(f"  [{r.get('kind')}] {r.get('rule')}: {r.get('message')}")
    if e.unresolvable is not None:
        lines.append(f"now: UNRESOLVABLE: {e.unresolvable}")
        if "masking key" in e.unresolvable:
            lines.append(f"  (the masking key is read from the environment variable {mask_key_env})")
    for note in e.notes:
        lines.append(f"note: {note}")
    return lines


def _source_lines(s: GrantSource) -> list[str]:
    rule = s.rule
    lines = [f"    granted by rule {rule.id} ({s.evaluation_pass} pass)" + (f" at {rule.path}" if rule.path else "")]
    if rule.description:
        lines.append(f"      {rule.description}")
    if rule.known and not rule.builtin:
        lines.append(f"      condition: {rule.condition}" if rule.condition else "      condition: none (the rule's scope alone)")
    elif not rule.known:
        lines.append("      (this rule id is not in the recorded policy)")
    if s.grant_path:
        lines.append(f"      claim: {s.grant_path} {s.grant_form or ''}".rstrip())
    for r in s.records:
        certified = f", last certified {r.last_certified_at}" if r.last_certified_at else ", never certified"
        via = f"{r.via} {r.via_id}".strip() or "-"
        lines.append(
            f"      record {r.origin}: {r.subject_id} {r.source} {r.kind} {r.value} "
            f"({r.privilege_level}, via {via}, account {r.account or '-'}{certified})"
        )
    return lines


def _finding_lines(f: TokenFindings) -> list[str]:
    if f.clean:
        return ["findings: none; every claim in the token is accounted for by the decision"]
    lines = [f"findings: {len(f.findings)} claim(s) not accounted for by the decision"]
    for item in f.findings:
        detail = ""
        if item.extra:
            detail += " extra: " + ", ".join(_value(v) for v in item.extra)
        if item.missing:
            detail += (";" if detail else "") + " missing: " + ", ".join(_value(v) for v in item.missing)
        lines.append(f"  {item.claim} [{item.kind}]: {item.message}" + (f" ({detail.strip()})" if detail else ""))
    return lines
