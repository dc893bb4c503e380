"""Keep docs/service.md true to the claims service it documents.

The guide's tables have one name in backticks per row in their first column; these tests parse
them and compare them with the code, so that a new setting, flag, route, error code or metric
fails the suite until the guide documents it:

* ``### 2.1 Environment variables`` lists exactly the ``KPB_*`` variables ``Settings.from_env``
  reads (recorded by calling it) plus those ``wsgi.py`` reads, with their defaults ("required"
  for the settings that have none);
* ``### 2.2 `kpb serve` flags`` lists exactly the click parameters of ``kpb serve``, with their
  defaults and the variable each one overrides; ``### 2.3`` the constant gunicorn settings;
* ``### 3.1 Routes`` lists exactly the Flask app's routes (static excluded), which are exactly
  the OpenAPI document's operations, with the authentication the document declares;
* ``### 6.1 HTTP errors`` and ``### 6.2`` together name every ``BridgeError`` code, with the
  class's HTTP status; the API modules answer no error code of their own (every code is a
  class's, rendered by ``api/responses.py``, or Werkzeug's);
* ``### 7.5 Metrics`` lists exactly the metric families of the ops registry (and of ``ops.py``'s
  source), with type and labels;
* every ``kpb ...`` command in a code block parses (click) and ``--help`` works for its command
  path; every ``gunicorn`` command uses only gunicorn options and ``kpb serve``'s fixed settings;
  every ``python`` block compiles and its package imports exist;
* limits quoted in the text (replay caps, JWKS timings, algorithm list, ...) and the quoted
  benchmark figures match the code and bench/RESULTS.md.

Self-checks run the comparisons on modified inputs to prove that an addition is caught.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from flask import Flask

import doc_tables
import keycloak_policy_bridge
from conftest import ACME, NOW, ROOT, service_settings
from doc_tables import param_names, table_first_cells
from keycloak_policy_bridge import signature
from keycloak_policy_bridge.api import create_app
from keycloak_policy_bridge.api.ops import EXTENSION, openapi_bytes
from keycloak_policy_bridge.bridge import bridge_from_settings
from keycloak_policy_bridge.cli import main
from keycloak_policy_bridge.cli.serve import serve
from keycloak_policy_bridge.config import Settings
from keycloak_policy_bridge.errors import BridgeError
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339
from keycloak_policy_bridge.token import ALLOWED_ALGORITHMS, JWKS_TIMEOUT_SECONDS
from keycloak_policy_bridge.workers import WORKER_CLASSES

DOC = ROOT / "docs" / "service.md"
PACKAGE = ROOT / "keycloak_policy_bridge"
CONFIG_SOURCE = PACKAGE / "config.py"
WSGI_SOURCE = PACKAGE / "wsgi.py"
SERVE_SOURCE = PACKAGE / "cli" / "serve.py"
OPS_SOURCE = PACKAGE / "api" / "ops.py"
API_SOURCES = sorted((PACKAGE / "api").glob("*.py"))
RESULTS = ROOT / "bench" / "RESULTS.md"
# The module, not the blueprint of the same name that keycloak_policy_bridge.api re-exports.
admin_api = importlib.import_module("keycloak_policy_bridge.api.admin")

VARIABLES = "2.1 Environment variables"
FLAGS = "2.2 `kpb serve` flags"
FIXED = "2.3 Fixed gunicorn settings"
ROUTES = "3.1 Routes"
HEADERS = "4.1 Canonical request and headers"
PUT_PARAMETERS = "5.4 Activating a policy"
HTTP_ERRORS = "6.1 HTTP errors"
OTHER_CODES = "6.2 Codes outside HTTP responses"
METRICS = "7.5 Metrics"

HTTP_METHODS = ("get", "put", "post", "delete", "patch")
# Error answers Werkzeug makes (the code is its exception's name), and a request that gets one.
WERKZEUG_PROBES: dict[str, tuple[str, str]] = {"not_found": ("GET", "/no-such-route"), "method_not_allowed": ("GET", "/v1/claims")}
# Benchmark figures the guide quotes; each must still be in bench/RESULTS.md.
BENCH_FIGURES = (
    "2026-11-29T01:55Z",
    "2026-11-29T03:05-03:20Z",
    "2026-11-29T03:10-03:25Z",
    "4,318",
    "513 decisions/s",
    "2.09 ms",
    "p50 15.0 / p99 31.8 / max 124.8 ms",
    "516/s and p99 122 ms",
    "0.82 ms",
    "4.19 ms",
    "1.25 ms",
    "6.3 ms",
    "5.4 ms",
    "170.4/s",
    "178.8/s",
    "0.525",
    "0.597",
    "1,276 MiB",
    "8,301",  # replay streamed from the log (issue 13)
    "9,440",
    "14.7",
    "18.3 s",
)
# The second pass's wrk table (bench/RESULTS.md "Service, second pass (issue 5)"): its label there ->
# (the guide's label in section 7.2, req/s, ms of server CPU per request, latency avg / max in ms).
BENCH_WRK_ROWS = {
    "`/v1/claims`, 1 sync worker, c=1": ("1 sync worker, 1 connection", "525", "1.69", "1.9 / 26"),
    "`/v1/claims`, 1 sync worker, c=1, log on tmpfs": ("1 sync worker, 1 connection, log on tmpfs", "653", "1.49", "1.5 / 22"),
    "`/v1/claims`, 2 sync workers": ("2 sync workers (the default until 2026-12-03)", "849", "1.66", "9.6 / 87"),
    "`/v1/claims`, 4 sync workers": ("4 sync workers", "786", "1.83", "14.1 / 341"),
    "`/v1/claims`, 2 gthread workers x 8 threads, c=16": ("2 gthread workers x 8 threads, 16 connections", "440", "2.36", "87 / 1,440"),
}
# The first pass's rows labelled sync, which ran gthread (the guide says so): label -> req/s.
FIRST_PASS_SYNC_ROWS = {"sync x 2 workers": "631", "sync x 4 workers": "805"}


# --------------------------------------------------------------------------------------------
# Reading the document


def load_doc() -> str:
    return DOC.read_text(encoding="utf-8")


def flat_doc() -> str:
    """The guide with every run of white space made one space, for phrases that wrap."""
    return " ".join(load_doc().split())


def section_body(doc: str, title: str, level: int = 3) -> list[str]:
    return doc_tables.section_body(doc, title, level, DOC.name)


def table(doc: str, title: str) -> dict[str, list[str]]:
    """The first table of section ``title``: first-cell name -> the row's other cells.

    Raises:
        AssertionError: no table, a first cell that is not a name, a row listed twice, or rows
            with different numbers of cells.
    """
    body = section_body(doc, title)
    names = table_first_cells(body, title)  # validates the table and its first column
    rows: list[list[str]] = []
    for line in body:
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([cell.strip() for cell in stripped.strip("|").split("|")])
        elif rows:
            break
    width = len(rows[0])
    assert all(len(row) == width for row in rows), f"section {title!r}: rows with different numbers of cells"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"section {title!r}: rows listed twice: {duplicates}"
    return {name: row[1:] for name, row in zip(names, rows[2:], strict=True)}


def code_blocks(doc: str) -> Iterator[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block."""
    info: str | None = None
    lines: list[str] = []
    for line in doc.splitlines():
        if line.lstrip().startswith("```"):
            if info is None:
                info, lines = line.strip()[3:].strip(), []
            else:
                yield info, lines
                info = None
        elif info is not None:
            lines.append(line)


