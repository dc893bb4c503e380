"""The CEL variables of one evaluation pass, and the expressions run over them (issue 13).

A ``PassScope`` is what the engine's conditions and ``expr`` claims run against in one pass. As
a mapping it holds the pass's variables the way native programs (``cel_native``) read them:
each built-in variable computed on first read and unpruned, each policy variable computed on
first need, natively when its expression allows. An expression with no native program, or whose
program bails, runs in CEL; only then is the ``cel.Context`` built, once per pass, with just the
variables and fields the pass's rules read (``condition.field_uses``). Both paths give the same
values; every error and its message are CEL's.

Two behaviours are kept exactly as they were when CEL ran everything, because decisions record
them: the context feeds' rows count as read (``feed_reads``) when the first expression of a pass
runs, if any rule of the pass reads ``feeds``; and a rule that needs a failed policy variable
fails with ``variable 'x' failed: ...``, the message CEL gave for that variable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from keycloak_policy_bridge import cel_native
from keycloak_policy_bridge.condition import ConditionRuntimeError, Expression, Fields, make_context, prune
from keycloak_policy_bridge.entitlements import Snapshot
from keycloak_policy_bridge.policy import Policy, Rule
from keycloak_policy_bridge.request import ClaimsRequest

# As Policy's own memos: one entry per distinct pass (candidate rules x pass x kinds), few in practice.
_MEMO_LIMIT = 65536


class Principal(Protocol):
    """What a scope reads of a principal (the engine's ``_Principal``)."""

    view: dict[str, Any]

    def entitlement_values(self, kinds: frozenset[str] | None) -> dict[str, list[str]]: ...


class Evaluation(Protocol):
    """What a scope reads of the evaluation it belongs to (the engine's ``_Evaluation``)."""

    policy: Policy
    request: ClaimsRequest
    snapshot: Snapshot
    now: datetime
    age: int
    privileged_stale: bool

    def feed_view(self, principal: Any) -> dict[str, Any]: ...


class PassScope(dict[str, Any]):
    """The expressions of one pass: native programs first, CEL (with its context) when needed.

    As a mapping, the pass's variables as native programs (``cel_native``) read them: unpruned,
    each computed on first read (``__missing__``). When a program bails, or an expression has
    none, the CEL context is built (once, with only the variables and fields the pass's rules
    read) and CEL runs. Both give the same values; every error and its message stay CEL's.
    The scope is its own mapping so that no reference cycle outlives the pass: a cycle per pass
    made the garbage collector run every ~30 evaluations, a pause that showed in the p99.
    """

    __slots__ = (
        "evaluation",
        "principal",
        "subject",
        "actors",
        "rules",
        "needed",
        "fields",
        "context",
        "variable_errors",
        "native",
        "variable_names",
        "variable_exprs",
    )

    def __init__(
        self, evaluation: Evaluation, principal: Principal, subject: Principal, actors: Sequence[Principal], rules: tuple[Rule, ...]
    ) -> None:
        self.evaluation = evaluation
        self.principal = principal
        self.subject = subject
        self.actors = actors
        self.rules = rules
        self.needed: frozenset[str] | None = None  # set by the first run
        self.fields: Fields = {}
        self.context: Any = None
        self.variable_errors: dict[str, str] = {}
        self.native = cel_native.ENABLED
        self.variable_names, self.variable_exprs = _policy_variables(evaluation.policy)

    def run(self, expr: Expression, needs: frozenset[str]) -> Any:
        """The value of ``expr``; ``needs`` is what its rule reads (``Rule.needs``).

        Raises:
            ConditionRuntimeError: CEL failed, or a policy variable in ``needs`` did.
        """
        if self.needed is None:
            self._start()
        native = expr.native
        if native is not None and self.native:
            names = self.variable_names
            if names and not needs.isdisjoint(names):
                for name in needs & names:
                    if name not in self:
                        self._variable(name)
                self._check_variables(needs)
            try:
                value = native(self)
                return value if type(value) is bool else cel_native.export(value)
            except cel_native.Bail:
                pass
        if self.context is None:
            self._build()
        self._check_variables(needs)
        return expr.run(self.context)

    def __missing__(self, name: str) -> Any:
        return self.load(name)

    def _start(self) -> None:
        self.needed, self.fields = _scope(self.evaluation.policy, self.rules)
        if "feeds" in self.needed and "feeds" not in self:
            # Reading the feeds records which rows the decision saw (feed_reads): done when the
            # first expression of a pass runs, whichever path runs it, as it always was.
            self.load("feeds")

    def _check_variables(self, needs: frozenset[str]) -> None:
        if not self.variable_errors:
            return
        failed = needs.intersection(self.variable_errors)
        if failed:
            name = sorted(failed)[0]
            raise ConditionRuntimeError(f"variable '{name}' failed: {self.variable_errors[name]}")

    def load(self, name: str) -> Any:
        """A variable's value for native programs; ``Bail`` when only CEL can give it."""
        provide = _PROVIDERS.get(name)
        if provide is not None:
            value = provide(self)
        elif name in self.variable_names:
            self._variable(name)
            if name not in self:
                raise cel_native.Bail  # it failed: the error is CEL's to report
            return self[name]
        else:
            raise cel_native.Bail
        self[name] = value
        return value

    def _variable(self, name: str) -> None:
        """Compute policy variable ``name`` into the scope, natively if its expression and its
        dependencies allow, else by building the CEL context (which computes them all)."""
        expr = self.variable_exprs[name]
        if self.context is None and expr.native is not None and self.native:
            for dependency in expr.variables & self.variable_names:
                if dependency not in self:
                    self._variable(dependency)
            if self.context is None:
                try:
                    self[name] = expr.native(self)
                    return
                except cel_native.Bail:
                    pass
        if self.context is None:
            self._build()

    def _build(self) -> None:
        if self.needed is None:
            self._start()
        assert self.needed is not None
        ev = self.evaluation
        fields = self.fields
        self.context = make_context({name: prune(self[name], fields.get(name)) for name in self.needed if name in _PROVIDERS})
        # Policy variables are added a dependency level at a time with one update() each:
        # every change to a context makes the runtime rebuild its environment on the next run.
        pending = list(ev.policy.variable_closure(self.needed))
        while pending:
            ready = [(n, e) for n, e in pending if not e.variables.intersection(n2 for n2, _ in pending)]
            if not ready:
                break  # cycles are refused at load; unreachable
            level: dict[str, Any] = {}
            for name, expr in ready:
                failed = expr.variables.intersection(self.variable_errors)
                if failed:
                    self.variable_errors[name] = f"depends on failed variable '{sorted(failed)[0]}'"
                    continue
                try:
                    level[name] = expr.run(self.context)
                except ConditionRuntimeError as exc:
                    self.variable_errors[name] = str(exc)
            if level:
                self.context.update(level)
                for name, value in level.items():
                    self.setdefault(name, value)  # a native value, when there is one, is the same
            done = {n for n, _ in ready}
            pending = [(n, e) for n, e in pending if n not in done]


def _request_view(scope: PassScope) -> dict[str, Any]:
    request = scope.evaluation.request
    return {
        "event": request.event,
        "grant_type": request.grant_type,
        "scopes": request.raw.get("requested_scopes", []),
        "audience": request.raw.get("audience", []),
        "realm": request.realm,
        "issuer": request.raw.get("issuer"),
        "request_id": request.request_id,
    }


def _snapshot_view(scope: PassScope) -> dict[str, Any]:
    ev = scope.evaluation
    return {"id": ev.snapshot.snapshot_id, "age_seconds": ev.age, "generated_at": ev.snapshot.generated_at, "stale": ev.privileged_stale}


# The built-in variables (condition.BUILTIN_VARIABLES) of a pass, as they are handed to CEL.
_PROVIDERS: dict[str, Callable[[PassScope], Any]] = {
    "principal": lambda s: s.principal.view,
    "subject": lambda s: s.subject.view,
    "actors": lambda s: [a.view for a in s.actors],
    "actor": lambda s: s.actors[0].view if s.actors else None,
    "delegated": lambda s: bool(s.actors),
    "client": lambda s: s.evaluation.request.raw.get("client", {}),
    "request": _request_view,
    "context": lambda s: s.evaluation.request.context,
    "entitlements": lambda s: s.principal.entitlement_values(s.fields.get("entitlements")),
    "now": lambda s: s.evaluation.now,
    "feeds": lambda s: s.evaluation.feed_view(s.principal),
    "snapshot": _snapshot_view,
}

_SCOPES: dict[int, tuple[tuple[Rule, ...], tuple[frozenset[str], Fields]]] = {}


def _scope(policy: Policy, rules: tuple[Rule, ...]) -> tuple[frozenset[str], Fields]:
    """``policy.scope(rules)``, memoized by the identity of ``rules``: ``Policy.pass_rules``
    hands out the same tuple for the same pass, so this skips building the positions key."""
    found = _SCOPES.get(id(rules))
    if found is None or found[0] is not rules:
        if len(_SCOPES) >= _MEMO_LIMIT:
            _SCOPES.clear()
        found = (rules, policy.scope(rules))
        _SCOPES[id(rules)] = found
    return found[1]


_VARIABLES: dict[int, tuple[tuple[tuple[str, Expression], ...], frozenset[str], dict[str, Expression]]] = {}


def _policy_variables(policy: Policy) -> tuple[frozenset[str], dict[str, Expression]]:
    """The names of a policy's variables and their expressions (memoized per policy)."""
    variables = policy.variables
    found = _VARIABLES.get(id(variables))
    if found is None or found[0] is not variables:
        if len(_VARIABLES) >= 64:
            _VARIABLES.clear()  # policies are few; a long-running service reloading many just recomputes
        found = (variables, frozenset(n for n, _ in variables), dict(variables))
        _VARIABLES[id(variables)] = found
    return found[1], found[2]
