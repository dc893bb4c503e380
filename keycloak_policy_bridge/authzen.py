"""The bridge as an OpenID AuthZEN 1.0 policy decision point: requests mapped to claims requests,
decisions mapped back (issue 16). Framework-free; ``api/authzen.py`` is the HTTP adapter.

The mapping contract (docs/authzen.md is its reference):

* **Subject.** ``subject.id`` is joined to an IGA identity like a claims request's subject, in the
  contract's order: Keycloak user id, Keycloak client id, username, e-mail (the last two
  case-insensitively, and never to an identity pinned to another Keycloak id, which denies:
  ``kpb:identity-mismatch``). ``subject.type`` ``user`` is a person or any principal: every key
  is tried, e-mail only when ``subject.properties.email_verified`` is ``true``. ``client``,
  ``service_account`` and ``agent`` are a client principal: only the user id and the client id
  are tried, with the kind hint ``service_account`` (client, service_account) or ``agent``.
* **What a PEP may describe** (the Keycloak mapper in AuthZEN mode does). A subject property
  named like a claims request subject field (``SUBJECT_FIELDS``; ``keycloak_user_id`` is its
  ``id``) fills that field; a ``user`` whose properties name an identity key
  (``IDENTITY_PROPERTIES``) is taken as described, ``subject.id`` not tried as the other keys.
  ``attributes``, when an object, is the attributes; else the other properties that have an
  attribute's shape (a string, or a list of strings) are. Context fields named like claims
  request fields fill them: ``realm``, ``client_id``, ``client_attributes`` (the client's
  attributes), ``TOP_LEVEL_CONTEXT`` (``audience``: an empty list is none asked, absent is the
  gate's ``audience`` resource) and ``CONTEXT_FACTS`` (the claims request's ``context``); for a
  gate, ``context.event`` is the event. The claims request schema validates the result; a
  problem is located at the AuthZEN field the value came from. All properties and the whole
  context stay visible to CEL (below).
* **Event and context.** The policy is evaluated with event ``authzen`` (a rule's
  ``when.events`` can name it), grant type ``authzen``, and CEL sees ``context.authzen`` =
  ``{"subject", "action": {"name", "properties"}, "resource": {"type", "id", "properties"},
  "context": <the AuthZEN context>}``. The claims request's client is ``context.client_id``,
  else the caller's (a bearer token's ``azp``), else ``authzen``; its realm is
  ``context.realm``, else ``authzen``.
* **Claims are resources.** Resource ``{type: T, id: V}`` is ``true`` iff the decision permits
  and claim ``T`` holds ``V`` (equals it, or contains it when a list; a value that is not a
  string is compared as its JSON text). A resource search for type ``T`` returns claim ``T``'s
  values as ``{type: T, id: <value>}``. A type that no granted claim names is ``false`` / empty.
* **Token-issuance gate.** Action ``issue:<token_type>:<grant_type>`` is evaluated as a claims
  request with that grant type and event ``token`` (a resource of type ``audience`` is its
  audience); the evaluation is ``true`` iff the decision permits, whatever the resource, and its
  context carries ``issuance`` as the token-issuance profile draft shapes it: the governed
  ``claims`` and ``token_lifetime`` (the policy's ``max_ttl_seconds``, a ceiling), with the
  policy's ``remove_claims`` beside it in the context. A search with such an action reads the claims of
  that token-shaped request.
* **Reasons.** Every answer's context carries ``decision_id``. A ``false`` one carries
  ``reason_user``, text an end user may read (the policy's ``user_message``); never rule ids,
  conditions or export rows, which stay in the decision log. ``reason_admin`` (the reasons,
  rule by rule) only when the caller is an administrator.
* **Batches.** Top-level ``subject``, ``action``, ``resource`` and ``context`` are defaults for
  each item; each item is its own recorded decision; ``options.evaluations_semantic``:
  ``execute_all`` (the default: every item, in order), ``deny_on_first_deny`` (stop after the
  first ``false``), ``permit_on_first_permit`` (stop after the first ``true``); the answer
  lists the items evaluated, in request order. Without items it is one evaluation.
* **Pagination.** A search page's ``next_token`` is ``PageTokens``' MAC over the request (all
  of it but ``page.token``) and the offset: a forged, altered or mismatched token is a
  ``RequestError``.

Errors: ``RequestError`` (400) with one ``Issue`` per problem, located by JSON path, never
echoing a value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import jsonschema
from referencing import Registry
from referencing import Resource as SchemaResource
from referencing.jsonschema import DRAFT202012

from keycloak_policy_bridge.canonical import canonical_json
from keycloak_policy_bridge.decision import DEFAULT_USER_MESSAGE, Decision, value_label
from keycloak_policy_bridge.errors import Issue, RequestError
from keycloak_policy_bridge.json_schema import json_path, load_schema
from keycloak_policy_bridge.json_schema import validator as json_validator

EVENT = "authzen"
GRANT_TYPE = "authzen"  # the claims request's grant type outside the gate
DEFAULT_CLIENT_ID = "authzen"
DEFAULT_REALM = "authzen"
GATE_PREFIX = "issue:"
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
MAX_PAGE = 1000  # results per search page, whatever page.limit asks
CLIENT_KINDS = {"client": "service_account", "service_account": "service_account", "agent": "agent"}
SCHEMAS = (
    "authzen-evaluation-request.schema.json",
    "authzen-evaluations-request.schema.json",
    "authzen-search-request.schema.json",
    "authzen-responses.schema.json",
)
_ATTRIBUTES_MAX, _ATTRIBUTE_LENGTH, _ATTRIBUTE_ITEMS = 128, 4096, 256  # the claims request's attribute limits
CLAIMS_SCHEMA = "claims-request.v1.schema.json"
# Subject properties and context fields named like a claims request's fields fill those fields
# (the module docstring; docs/authzen.md "What a PEP may describe").
KEYCLOAK_ID_PROPERTY = "keycloak_user_id"  # the claims request's subject.id
SUBJECT_FIELDS = (
    "username",
    "email",
    "email_verified",
    "kind_hint",
    "service_account_client_id",
    "attributes",
    "directory_roles",
    "groups",
    "auth",
)
IDENTITY_PROPERTIES = (KEYCLOAK_ID_PROPERTY, "username", "email", "service_account_client_id")
TOP_LEVEL_CONTEXT = ("issuer", "requested_scopes", "audience", "actors", "attempt")
CONTEXT_FACTS = ("ip", "user_agent", "tenant", "device", "risk")


@dataclass(frozen=True)
class Subject:
    type: str
    id: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class Action:
    name: str
    properties: dict[str, Any]

    @property
    def gate(self) -> tuple[str, str] | None:
        """(token type, grant type) of an ``issue:<token_type>:<grant_type>`` action, else None
        (a grant type may hold colons: the token-exchange URN)."""
        if not self.name.startswith(GATE_PREFIX):
            return None
        token_type, sep, grant_type = self.name[len(GATE_PREFIX) :].partition(":")
        return (token_type, grant_type) if sep and token_type and grant_type else None


@dataclass(frozen=True)
class Resource:
    type: str
    id: str | None  # None in a search
    properties: dict[str, Any]


@dataclass(frozen=True)
class Evaluation:
    """One validated access evaluation (or the query of a search: ``resource.id`` None)."""

    subject: Subject
    action: Action
    resource: Resource
    context: dict[str, Any]

    def view(self) -> dict[str, Any]:
        """``context.authzen`` as CEL sees it and the decision log records it."""
        resource: dict[str, Any] = {"type": self.resource.type, "properties": self.resource.properties}
        if self.resource.id is not None:
            resource["id"] = self.resource.id
        return {
            "subject": {"type": self.subject.type, "id": self.subject.id, "properties": self.subject.properties},
            "action": {"name": self.action.name, "properties": self.action.properties},
            "resource": resource,
            "context": self.context,
        }


@dataclass(frozen=True)
class Batch:
    """A validated evaluations request: the merged items (empty: answer as one evaluation of
    ``single``), and the semantic."""

    items: tuple[Evaluation, ...]
    semantic: str
    single: Evaluation | None


@dataclass(frozen=True)
class Search:
    """A validated resource search: the query, the page size, the previous page's token, and
    ``binding``: the request without its token, which that token must have been issued for."""

    query: Evaluation
    limit: int
    token: str | None
    binding: bytes


# -- parsing -------------------------------------------------------------------------------------


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resources(
        (load_schema(n)["$id"], SchemaResource.from_contents(load_schema(n), default_specification=DRAFT202012)) for n in SCHEMAS
    )
    return jsonschema.Draft202012Validator(load_schema(name), registry=registry)


def check(name: str, document: Any, *, where: tuple[Any, ...] = ()) -> list[Issue]:
    """Every way ``document`` fails the shipped AuthZEN schema ``name`` (or the definition
    ``#/$defs/<where[0]>`` of it, for the responses), by JSON path, never quoting a value."""
    validator = _validator(name)
    if where:
        validator = validator.evolve(schema={"$ref": f"{load_schema(name)['$id']}#/$defs/{where[0]}"})
    found = {(json_path(e.absolute_path), _describe(e)) for e in validator.iter_errors(document)}
    return [Issue(path, message, "invalid_request") for path, message in sorted(found)]


def _describe(error: jsonschema.ValidationError) -> str:
    keyword = error.validator
    if keyword == "required":  # the name is the schema's, never the request's
        return f"required field '{error.message.split(chr(39))[1]}' is missing"
    if keyword == "type":
        return f"must be of type {error.validator_value}"
    if keyword == "enum":
        return "must be one of " + ", ".join(str(v) for v in error.validator_value)
    if keyword in ("maxLength", "minLength", "minimum", "maxItems"):
        return f"violates {keyword} {error.validator_value}"
    return f"fails {keyword}"


def _raise(issues: list[Issue], what: str) -> None:
    if issues:
        raise RequestError(f"{what} is invalid: {len(issues)} problem(s)", issues)


def _evaluation(document: Mapping[str, Any]) -> Evaluation:
    subject, action, resource = document["subject"], document["action"], document["resource"]
    return Evaluation(
        Subject(subject["type"], subject["id"], dict(subject.get("properties") or {})),
        Action(action["name"], dict(action.get("properties") or {})),
        Resource(resource["type"], resource.get("id"), dict(resource.get("properties") or {})),
        dict(document.get("context") or {}),
    )


def parse_evaluation(document: Any) -> Evaluation:
    """An access evaluation request, validated.

    Raises:
        RequestError: every problem, by JSON path.
    """
    _raise(check(SCHEMAS[0], document), "AuthZEN evaluation request")
    return _evaluation(document)


def parse_evaluations(document: Any, *, max_items: int) -> Batch:
    """An access evaluations request: validated, the defaults merged into each item, each item
    validated as an evaluation request (its problems located under ``$.evaluations[i]``).

    Raises:
        RequestError: every problem, or more than ``max_items`` items (naming the limit).
    """
    issues = check(SCHEMAS[1], document)
    shaped = isinstance(document, dict) and isinstance(document.get("evaluations", []), list)
    if issues and not (shaped and all(isinstance(item, dict) for item in document.get("evaluations", []))):
        _raise(issues, "AuthZEN evaluations request")
    items = document.get("evaluations") or []
    if len(items) > max_items:
        raise RequestError(
            f"AuthZEN evaluations request is too large: at most {max_items} evaluations per request (KPB_AUTHZEN_MAX_EVALUATIONS)"
        )
    semantic = (document.get("options") or {}).get("evaluations_semantic", SEMANTICS[0])
    defaults = {k: document[k] for k in ("subject", "action", "resource", "context") if k in document}
    if not items:
        _raise(sorted(set(issues) | set(check(SCHEMAS[0], defaults)), key=lambda i: (i.path, i.message)), "AuthZEN evaluations request")
        return Batch((), semantic, _evaluation(defaults))
    found = set(issues)
    merged = []
    for index, item in enumerate(items):
        one = {**defaults, **item}
        # A default's own problems are reported once, at its top-level path.
        found.update(Issue(f"$.evaluations[{index}]" + p.path[1:], p.message, p.code) for p in check(SCHEMAS[0], one) if p.path == "$")
        merged.append(one)
    _raise(sorted(found, key=lambda i: (i.path, i.message)), "AuthZEN evaluations request")
    return Batch(tuple(_evaluation(one) for one in merged), semantic, None)


def parse_search(document: Any) -> Search:
    """A resource search request, validated; the resource's id, if any, is ignored.

    Raises:
        RequestError: every problem, by JSON path.
    """
    _raise(check(SCHEMAS[2], document), "AuthZEN resource search request")
    page = document.get("page") or {}
    query = _evaluation({**document, "resource": {k: v for k, v in document["resource"].items() if k != "id"}})
    limit = min(page.get("limit", MAX_PAGE), MAX_PAGE)
    bound = {k: document.get(k) for k in ("subject", "action", "context")}
    bound["resource"] = {k: v for k, v in document["resource"].items() if k != "id"}
    bound["page"] = {k: v for k, v in page.items() if k != "token"}
    return Search(query, limit, page.get("token"), canonical_json(bound))


# -- mapping to a claims request ----------------------------------------------------------------


def claims_request(evaluation: Evaluation, *, request_id: str, caller_client_id: str | None = None) -> dict[str, Any]:
    """The claims request (contract v1 document, event ``authzen`` or, for a gate, ``token``)
    that decides ``evaluation``; see the module docstring for each field.

    Raises:
        RequestError: a subject property or context field named like a claims request field
            holds a value that field cannot (one ``Issue`` per problem, located at the AuthZEN
            field it came from, never quoting the value).
    """
    subject, properties, context = evaluation.subject, evaluation.subject.properties, evaluation.context
    origins: dict[str, str] = {}  # claims request path -> the AuthZEN path its value came from
    kind = CLIENT_KINDS.get(subject.type)
    mapped: dict[str, Any] = {"id": subject.id}
    origins["$.subject.id"] = "$.subject.id"
    if kind is not None:  # a client principal: the client id and the user id only
        mapped.update(service_account_client_id=subject.id, kind_hint=kind)
        origins["$.subject.service_account_client_id"] = "$.subject.id"
    elif not any(key in properties for key in IDENTITY_PROPERTIES):  # user, undescribed: every join key
        mapped.update(service_account_client_id=subject.id, username=subject.id, kind_hint=None)
        origins.update({"$.subject.service_account_client_id": "$.subject.id", "$.subject.username": "$.subject.id"})
        if "@" in subject.id:
            mapped.update(email=subject.id, email_verified=properties.get("email_verified") is True)
            origins["$.subject.email"] = "$.subject.id"
    for name in (KEYCLOAK_ID_PROPERTY, *SUBJECT_FIELDS):
        if name in properties and name != "attributes":
            field = "id" if name == KEYCLOAK_ID_PROPERTY else name
            mapped[field] = properties[name]
            origins[f"$.subject.{field}"] = f"$.subject.properties.{name}"
    if isinstance(properties.get("attributes"), dict):
        mapped["attributes"] = properties["attributes"]
        origins["$.subject.attributes"] = "$.subject.properties.attributes"
    else:
        mapped["attributes"] = _attributes({k: v for k, v in properties.items() if k not in SUBJECT_FIELDS and k != KEYCLOAK_ID_PROPERTY})
    gate = evaluation.action.gate
    event = context.get("event", "token") if gate else EVENT
    document: dict[str, Any] = {
        "version": "1",
        "request_id": request_id,
        "realm": context.get("realm", DEFAULT_REALM),
        "event": event,
        "grant_type": gate[1] if gate else GRANT_TYPE,
        "client": {"client_id": context.get("client_id", caller_client_id or DEFAULT_CLIENT_ID)},
        "subject": mapped,
    }
    origins.update({"$.realm": "$.context.realm", "$.client.client_id": "$.context.client_id", "$.grant_type": "$.action.name"})
    if gate:
        origins["$.event"] = "$.context.event"
    if "client_attributes" in context:
        document["client"]["attributes"] = context["client_attributes"]
        origins["$.client.attributes"] = "$.context.client_attributes"
    for name in TOP_LEVEL_CONTEXT:
        if name in context:
            document[name] = context[name]
            origins[f"$.{name}"] = f"$.context.{name}"
    if "audience" in context:
        if document["audience"] == []:  # as the mapper's /v1/claims request: no audience asked
            del document["audience"]
    elif evaluation.resource.type == "audience" and evaluation.resource.id:
        document["audience"] = [evaluation.resource.id]
        origins["$.audience"] = "$.resource.id"
    facts: dict[str, Any] = {name: context[name] for name in CONTEXT_FACTS if name in context}
    origins.update({f"$.context.{name}": f"$.context.{name}" for name in facts})
    document["context"] = {**facts, "authzen": evaluation.view()}
    _raise(_claims_issues(document, origins), "AuthZEN request")
    return document


def _claims_issues(document: dict[str, Any], origins: Mapping[str, str]) -> list[Issue]:
    """The claims request schema's problems with ``document``, each located at the AuthZEN path
    its value came from (the longest origin that is a prefix of the claims request path)."""
    found = set()
    for error in json_validator(CLAIMS_SCHEMA).iter_errors(document):
        path = json_path(error.absolute_path)
        prefix = max((p for p in origins if path == p or path.startswith((p + ".", p + "["))), key=len, default=None)
        located = origins[prefix] + path[len(prefix) :] if prefix is not None else path
        found.add(Issue(located, _describe(error), "invalid_request"))
    return sorted(found, key=lambda i: (i.path, i.message))


def _attributes(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The properties that have a claims request attribute's shape (string, list of strings)."""
    out: dict[str, Any] = {}
    for name in sorted(properties)[:_ATTRIBUTES_MAX]:
        value = properties[name]
        if isinstance(value, str) and len(value) <= _ATTRIBUTE_LENGTH:
            out[name] = value
        elif (
            isinstance(value, list)
            and len(value) <= _ATTRIBUTE_ITEMS
            and all(isinstance(v, str) and len(v) <= _ATTRIBUTE_LENGTH for v in value)
        ):
            out[name] = value
    return out


# -- mapping decisions back ----------------------------------------------------------------------


def holds(decision: Decision, claim: str, value: str) -> bool:
    """True iff ``decision`` permits and its claim ``claim`` is ``value`` or contains it."""
    if not decision.permitted or claim not in decision.claims:
        return False
    granted = decision.claims[claim]
    return any(value_label(v) == value for v in (granted if isinstance(granted, list) else [granted]))


def claim_ids(decision: Decision, claim: str) -> list[str]:
    """Claim ``claim``'s values as resource ids, in the decision's order (none on deny)."""
    if not decision.permitted or claim not in decision.claims:
        return []
    granted = decision.claims[claim]
    return [value_label(v) for v in (granted if isinstance(granted, list) else [granted])]


def _reasons(decision: Decision, allowed: bool, *, admin: bool, why: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not allowed:
        out["reason_user"] = (decision.user_message if not decision.permitted else None) or DEFAULT_USER_MESSAGE
    if admin and (decision.reasons or not allowed):
        lines = [f"{r.rule}: {r.message}" for r in decision.reasons]
        if not allowed and (decision.permitted or not lines):
            lines.append(why)
        out["reason_admin"] = "; ".join(lines)
    return out


def evaluation_response(evaluation: Evaluation, decision: Decision, decision_id: str, *, admin: bool = False) -> dict[str, Any]:
    """The AuthZEN decision for ``evaluation`` from the recorded ``decision``."""
    context: dict[str, Any] = {"decision_id": decision_id}
    if evaluation.action.gate:
        allowed, why = decision.permitted, "the policy denied"
        if allowed:
            # context.issuance holds only members of the token-issuance profile draft (an
            # authorization server denies on one it cannot apply); remove_claims sits beside it.
            issuance: dict[str, Any] = {"claims": decision.claims}
            if decision.max_ttl_seconds is not None:
                issuance["token_lifetime"] = decision.max_ttl_seconds
            context["issuance"] = issuance
            if decision.remove_claims:
                context["remove_claims"] = list(decision.remove_claims)
    else:
        assert evaluation.resource.id is not None  # an evaluation request's resource has an id (schema)
        allowed = holds(decision, evaluation.resource.type, evaluation.resource.id)
        why = "the policy denied" if not decision.permitted else f"the granted claims do not hold this {evaluation.resource.type} value"
    context.update(_reasons(decision, allowed, admin=admin, why=why))
    return {"decision": allowed, "context": context}


def search_response(
    search: Search, decision: Decision, decision_id: str, offset: int, tokens: PageTokens, *, admin: bool = False
) -> dict[str, Any]:
    """One page of a resource search from the recorded ``decision``: results from ``offset``,
    at most ``search.limit``, with ``page.next_token`` (empty on the last page)."""
    ids = claim_ids(decision, search.query.resource.type)
    page = ids[offset : offset + search.limit]
    following = offset + len(page)
    next_token = tokens.issue(search.binding, following) if following < len(ids) else ""
    context: dict[str, Any] = {"decision_id": decision_id}
    if not decision.permitted:
        context.update(_reasons(decision, False, admin=admin, why="the policy denied"))
    return {
        "page": {"next_token": next_token, "count": len(page), "total": len(ids)},
        "context": context,
        "results": [{"type": search.query.resource.type, "id": value} for value in page],
    }


def run_batch(batch: Batch, evaluate: Callable[[int, Evaluation], dict[str, Any]]) -> list[dict[str, Any]]:
    """Evaluate ``batch.items`` in order with ``evaluate(index, item)`` (which records each
    decision), stopping as the semantic says; the answers of the items evaluated, in order."""
    answers = []
    for index, item in enumerate(batch.items):
        answer = evaluate(index, item)
        answers.append(answer)
        if (batch.semantic == "deny_on_first_deny" and not answer["decision"]) or (
            batch.semantic == "permit_on_first_permit" and answer["decision"]
        ):
            break
    return answers


# -- page tokens ---------------------------------------------------------------------------------


class PageTokens:
    """Opaque, tamper-evident search page tokens: ``base64url(offset "." MAC)`` where the MAC
    (HMAC-SHA256, truncated to 128 bits) covers the request binding and the offset.

    Args:
        key: the MAC key (``page_key``).
    """

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, binding: bytes, offset: int) -> str:
        digest = hmac.new(self._key, b"kpb-authzen-page-v1\n" + binding + b"\n" + str(offset).encode(), hashlib.sha256).digest()
        return digest[:16].hex()

    def issue(self, binding: bytes, offset: int) -> str:
        """The token of the page starting at ``offset`` of the request ``binding``."""
        return base64.urlsafe_b64encode(f"{offset}.{self._mac(binding, offset)}".encode()).decode().rstrip("=")

    def offset(self, token: str, binding: bytes) -> int:
        """The offset ``token`` was issued for, if it was issued for ``binding``.

        Raises:
            RequestError: the token is malformed, forged, or belongs to another request.
        """
        problem = RequestError(
            "page.token is not a token this bridge issued for this request (every field but page.token must be unchanged)"
        )
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise problem from None
        offset_text, _, mac = text.partition(".")
        if not offset_text.isdigit() or len(offset_text) > 9 or not hmac.compare_digest(mac, self._mac(binding, int(offset_text))):
            raise problem
        return int(offset_text)


def page_key(secrets: Iterable[bytes]) -> bytes:
    """The page-token key, derived from the service's secrets (the first one); a fixed public
    key when there are none (insecure development: the callers are not authenticated either)."""
    first = next(iter(secrets), b"kpb-insecure-dev")
    return hmac.new(first, b"kpb authzen page tokens v1", hashlib.sha256).digest()