def logical_lines(info: str, lines: list[str]) -> Iterator[str]:
    """Lines with backslash continuations joined; in a ``console`` block only the commands (after
    the ``$ `` prompt), not their output."""
    pending = ""
    for line in lines:
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        if info == "console":
            if text.startswith("$ "):
                yield text[2:]
        else:
            yield text


_SHELL_OPERATORS = re.compile(r"[|;&<>()]+")


def shell_words(line: str) -> list[str]:
    """The words of the first simple command on ``line`` (up to a pipe, ``;``, ``&&``, a redirection)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if _SHELL_OPERATORS.fullmatch(word):
            break
        words.append(word)
    return words


def commands_of(doc: str, program: str) -> list[list[str]]:
    """Every ``program ...`` command in the code blocks, as its arguments after the program.

    A command may follow environment assignments (``KPB_X=1 kpb serve``) and the program may be
    named by a path (``ExecStart=/opt/kpb/.venv/bin/kpb``).
    """
    mention = re.compile(rf"(?:^|[\s/=]){re.escape(program)}\s+\S")
    found = []
    for info, lines in code_blocks(doc):
        for line in logical_lines(info, lines):
            if not mention.search(line):
                continue
            words = shell_words(line)
            index = next((i for i, w in enumerate(words) if w.rsplit("/", 1)[-1] == program), None)
            assert index is not None, f"{program} is mentioned but not run: {line}"
            assert all(re.match(r"[A-Za-z_][A-Za-z0-9_]*=", w) for w in words[:index]), f"not a {program} command: {line}"
            found.append(words[index + 1 :])
    return found


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --------------------------------------------------------------------------------------------
# Reading the code


class RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


# The least environment from_env accepts: a development instance with the settings that have no default.
MINIMAL_ENV = {"KPB_INSECURE_DEV": "1", "KPB_POLICY": "policy.json", "KPB_ENTITLEMENTS": "export"}
REQUIRED = "required"  # the variables table's default cell for a setting without a default


def variables_read(from_env: Callable[[Mapping[str, str]], Any] = Settings.from_env) -> set[str]:
    """The ``KPB_*`` names ``from_env`` looks up (in a development environment, so that it returns)."""
    environ = RecordingEnviron(MINIMAL_ENV)
    from_env(environ)
    return {name for name in environ.asked if name.startswith("KPB_")}


def config_source_variables() -> set[str]:
    """``get("NAME")`` and ``number("NAME", ...)`` in config.py, as ``KPB_NAME``."""
    text = CONFIG_SOURCE.read_text(encoding="utf-8")
    return {"KPB_" + name for name in re.findall(r"\b(?:get|number)\(\s*\"([A-Z][A-Z0-9_]*)\"", text)}


def wsgi_variables() -> dict[str, str | None]:
    """``os.environ.get("KPB_...", default)`` in wsgi.py (read from source: importing it starts a bridge)."""
    text = WSGI_SOURCE.read_text(encoding="utf-8")
    return {name: default for name, default in re.findall(r"environ\.get\(\s*\"(KPB_[A-Z0-9_]+)\"(?:\s*,\s*\"([^\"]*)\")?", text)}


def all_variables() -> set[str]:
    return variables_read() | config_source_variables() | set(wsgi_variables())


def render_default(value: Any) -> str | None:
    """How the variables table shows a default: None for "unset"."""
    if value in (None, (), b"", False, ""):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def serve_overrides() -> dict[str, str]:
    """param name -> the ``KPB_*`` variable ``kpb serve`` sets from it (the ``overrides`` dict)."""
    tree = ast.parse(SERVE_SOURCE.read_text(encoding="utf-8"))
    params = {p.name for p in serve.params}
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "overrides" for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(key.value, str)
                names = {n.id for n in ast.walk(value) if isinstance(n, ast.Name)} & params
                assert len(names) == 1, f"overrides[{key.value!r}] does not name one serve parameter"
                found[names.pop()] = key.value
    assert found, "no overrides dict in cli/serve.py"
    return found


def gunicorn_options() -> tuple[dict[str, Any], dict[str, str]]:
    """``kpb serve``'s gunicorn options: (constant settings, settings taken from a flag -> its parameter)."""
    tree = ast.parse(SERVE_SOURCE.read_text(encoding="utf-8"))
    constants: dict[str, Any] = {}
    from_flags: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "options" for t in node.targets):
            assert isinstance(node.value, ast.Dict)
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(key.value, str)
                if isinstance(value, ast.Constant):
                    constants[key.value] = value.value
                else:
                    assert isinstance(value, ast.Name), f"options[{key.value!r}] is neither a constant nor a flag"
                    from_flags[key.value] = value.id
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            target = node.targets[0]
            if isinstance(target.value, ast.Name) and target.value.id == "options" and isinstance(node.value, ast.Constant):
                assert isinstance(target.slice, ast.Constant) and isinstance(target.slice.value, str)
                constants[target.slice.value] = node.value.value
    assert constants and from_flags, "no gunicorn options found in cli/serve.py"
    return constants, from_flags


def route_keys(app: Flask) -> set[str]:
    """``METHOD /path/{param}`` for every rule of ``app`` (static excluded; HEAD and OPTIONS are automatic)."""
    keys = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            keys.add(f"{method} {path}")
    return keys


def openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(openapi_bytes())
    return document


def openapi_operations() -> dict[str, Any]:
    """``METHOD /path`` -> its operation object."""
    return {
        f"{method.upper()} {path}": operation
        for path, item in openapi()["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def auth_label(operation: Mapping[str, Any]) -> str:
    schemes = {name for requirement in operation.get("security") or [] for name in requirement}
    if not schemes:
        return "none"
    if "adminBearer" in schemes:
        return "admin JWT"
    assert "kpbSignature" in schemes, f"unknown security schemes {schemes}"
    return "HMAC v1"


def error_classes() -> list[type[BridgeError]]:
    """Every ``BridgeError`` class of the package (all modules imported, except ``wsgi``, whose
    import starts a bridge, and ``__main__`` modules, which run the CLI), the root included."""
    for module in pkgutil.walk_packages(keycloak_policy_bridge.__path__, "keycloak_policy_bridge."):
        if module.name != "keycloak_policy_bridge.wsgi" and not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
    found: list[type[BridgeError]] = []
    pending: list[type[BridgeError]] = [BridgeError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def class_statuses(classes: list[Any] | None = None) -> dict[str, set[int]]:
    """Error code -> the HTTP statuses of the classes with that code."""
    statuses: dict[str, set[int]] = {}
    for cls in error_classes() if classes is None else classes:
        statuses.setdefault(cls.code, set()).add(cls.http_status)
    return statuses


def literal_errors(sources: list[Path] = API_SOURCES) -> set[str]:
    """Error codes written out in the API modules rather than taken from an error class: an
    ``_error(STATUS, "code", ...)`` call (the helpers before ``api/responses.py``) or an
    ``"error": "code"`` body."""
    found: set[str] = set()
    for path in sources:
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r"_error\(\s*\d{3}\s*,\s*\"([a-z_]+)\"", text))
        found.update(re.findall(r"[\"']error[\"']\s*:\s*[\"']([a-z_]+)[\"']", text))
    return found


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """The service on the acme example (insecure mode, the test clock)."""
    settings = service_settings(tmp_path)
    return create_app(bridge_from_settings(settings, lambda: NOW), settings, clock=lambda: NOW)


def metric_families(app: Flask) -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names) of every family in the app's registry, after one
    decision and one failed claims request so that every labelled family has samples."""
    client = app.test_client()
    assert client.post("/v1/claims", data=(ACME / "requests" / "alice-login.json").read_bytes()).status_code == 200
    assert client.post("/v1/claims", data=b"{").status_code == 400
    families = {}
    for family in app.extensions[EXTENSION].registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        families[name] = (family.type, labels)
    return families


def ops_source_metrics() -> set[str]:
    text = OPS_SOURCE.read_text(encoding="utf-8")
    return set(re.findall(r"\b(?:Counter|Histogram|Gauge|Summary|CounterMetricFamily|GaugeMetricFamily)\(\s*\"(kpb_\w+)\"", text))


# --------------------------------------------------------------------------------------------
# 2.1 Environment variables


def variables_mismatch(doc: str, variables: set[str]) -> tuple[list[str], list[str]]:
    names = set(table(doc, VARIABLES))
    return sorted(variables - names), sorted(names - variables)


def test_the_variable_extraction_finds_the_known_variables() -> None:
    """Guard against a broken extractor passing vacuously; and the two readings of config.py agree."""
    known = {"KPB_POLICY", "KPB_HMAC_SECRETS", "KPB_WATCH_INTERVAL_SECONDS", "KPB_ADMIN_ROLE", "KPB_ADMIN_MAX_BODY_BYTES"}
    assert known <= variables_read()
    assert config_source_variables() == variables_read()
    assert wsgi_variables() == {"KPB_LOG_LEVEL": "INFO"}


def test_the_variables_table_lists_exactly_the_variables_read() -> None:
    missing, extra = variables_mismatch(load_doc(), all_variables())
    assert not missing, f"### {VARIABLES}: variables the service reads but the table lacks: {missing}"
    assert not extra, f"### {VARIABLES}: rows that are not variables the service reads: {extra}"


def test_a_new_variable_is_caught() -> None:
    """Self-check: a from_env that reads one more variable is seen, and the table then lacks it."""

    def from_env(environ: Mapping[str, str]) -> Settings:
        environ.get("KPB_BRAND_NEW")
        return Settings.from_env(environ)

    read = variables_read(from_env)
    assert "KPB_BRAND_NEW" in read
    missing, _ = variables_mismatch(load_doc(), read)
    assert missing == ["KPB_BRAND_NEW"]


def settings_defaults() -> dict[str, Any]:
    """Settings field -> its default (``dataclasses.MISSING`` for a required setting)."""
    return {field.name: field.default for field in dataclasses.fields(Settings)}


def test_the_environment_defaults_are_the_dataclass_defaults() -> None:
    """So that the table's defaults can be read from the ``Settings`` fields."""
    assert Settings.from_env(MINIMAL_ENV) == Settings(policy=Path("policy.json"), entitlements=Path("export"), insecure_dev=True)
    assert {name for name, default in settings_defaults().items() if default is dataclasses.MISSING} == {"policy", "entitlements"}


def test_the_variables_table_gives_each_default() -> None:
    defaults = settings_defaults()
    rows = table(load_doc(), VARIABLES)
    wsgi = wsgi_variables()
    for name, (default_cell, meaning) in rows.items():
        if name in wsgi:
            expected = wsgi[name] or None
        else:
            field = name.removeprefix("KPB_").lower()
            assert field in defaults, f"{name}: no Settings field {field}"
            if defaults[field] is dataclasses.MISSING:
                assert default_cell == REQUIRED, f"{name}: has no default, the table says {default_cell!r}"
                assert meaning, f"{name}: no meaning given"
                continue
            expected = render_default(defaults[field])
        if expected is None:
            assert default_cell == "unset", f"{name}: default is unset, the table says {default_cell!r}"
        else:
            assert f"`{expected}`" in default_cell, f"{name}: default is {expected!r}, the table says {default_cell!r}"
        assert meaning, f"{name}: no meaning given"


def test_every_kpb_variable_named_in_the_guide_exists() -> None:
    named = set(re.findall(r"\bKPB_[A-Z0-9_]*[A-Z0-9]\b", load_doc()))
    assert named - all_variables() == set()


# --------------------------------------------------------------------------------------------
# 2.2 Flags, 2.3 fixed gunicorn settings


def flags_mismatch(doc: str, command: click.Command) -> tuple[list[str], list[str]]:
    names = set(table(doc, FLAGS))
    params = set(param_names(command))
    return sorted(params - names), sorted(names - params)


def test_serve_is_the_command_the_cli_registers() -> None:
    assert main.commands["serve"] is serve
    assert {"--bind", "--workers", "--threads", "--worker-class", "--insecure-dev"} <= set(param_names(serve))


def test_the_flags_table_lists_exactly_the_serve_parameters() -> None:
    undocumented, unknown = flags_mismatch(load_doc(), serve)
    assert not undocumented, f"### {FLAGS}: kpb serve parameters not in the table: {undocumented}"
    assert not unknown, f"### {FLAGS}: rows that are not kpb serve parameters: {unknown}"


def test_an_added_flag_is_caught() -> None:
    command = click.Command("serve", params=[*serve.params, click.Option(["--brand-new-flag"], is_flag=True)])
    undocumented, unknown = flags_mismatch(load_doc(), command)
    assert undocumented == ["--brand-new-flag"] and not unknown


def test_the_flags_table_gives_defaults_and_overridden_variables() -> None:
    rows = table(load_doc(), FLAGS)
    overrides = serve_overrides()
    assert set(overrides.values()) <= all_variables()
    for param in serve.params:
        flag = max(param.opts, key=len)
        default_cell, overrides_cell, meaning = rows[flag]
        default = param.default
        if isinstance(default, (int, str)) and not isinstance(default, bool):
            assert f"`{default}`" in default_cell, f"{flag}: default is {default!r}, the table says {default_cell!r}"
        variable = overrides.get(param.name or "")
        expected = f"`{variable}`" if variable else "none"
        assert overrides_cell == expected, f"{flag}: overrides {variable}, the table says {overrides_cell!r}"
        assert meaning


def test_the_fixed_gunicorn_settings_table() -> None:
    constants, from_flags = gunicorn_options()
    assert set(from_flags.values()) <= {p.name for p in serve.params}, "a gunicorn option names no flag"
    rows = table(load_doc(), FIXED)
    assert set(rows) == set(constants), f"### {FIXED}: documented {sorted(rows)}, set by kpb serve {sorted(constants)}"
    for name, value in constants.items():
        assert rows[name][0] == f"`{value}`", f"{name}: kpb serve sets {value!r}, the table says {rows[name][0]!r}"


# --------------------------------------------------------------------------------------------
# 3.1 Routes


def test_the_routes_table_is_the_url_map_and_the_openapi_document(app: Flask) -> None:
    rows = table(load_doc(), ROUTES)
    routes = route_keys(app)
    operations = set(openapi_operations())
    assert {"POST /v1/claims", "GET /readyz", "PUT /v1/policy"} <= routes  # the extraction works
    assert set(rows) == routes, f"### {ROUTES}: undocumented {sorted(routes - set(rows))}, not routes {sorted(set(rows) - routes)}"
    assert routes == operations, f"url_map and OpenAPI differ: {sorted(routes ^ operations)}"


def test_the_routes_table_gives_the_documented_authentication() -> None:
    rows = table(load_doc(), ROUTES)
    for key, operation in openapi_operations().items():
        auth = rows[key][0]
        assert auth.startswith(auth_label(operation)), f"{key}: OpenAPI says {auth_label(operation)}, the table says {auth!r}"


def test_an_added_route_is_caught(app: Flask) -> None:
    app.add_url_rule("/v1/brand-new", "brand_new", lambda: "", methods=["POST"])
    assert "POST /v1/brand-new" in route_keys(app) - set(table(load_doc(), ROUTES))


# --------------------------------------------------------------------------------------------
# 4. Caller authentication, 5. Admin API: tables and quoted limits


def test_the_headers_table_lists_the_signature_headers() -> None:
    assert set(table(load_doc(), HEADERS)) == {signature.TIMESTAMP_HEADER, signature.SIGNATURE_HEADER, signature.KEY_ID_HEADER}


def test_the_activation_parameters_are_the_ones_put_policy_reads() -> None:
    source = inspect.getsource(admin_api._gate_params)
    read = set(re.findall(r"args(?:\.get\(|, )\"(\w+)\"", source))
    assert read == {"gate", "last", "force"}  # the extraction works
    assert set(table(load_doc(), PUT_PARAMETERS)) == read


def _policy_value(document: Any, key: str) -> Any:
    if isinstance(document, dict):
        if key in document:
            return document[key]
        values = [_policy_value(v, key) for v in document.values()]
    elif isinstance(document, list):
        values = [_policy_value(v, key) for v in document]
    else:
        return None
    return next((v for v in values if v is not None), None)


def quoted_limits() -> list[tuple[str, str]]:
    """(what, text the guide must contain), each text computed from the code."""
    words = {4: "four"}
    policy = json.loads((ACME / "policy.json").read_text(encoding="utf-8"))
    manifest = json.loads((ACME / "entitlements" / "manifest.json").read_text(encoding="utf-8"))
    privileged, deny = _policy_value(policy, "privileged_max_age_seconds"), _policy_value(policy, "deny_max_age_seconds")
    generated = parse_rfc3339(manifest["generated_at"])
    return [
        ("replay cap", f"at most {admin_api.REPLAY_MAX_LIMIT:,} decisions"),
        ("replay cap for last", f"1 to {admin_api.REPLAY_MAX_LIMIT:,}"),
        ("replay body limit", f"default {admin_api.REPLAY_DEFAULT_LIMIT}, at most {admin_api.REPLAY_MAX_LIMIT}"),
        ("decisions limit", f"default {admin_api.DECISIONS_DEFAULT_LIMIT}, at most {admin_api.DECISIONS_MAX_LIMIT}"),
        ("activations shown", f"latest {admin_api.ACTIVATIONS_SHOWN} activations"),
        ("JWKS refresh", f"at most once per {admin_api.JWKS_REFRESH_SECONDS:g} s"),
        ("JWKS max age", f"{admin_api.JWKS_MAX_AGE_SECONDS:g} s ({admin_api.JWKS_MAX_AGE_SECONDS / 60:g} minutes) old"),
        ("JWKS max age", f"within {admin_api.JWKS_MAX_AGE_SECONDS / 60:g} minutes, without a restart"),
        ("JWKS retry", f"at most every {admin_api.JWKS_RETRY_SECONDS:g} s"),
        ("JWKS timeout", f"({JWKS_TIMEOUT_SECONDS:g} s timeout)"),
        ("token leeway", f"{admin_api.TOKEN_LEEWAY_SECONDS} s of leeway"),
        ("algorithms", ", ".join(ALLOWED_ALGORITHMS[:-1]) + ", " + ALLOWED_ALGORITHMS[-1]),
        ("replay cache", f"at most {signature.DEFAULT_REPLAY_CACHE_ENTRIES:,} requests"),
        ("signature values", f"up to {words[signature.MAX_SIGNATURE_VALUES]} comma-separated values"),
        ("secret length", f"at least {signature.MIN_SECRET_BYTES} bytes ({2 * signature.MIN_SECRET_BYTES} hex digits)"),
        ("skew default", f"`KPB_MAX_CLOCK_SKEW_SECONDS` ({signature.DEFAULT_MAX_SKEW_SECONDS})"),
        ("acme export date", f"`generated_at: {manifest['generated_at']}`"),
        ("acme privileged age", f"`privileged_max_age_seconds` {privileged}"),
        ("acme deny age", f"`deny_max_age_seconds` {deny}"),
        ("acme hours", f"older than {privileged // 3600} h"),
        ("acme hours", f"older than {deny // 3600} h"),
        ("acme denies from", f"From {format_rfc3339(generated + timedelta(seconds=deny))}"),
    ]


@pytest.mark.parametrize(("what", "text"), quoted_limits())
def test_quoted_limits_match_the_code(what: str, text: str) -> None:
    assert text in flat_doc(), f"{what}: the guide does not say {text!r}"


def test_the_quoted_benchmark_figures_are_in_the_results() -> None:
    results, doc = RESULTS.read_text(encoding="utf-8"), flat_doc()
    for figure in BENCH_FIGURES:
        assert figure in results, f"bench/RESULTS.md no longer says {figure!r}"
        assert figure in doc, f"the guide does not quote {figure!r}"
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [c.strip().strip("*") for c in line.strip().strip("|").split("|")] for line in results.splitlines() if line.startswith("|")
        )
    }
    guide_lines = {line.strip() for line in load_doc().splitlines()}
    for configuration, (label, rate, cpu, latency) in BENCH_WRK_ROWS.items():
        assert rows.get(configuration, [])[:3] == [rate, f"{cpu} ms", f"{latency} ms"], f"bench/RESULTS.md: {configuration}"
        assert f"| {label} | {rate} req/s | {cpu} ms | {latency} ms |" in guide_lines, f"the guide misquotes {configuration}"
    for configuration, rate in FIRST_PASS_SYNC_ROWS.items():
        assert rows.get(configuration, [""])[0] == rate, f"bench/RESULTS.md: {configuration}"
    rates = " and ".join(FIRST_PASS_SYNC_ROWS.values())
    assert f'rows labelled "sync" ({rates} req/s) ran gthread' in doc, "the guide must say the first pass's sync rows were gthread"


# --------------------------------------------------------------------------------------------
# 6. Errors


def test_every_error_code_is_documented_once() -> None:
    doc = load_doc()
    http, other = set(table(doc, HTTP_ERRORS)), set(table(doc, OTHER_CODES))
    codes = set(class_statuses())
    assert {"not_ready", "unauthorized", "decision_log_unavailable", "bridge_error"} <= codes  # the walk works
    assert not http & other, f"codes in both error tables: {sorted(http & other)}"
    assert codes - http - other == set(), f"error codes in neither table: {sorted(codes - http - other)}"
    assert other - codes == set(), f"### {OTHER_CODES}: not error classes: {sorted(other - codes)}"


def test_http_error_statuses_match_the_classes_and_the_api() -> None:
    rows = table(load_doc(), HTTP_ERRORS)
    classes = class_statuses()
    assert literal_errors() == set(), "the API answers the codes of errors.py classes (api/responses.py), not codes of its own"
    for code, (status, when) in rows.items():
        if code in classes:
            assert {int(status)} == classes[code], f"{code}: the class says {classes[code]}, the table says {status}"
        else:
            assert code in WERKZEUG_PROBES, f"### {HTTP_ERRORS}: {code} is neither an error class nor a Werkzeug error"
        assert when


def test_werkzeug_errors_answer_as_documented(app: Flask) -> None:
    rows = table(load_doc(), HTTP_ERRORS)
    client = app.test_client()
    for code, (method, path) in WERKZEUG_PROBES.items():
        response = client.open(path, method=method)
        assert response.get_json()["error"] == code
        assert rows[code][0] == str(response.status_code)


def test_a_new_error_class_is_caught() -> None:
    """Self-check on a list with one more class (a stand-in: a real subclass would stay in
    ``BridgeError.__subclasses__()`` for the other tests)."""
    brand_new = type("BrandNewError", (), {"code": "brand_new_code", "http_status": 418})
    doc = load_doc()
    documented = set(table(doc, HTTP_ERRORS)) | set(table(doc, OTHER_CODES))
    assert set(class_statuses([*error_classes(), brand_new])) - documented == {"brand_new_code"}


def test_a_new_literal_error_is_caught(tmp_path: Path) -> None:
    source = tmp_path / "extra.py"
    source.write_text(
        'def f():\n    return _error(429, "slow_down", "too many")\n\n\ndef g():\n    return json_response({"error": "go_away"}, 410)\n',
        encoding="utf-8",
    )
    assert literal_errors([source]) == {"slow_down", "go_away"}
    assert "slow_down" not in table(load_doc(), HTTP_ERRORS)


def test_the_claims_statuses_match_the_contract() -> None:
    """Contract v1, section 1: 400, 401, 413 and 503 are the claims call's errors."""
    responses = openapi()["paths"]["/v1/claims"]["post"]["responses"]
    assert {int(s) for s in responses if not s.startswith("2")} == {400, 401, 413, 503}
    assert "/v1/claims`: 400, 401, 413 and 503" in flat_doc()


# --------------------------------------------------------------------------------------------
# 7.5 Metrics


def test_the_metrics_table_is_the_registry(app: Flask) -> None:
    rows = table(load_doc(), METRICS)
    families = metric_families(app)
    assert {"kpb_decisions_total", "kpb_decision_seconds", "kpb_snapshot_age_seconds"} <= set(families)  # the extraction works
    undocumented, unknown = sorted(set(families) - set(rows)), sorted(set(rows) - set(families))
    assert not undocumented and not unknown, f"### {METRICS}: undocumented {undocumented}, not metrics {unknown}"
    for name, (kind, labels) in families.items():
        type_cell, labels_cell, meaning = rows[name]
        assert type_cell == kind, f"{name}: a {kind}, the table says {type_cell!r}"
        documented = set(backticked(labels_cell)) if labels_cell != "none" else set()
        assert documented == labels, f"{name}: labels {sorted(labels)}, the table says {labels_cell!r}"
        assert meaning


def test_the_registry_holds_every_metric_ops_py_defines(app: Flask) -> None:
    defined = ops_source_metrics()
    exposed = {name.removesuffix("_total") for name in metric_families(app)}
    assert {"kpb_decisions", "kpb_snapshot_reloads"} <= defined  # the extraction works
    assert defined == exposed


# --------------------------------------------------------------------------------------------
# Commands and code in the code blocks


def kpb_commands() -> list[list[str]]:
    return commands_of(load_doc(), "kpb")


def resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(command path, command, remaining arguments) of ``kpb ARGS``."""
    path: list[str] = []
    command: click.Command = main
    rest = list(args)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    return path, command, rest


def test_the_guide_shows_kpb_commands() -> None:
    """Guard against the extractor finding nothing."""
    shown = {" ".join(resolve(args)[0]) for args in kpb_commands()}
    assert {"serve", "replay"} <= shown
    assert ["serve", "--bind", "0.0.0.0:8700", "--workers", "2"] in kpb_commands()  # the systemd ExecStart line


@pytest.mark.parametrize("args", kpb_commands(), ids=lambda args: " ".join(args))
def test_every_kpb_command_shown_parses(args: list[str]) -> None:
    path, command, rest = resolve(args)
    assert path and not isinstance(command, click.Group), f"kpb {' '.join(args)}: not a command"
    with command.make_context("kpb " + " ".join(path), list(rest)):  # raises on an unknown option or a bad value
        pass
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_a_misspelt_option_would_be_caught() -> None:
    _, command, rest = resolve(["serve", "--worker", "2"])
    with pytest.raises(click.UsageError):
        command.make_context("kpb serve", rest)


def gunicorn_settings() -> dict[str, Any]:
    from gunicorn.config import Config

    return {cli: setting for setting in Config().settings.values() for cli in (setting.cli or [])}


def test_gunicorn_commands_use_gunicorn_options_and_the_serve_settings() -> None:
    commands = commands_of(load_doc(), "gunicorn")
    assert commands, "the guide shows no gunicorn command"
    options = gunicorn_settings()
    constants, _ = gunicorn_options()
    defaults: dict[str | None, Any] = {p.name: p.default for p in serve.params}
    if defaults["worker_class"] == "sync":
        defaults["threads"] = 1  # kpb serve runs sync workers with one thread (gunicorn runs gthread for more)
        assert re.search(r'if worker_class == "sync":\s+threads = 1\b', SERVE_SOURCE.read_text(encoding="utf-8"))
    defaults["worker_class"] = WORKER_CLASSES[defaults["worker_class"]]  # kpb serve runs the bridge's worker of that model
    for args in commands:
        values: dict[str, Any] = {}
        positional = []
        words = iter(args)
        for word in words:
            if not word.startswith("-"):
                positional.append(word)
                continue
            flag, has_value, value = word.partition("=")
            assert flag in options, f"gunicorn has no option {flag}"
            setting = options[flag]
            values[setting.name] = True if setting.action in ("store_true", "store_const") else value if has_value else next(words)
        assert positional == ["keycloak_policy_bridge.wsgi:app"], positional
        assert re.search(r"^app = ", WSGI_SOURCE.read_text(encoding="utf-8"), re.M)
        for name, value in constants.items():
            if name == "accesslog":
                assert name not in values  # gunicorn's default is no access log too
                assert options["--access-logfile"].default is None
            else:
                assert str(values.get(name)) == str(value), f"gunicorn {name}: kpb serve uses {value!r}, the guide {values.get(name)!r}"
        for name in ("worker_class", "threads", "workers", "timeout"):
            assert str(values.get(name)) == str(defaults[name]), f"gunicorn {name}: kpb serve's default is {defaults[name]!r}"


def test_python_blocks_compile_and_import_what_exists() -> None:
    blocks = [lines for info, lines in code_blocks(load_doc()) if info == "python"]
    assert blocks, "the guide shows no python block"
    for lines in blocks:
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keycloak_policy_bridge"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
