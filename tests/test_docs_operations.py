"""Keep docs/operations.md true to what the project runs and to the mapper it documents.

* Every command in an ``sh`` or ``console`` block is exercised: it is run by the Makefile
  (variables expanded; ``make TARGET`` for a target it defines), by ``scripts/*.sh`` or
  ``.ci/run``, by an argument list in ``scripts/*.py`` or ``tests/e2e/*.py`` (string constants
  literal, f-strings as patterns, other expressions matching one non-option word, an optional
  ``*os.environ.get("NAME", "").split()`` matching nothing, as when NAME is unset), or it is one
  of the few harmless commands this module runs itself (``--help``, a random secret, ``stack.py
  env``). Commands are compared after dropping ``$ ``, leading ``NAME=value`` assignments and
  ``.venv/bin/``. Every fence must name its language, so no command hides in an untyped block.
* The server-settings table lists exactly the SPI options built from the Java constants
  (``ServerSettings.OPTION_*``/``ENV_*``, ``PolicyBridgeMapper.PROVIDER_ID``), which are exactly
  the option names the Java sources spell out.
* The mapper-settings table lists exactly ``MapperSettings``' keys with the defaults and ranges of
  the code; the realm's mapper uses only documented keys; the JSON block is the realm's scope.
* ``KC_VERSION`` (scripts/keycloak.sh) == ``keycloak.version`` (pom.xml) == the Makefile's
  ``KC_DIST`` == every "Keycloak X.Y.Z" in the guide, and every file naming that version is in
  the guide's upgrade table.
* Test names, failure kinds, the demo stack's environment and quoted benchmark figures match.

Self-checks prove that an unexercised command and a missing key are caught.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import doc_tables
from conftest import ROOT
from keycloak_policy_bridge.cli import main

sys.path.insert(0, str(ROOT / "scripts"))
import stack

DOC_PATH = ROOT / "docs" / "operations.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
MAKEFILE = ROOT / "Makefile"
SHELL_SOURCES = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]
PYTHON_SOURCES = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "tests" / "e2e").glob("*.py"))
JAVA_MAIN = ROOT / "keycloak-spi" / "src" / "main" / "java" / "org" / "keycloakpolicybridge" / "mapper"
SERVER_SETTINGS = JAVA_MAIN / "ServerSettings.java"
PDP_AUTH = JAVA_MAIN / "bridge" / "PdpAuth.java"
MAPPER_SETTINGS = JAVA_MAIN / "MapperSettings.java"
MAPPER = JAVA_MAIN / "PolicyBridgeMapper.java"
FAILURE_MODE = JAVA_MAIN / "FailureMode.java"
BRIDGE_FAILURE = JAVA_MAIN / "bridge" / "BridgeFailure.java"
POM = ROOT / "keycloak-spi" / "pom.xml"
KEYCLOAK_SH = ROOT / "scripts" / "keycloak.sh"
REALM = ROOT / "realm-config" / "acme-realm.json"
RESULTS = ROOT / "bench" / "RESULTS.md"

SERVER_SECTION = "3. Server settings"
SCOPE_SECTION = "4. The mapper on a client scope"
FAILURE_SECTION = "5. Choosing a failure mode"
RUNNING_SECTION = "6. Running the bridge"
UPGRADE_SECTION = "9. Upgrading Keycloak"

COMMAND_LANGUAGES = {"sh", "console"}
LANGUAGES = COMMAND_LANGUAGES | {"json", "text"}
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
VENV_BIN = re.compile(r"(?:^|(?<=[\s/]))(?:\$\(VENV\)|\.venv)/bin/")

# Names the Python sources use for programs, as a command line spells them.
PROGRAMS = {"KPB": "kpb", "KEYCLOAK_SH": "scripts/keycloak.sh", "sys.executable": "python"}
# Keycloak's OIDCAttributeMapperHelper.addIncludeInTokensConfig: the toggles each interface adds.
TOGGLES = {
    "OIDCAccessTokenMapper": {"access.token.claim", "lightweight.claim"},
    "OIDCIDTokenMapper": {"id.token.claim"},
    "UserInfoTokenMapper": {"userinfo.token.claim"},
    "TokenIntrospectionTokenMapper": {"introspection.token.claim"},
    "OIDCAccessTokenResponseMapper": {"access.tokenResponse.claim"},
}
# Directories never scanned for the pinned version (build output, state, caches).
SKIP_DIRS = {".git", ".venv", "var", "target", "out", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}


# -- the document ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    language: str
    lines: list[str]
    line_number: int


def fenced_blocks(doc: str) -> list[Block]:
    """Every fenced block (fences may be indented, as in list items), content dedented."""
    blocks: list[Block] = []
    lines = doc.splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            indent = len(lines[i]) - len(stripped)
            language = stripped[3:].strip()
            start = i
            body = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            assert i < len(lines), f"operations.md line {start + 1}: unterminated code block"
            blocks.append(Block(language, body, start + 1))
        i += 1
    return blocks


def join_continuations(lines: list[str]) -> list[str]:
    joined: list[str] = []
    pending = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            joined.append(pending + line)
            pending = ""
    if pending:
        joined.append(pending)
    return joined


def block_commands(block: Block) -> list[str]:
    """Command lines of an sh block (all but comments) or a console block (``$ `` lines)."""
    if block.language == "console":
        lines: list[str] = []
        collecting = False
        for line in block.lines:
            if line.startswith("$ "):
                lines.append(line[2:])
                collecting = line.rstrip().endswith("\\")
            elif collecting:
                lines.append(line)
                collecting = line.rstrip().endswith("\\")
        return [c.strip() for c in join_continuations(lines) if c.strip()]
    return [c.strip() for c in join_continuations(block.lines) if c.strip() and not c.strip().startswith("#")]


def tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes in a source line: a plain split is enough to compare
        return text.split()


def simple_commands(text: str) -> list[list[str]]:
    """``text`` split at shell operators, each part without leading assignments or .venv/bin/."""
    out: list[list[str]] = []
    current: list[str] = []
    for token in [*tokens(VENV_BIN.sub("", text)), ";"]:
        if token in OPERATORS:
            while current and ASSIGNMENT.match(current[0]):
                current.pop(0)
            if current:
                out.append(current)
            current = []
        else:
            current.append(token)
    return out


def doc_commands(doc: str = DOC) -> list[list[str]]:
    return [
        cmd
        for block in fenced_blocks(doc)
        if block.language in COMMAND_LANGUAGES
        for line in block_commands(block)
        for cmd in simple_commands(line)
    ]


def section(title: str) -> list[str]:
    return doc_tables.section_body(DOC, title, 2, "docs/operations.md")


def table_rows(body: list[str]) -> list[list[str]]:
    """The cells of the first table in ``body``, header and separator excluded."""
    rows: list[str] = []
    for line in body:
        if line.strip().startswith("|"):
            rows.append(line.strip())
        elif rows:
            break
    assert len(rows) >= 3, "no table"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def code(cell: str) -> str:
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"cell {cell!r} is not a single `value`"
    return match.group(1)


# -- what the project runs -------------------------------------------------------------------------


def makefile_variables(text: str) -> dict[str, str]:
    variables = {}
    for match in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(?::=|\?=|=)\s*(.*?)\s*$", text, re.M):
        variables[match.group(1)] = match.group(2)
    return variables


def expand(text: str, variables: dict[str, str], depth: int = 0) -> str:
    assert depth < 10, "recursive Makefile variables"
    expanded = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
    return expanded.replace("$$", "$") if expanded == text else expand(expanded, variables, depth + 1)


def makefile_targets(text: str) -> set[str]:
    targets: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-/$() ]+?):(?!=)", line)
        if match and not line.startswith("\t"):
            targets.update(match.group(1).split())
    return targets


def shell_lines() -> Iterator[str]:
    """Recipe lines of the Makefile (expanded) and code lines of the shell sources."""
    text = MAKEFILE.read_text(encoding="utf-8")
    variables = makefile_variables(text)
    recipe = [line[1:].lstrip("@-") for line in text.splitlines() if line.startswith("\t")]
    for line in join_continuations(recipe):
        yield expand(line, variables)
    for path in SHELL_SOURCES:
        code_lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")]
        yield from join_continuations(code_lines)


Pattern = list[object]  # each item: a literal str, a compiled regex, or WILDCARD
WILDCARD = object()


def _element(node: ast.expr) -> object:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [re.escape(str(v.value)) if isinstance(v, ast.Constant) else ".+" for v in node.values]
        return re.compile("".join(parts))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and len(node.args) == 1:
        return _element(node.args[0])
    name = ast.unparse(node)
    return PROGRAMS.get(name, WILDCARD)


# ``*os.environ.get("NAME", "").split()``: extra arguments an environment variable may add, none by default.
_OPTIONAL_EXTRAS = re.compile(r"""os\.environ\.get\((["'])[A-Z][A-Z0-9_]*\1, (["'])\2\)\.split\(\)""")


def _default_elements(elts: list[ast.expr]) -> list[ast.expr] | None:
    """``elts`` without its optional extras (they expand to nothing by default); None when another
    splat makes the list's length unknown."""
    kept = []
    for element in elts:
        if isinstance(element, ast.Starred):
            if not _OPTIONAL_EXTRAS.fullmatch(ast.unparse(element.value)):
                return None
            continue
        kept.append(element)
    return kept


def python_patterns() -> list[Pattern]:
    """Argument lists in the Python sources whose first element is a literal program."""
    patterns = []
    for path in PYTHON_SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            elements = _default_elements(node.elts) if isinstance(node, (ast.List, ast.Tuple)) else None
            if elements is not None and len(elements) >= 2:
                pattern = [_element(e) for e in elements]
                if isinstance(pattern[0], str):
                    patterns.append(pattern)
    return patterns


def matches(pattern: Pattern, command: list[str]) -> bool:
    if len(pattern) != len(command):
        return False
    for item, token in zip(pattern, command, strict=True):
        if item is WILDCARD:
            if token.startswith("-"):
                return False
        elif isinstance(item, re.Pattern):
            if not item.fullmatch(token):
                return False
        elif item != token:
            return False
    return True


# -- harmless commands this module runs itself -----------------------------------------------------


def _run_kpb_help(command: list[str]) -> None:
    assert command[-1] == "--help", command
    result = CliRunner().invoke(main, command[1:], prog_name="kpb")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: kpb " + " ".join(command[1:-1])), result.output[:200]


def _run_secret(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=60, check=True)
    assert re.fullmatch(r"[0-9a-f]{64}\n", result.stdout), "not 32 bytes of hex"


def _stack_env_output() -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KC_PORT", "KPB_STACK_BRIDGE_PORT")}
    result = subprocess.run(
        [sys.executable, "scripts/stack.py", "env"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout.splitlines()


def _run_stack_env(command: list[str]) -> None:
    (block,) = [b for b in fenced_blocks(DOC) if b.language == "console" and any("scripts/stack.py env" in line for line in b.lines)]
    expected = [line.replace("<repository>", str(ROOT)) for line in block.lines if not line.startswith("$ ")]
    assert _stack_env_output() == expected


HARMLESS: dict[str, Callable[[list[str]], None]] = {
    "kpb serve --help": _run_kpb_help,
    "kpb drift --help": _run_kpb_help,
    'python -c "import secrets; print(secrets.token_hex(32))"': _run_secret,
    "python scripts/stack.py env": _run_stack_env,
}
HARMLESS_TOKENS = {tuple(simple_commands(text)[0]): run for text, run in HARMLESS.items()}


def unexercised(commands: list[list[str]]) -> list[str]:
    """The commands that nothing runs, in the document's order."""
    sources = [cmd for line in shell_lines() for cmd in simple_commands(line)]
    targets = makefile_targets(MAKEFILE.read_text(encoding="utf-8"))
    patterns = python_patterns()
    missing = []
    for command in commands:
        if tuple(command) in HARMLESS_TOKENS:
            continue
        if command[0] == "make" and len(command) == 2 and command[1] in targets:
            continue
        if command in sources or any(matches(p, command) for p in patterns):
            continue
        missing.append(shlex.join(command))
    return missing


# -- commands --------------------------------------------------------------------------------------


def test_every_fence_names_its_language() -> None:
    untyped = [f"line {b.line_number}: {b.language or '(none)'}" for b in fenced_blocks(DOC) if b.language not in LANGUAGES]
    assert not untyped, f"code blocks must be one of {sorted(LANGUAGES)}: {untyped}"


def test_the_document_has_commands() -> None:
    commands = doc_commands()
    assert len(commands) >= 10
    assert ["mvn", "-B", "-q", "-f", "keycloak-spi/pom.xml", "package"] in commands
    assert ["make", "test"] in commands


def test_every_command_is_exercised() -> None:
    missing = unexercised(doc_commands())
    assert not missing, "commands in docs/operations.md that nothing runs:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("text", sorted(HARMLESS))
def test_harmless_commands_run(text: str) -> None:
    (command,) = simple_commands(text)
    assert command in doc_commands(), f"{text!r} is no longer in the document: drop it from HARMLESS"
    HARMLESS_TOKENS[tuple(command)](command)


def test_self_check_unexercised_commands_are_caught() -> None:
    extra = "```sh\nkc.sh build\nkpb serve --bind 0.0.0.0:8700 --workers 2 --threads 8\nmake deploy\n```\n"
    commands = doc_commands(DOC + "\n" + extra)
    assert unexercised(commands) == ["kc.sh build", "kpb serve --bind 0.0.0.0:8700 --workers 2 --threads 8", "make deploy"]


def test_self_check_normalization() -> None:
    block = Block("console", ["$ FOO=1 .venv/bin/kpb drift --help && make stop", "output line", "$ mvn -B \\", "    -q"], 1)
    assert [c for line in block_commands(block) for c in simple_commands(line)] == [
        ["kpb", "drift", "--help"],
        ["make", "stop"],
        ["mvn", "-B", "-q"],
    ]
    assert matches(["kpb", WILDCARD, re.compile(r"127\.0\.0\.1:.+")], ["kpb", "serve", "127.0.0.1:1"])
    assert not matches(["kpb", WILDCARD], ["kpb", "--revoke"])
    extras, other = (ast.parse(f"[{splat}]", mode="eval").body for splat in ('*os.environ.get("KPB_X", "").split()', "*args"))
    assert isinstance(extras, ast.List) and isinstance(other, ast.List)
    assert _default_elements([ast.Constant("kpb"), *extras.elts]) is not None
    assert _default_elements([ast.Constant("kpb"), *other.elts]) is None


# -- server settings -------------------------------------------------------------------------------


def _java_constants(path: Path, prefix: str) -> dict[str, str]:
    return dict(re.findall(rf'static final String {prefix}(\w+) = "([^"]*)";', path.read_text(encoding="utf-8")))


def provider_id() -> str:
    (found,) = re.findall(r'PROVIDER_ID = "([^"]+)"', MAPPER.read_text(encoding="utf-8"))
    return str(found)


def expected_spi_rows() -> set[tuple[str, str, str]]:
    options, env = _java_constants(SERVER_SETTINGS, "OPTION_"), _java_constants(SERVER_SETTINGS, "ENV_")
    assert options and options.keys() == env.keys(), (options, env)
    pid = provider_id()
    upper = pid.upper().replace("-", "_")
    return {
        (f"--spi-protocol-mapper--{pid}--{option}", f"KC_SPI_PROTOCOL_MAPPER__{upper}__{option.upper().replace('-', '_')}", env[name])
        for name, option in options.items()
    }


def doc_spi_rows() -> set[tuple[str, str, str]]:
    return {(code(r[0]), code(r[1]), code(r[2])) for r in table_rows(section(SERVER_SECTION))}


def test_spi_options_match_the_java_constants() -> None:
    assert doc_spi_rows() == expected_spi_rows()


def test_spi_option_names_are_the_ones_the_java_sources_spell_out() -> None:
    java = "\n".join(p.read_text(encoding="utf-8") for p in JAVA_MAIN.rglob("*.java"))
    cli = set(re.findall(r"--spi-protocol-mapper--[a-z0-9-]+--[a-z0-9-]+", java))
    env = set(re.findall(r"KC_SPI_PROTOCOL_MAPPER__[A-Z0-9_]+", java))
    assert cli == {row[0] for row in doc_spi_rows()}
    assert env == {row[1] for row in doc_spi_rows()}


def test_self_check_a_new_option_is_caught() -> None:
    rows = expected_spi_rows() | {("--spi-protocol-mapper--x--y", "KC_SPI_PROTOCOL_MAPPER__X__Y", "KPB_Y")}
    assert rows != doc_spi_rows()


# -- mapper settings -------------------------------------------------------------------------------


def _failure_modes() -> dict[str, str]:
    return dict(re.findall(r'^\s*(\w+)\("(\w+)"\)[,;]', FAILURE_MODE.read_text(encoding="utf-8"), re.M))


def _enum_config_values() -> dict[str, str]:
    """``Enum.CONSTANT`` -> its config value, for the enums whose ``configValue()`` is a default."""
    sources = {"FailureMode": FAILURE_MODE, "Protocol": MAPPER_SETTINGS, "PdpAuth.Mode": PDP_AUTH}
    return {
        f"{enum}.{constant}": value
        for enum, path in sources.items()
        for constant, value in re.findall(r'\b([A-Z][A-Z_]*)\("([a-z_]+)"\)[,;]', path.read_text(encoding="utf-8"))
    }


def java_mapper_settings() -> dict[str, tuple[str, tuple[int, int] | None]]:
    """key -> (default as the guide writes it, integer range or None), from MapperSettings.java."""
    source = MAPPER_SETTINGS.read_text(encoding="utf-8")
    keys = {name: key for name, key in re.findall(r'static final String (\w+) = "(kpb\.[^"]+)";', source)}
    ranges = {
        name: (int(low.replace("_", "")), int(high.replace("_", "")))
        for name, _, low, high in re.findall(r"integer\(config, (\w+), (\d+), ([\d_]+), ([\d_]+)\)", source)
    }
    properties = source[source.index("configProperties()") :]
    properties = properties[: properties.index(".build();")]
    defaults = {}
    for chunk in properties.split(".property()")[1:]:
        (name,) = re.findall(r"\.name\((\w+)\)", chunk)
        (value,) = re.findall(r"\.defaultValue\(((?:\"[^\"]*\")|(?:[\w.]+\.configValue\(\)))\)", chunk)
        if value.endswith(".configValue()"):
            value = _enum_config_values()[value.removesuffix(".configValue()")]
        else:
            value = value.strip('"')
        defaults[name] = value or "empty"
    assert defaults.keys() == keys.keys(), "every MapperSettings key has a config property with a default"
    # parse() applies the same defaults as the admin console shows
    for name, fallback, _, _ in re.findall(r"integer\(config, (\w+), (\d+), ([\d_]+), ([\d_]+)\)", source):
        assert defaults[name] == fallback, name
    for name, fallback in re.findall(r'name\(config, (\w+), "([^"]*)"', source):
        assert defaults[name] == fallback, name
    return {keys[name]: (defaults[name], ranges.get(name)) for name in keys}


def doc_mapper_settings() -> dict[str, tuple[str, str]]:
    rows = table_rows(section(SCOPE_SECTION))
    return {code(r[0]): (r[1].strip("`"), r[2]) for r in rows}


def test_mapper_settings_table_matches_mapper_settings_java() -> None:
    java, doc = java_mapper_settings(), doc_mapper_settings()
    assert doc.keys() == java.keys()
    for key, (default, bounds) in java.items():
        assert doc[key][0] == default, f"{key}: the guide says {doc[key][0]!r}, the code {default!r}"
        if bounds:
            assert f"{bounds[0]} to {bounds[1]}" in doc[key][1], f"{key}: range {bounds} not in {doc[key][1]!r}"


def toggles_in_java() -> set[str]:
    (implements,) = re.findall(r"class PolicyBridgeMapper extends \w+\s+implements ([^{]+)\{", MAPPER.read_text(encoding="utf-8"))
    found: set[str] = set()
    for interface in (i.strip() for i in implements.split(",")):
        found |= TOGGLES[interface]
    return found


def toggles_in_doc() -> set[str]:
    body = "\n".join(section(SCOPE_SECTION))
    (sentence,) = [p for p in body.split("\n\n") if "standard toggles" in p]
    return set(re.findall(r"`([a-z.A-Z]+\.claim)`", sentence))


def test_toggles_are_the_ones_the_mapper_interfaces_add() -> None:
    assert toggles_in_doc() == toggles_in_java()


def realm_scope() -> dict[str, object]:
    realm = json.loads(REALM.read_text(encoding="utf-8"))
    (scope,) = [s for s in realm["clientScopes"] if any(m["protocolMapper"] == provider_id() for m in s.get("protocolMappers", []))]
    return dict(scope)


def test_the_realm_mapper_uses_documented_keys_and_valid_values() -> None:
    (mapper,) = [m for m in realm_scope()["protocolMappers"] if m["protocolMapper"] == provider_id()]  # type: ignore[attr-defined]
    config: dict[str, str] = mapper["config"]
    documented = doc_mapper_settings()
    assert {k for k in config if k.startswith("kpb.")} <= documented.keys()
    assert {k for k in config if not k.startswith("kpb.")} <= toggles_in_doc()
    assert config["kpb.failure.mode"] in _failure_modes().values()


def test_the_json_block_is_the_realm_scope() -> None:
    body = section(SCOPE_SECTION)
    (block,) = [b for b in fenced_blocks("\n".join(body)) if b.language == "json"]
    assert json.loads("\n".join(block.lines)) == realm_scope()


def test_self_check_a_new_mapper_key_is_caught() -> None:
    java = java_mapper_settings()
    java["kpb.new.key"] = ("1", None)
    assert java.keys() != doc_mapper_settings().keys()


# -- failure mode, names, figures ------------------------------------------------------------------


def test_failure_kinds_are_the_enum() -> None:
    source = BRIDGE_FAILURE.read_text(encoding="utf-8")
    enum = source[source.index("enum Kind") :]
    enum = enum[: enum.index("}")]
    kinds = re.findall(r"^\s*([A-Z_]+)[,\s]*$", re.sub(r"/\*\*.*?\*/", "", enum, flags=re.S), re.M)
    body = "\n".join(section(FAILURE_SECTION))
    (paragraph,) = [p for p in body.split("\n\n") if "failure kind" in p]
    assert re.findall(r"`([A-Z_]+)`", paragraph) == kinds


def test_named_tests_and_helpers_exist() -> None:
    defined = set()
    for path in (ROOT / "tests").rglob("*.py"):
        defined |= set(re.findall(r"^def (\w+)\(", path.read_text(encoding="utf-8"), re.M))
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", DOC)) | {"_governed_scope_mapper"}
    assert len(named) >= 8
    assert named <= defined, named - defined
    stack_source = (ROOT / "scripts" / "stack.py").read_text(encoding="utf-8")
    for helper in ("bridge_env", "keycloak_env"):
        assert f"def {helper}(" in stack_source and f"(`{helper}`)" in DOC
    assert "update_mapper_in_client_scope" in (ROOT / "tests" / "e2e" / "test_keycloak.py").read_text(encoding="utf-8")


def test_the_demo_environment_tables_are_stack_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("KPB_")]:
        monkeypatch.delenv(name)
    paths = stack.Paths(tmp_path, bridge_port=8787)
    bridge = {k: v for k, v in stack.bridge_env(paths).items() if k.startswith("KPB_")}
    keycloak = {k: v for k, v in stack.keycloak_env(paths).items() if k.startswith("KPB_")}
    body = section(RUNNING_SECTION)
    tables: list[list[list[str]]] = []
    start = 0
    while len(tables) < 2:
        start = next(i for i in range(start, len(body)) if body[i].startswith("| variable |"))
        tables.append(table_rows(body[start:]))
        start += 1
    for rows, actual in zip(tables, (bridge, keycloak), strict=True):
        assert {code(r[0]) for r in rows} == actual.keys()
        for row in rows:
            shown = re.match(r"`([^`]*)`", row[1])
            if not shown:
                continue
            value = actual[code(row[0])].replace(str(tmp_path), "var/stack").replace(str(ROOT) + "/", "")
            literal = shown.group(1)
            assert value.startswith(literal.split("<")[0]) if "<" in literal else value == literal, (row, value)
    assert keycloak["KPB_HMAC_SECRET"] in bridge["KPB_HMAC_SECRETS"]
    assert keycloak["KPB_HMAC_KEY_ID"] == bridge["KPB_HMAC_SECRETS"].split("=")[0]


# Figures section 6 quotes: (text in bench/RESULTS.md, text in the guide).
QUOTED_FIGURES = (
    ("2026-11-29T03:05-03:20Z", "2026-11-29T03:05-03:20Z"),
    ("| `/v1/claims`, 2 sync workers | **849** | 1.66 ms |", "849 decisions/s"),
    ("| `/v1/claims`, 2 gthread workers x 8 threads, c=16 | 440 |", "440 against 849 decisions/s"),
    ("saturation 513 decisions/s, server CPU 2.09 ms/decision", "513 decisions/s"),
    ("p50 15.0 / p99 31.8", "p50 15.0 ms and p99 31.8 ms"),
    ("2026-11-29T03:10-03:25Z", "2026-11-29T03:10-03:25Z"),
    ("| 8 clients, log `full` | 324.7/s", "324.7 ungoverned"),
    ("170.4/s, 43.4 / 108.6 ms | 0.525 |", "170.4 governed"),
    ("| 0.475 | 6.3 ms |", "6.3 ms added at p50"),
    ("| 0.527 | 5.4 ms |", "from 6.3 ms to 5.4 ms"),
    ("| 0.597 |", "from 0.525 to 0.597"),
    ("4.19 ms on average with the log on disk and 1.25 ms", "4.19 ms inside the bridge with the log on disk and 1.25 ms"),
    ("2026-11-29T03:20Z", "2026-11-29T03:20Z"),
    ("| 14.4 us | 25.4 us | 54.0 us |", "p50 14.4 µs, p99 54.0 µs"),
    ("1,276 MiB", "1,276 MiB"),
)


def test_quoted_benchmark_figures_are_in_results() -> None:
    results, doc = " ".join(RESULTS.read_text(encoding="utf-8").split()), " ".join(DOC.split())
    for in_results, in_doc in QUOTED_FIGURES:
        assert in_results in results, f"bench/RESULTS.md no longer says {in_results!r}"
        assert in_doc in doc, f"the guide does not say {in_doc!r}"


def test_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", DOC):
        if not target.startswith("http"):
            assert (DOC_PATH.parent / target).exists(), target


# -- the pinned Keycloak version -------------------------------------------------------------------


def pinned_versions() -> dict[str, str]:
    (script,) = re.findall(r'^KC_VERSION="([^"]+)"$', KEYCLOAK_SH.read_text(encoding="utf-8"), re.M)
    (pom,) = re.findall(r"<keycloak.version>([^<]+)</keycloak.version>", POM.read_text(encoding="utf-8"))
    (make,) = re.findall(r"^KC_DIST\s*:?=\s*var/keycloak/keycloak-([^/]+)/bin/kc.sh$", MAKEFILE.read_text(encoding="utf-8"), re.M)
    return {"scripts/keycloak.sh KC_VERSION": script, "keycloak-spi/pom.xml keycloak.version": pom, "Makefile KC_DIST": make}


def test_the_pins_and_the_guide_name_one_version() -> None:
    pins = pinned_versions()
    assert len(set(pins.values())) == 1, pins
    (version,) = set(pins.values())
    named = set(re.findall(r"Keycloak (\d+\.\d+\.\d+)", DOC))
    assert named == {version}, f"the guide names {named}, the pins {pins}"
    assert f"one Keycloak version, {version}" in DOC


def test_every_file_naming_the_version_is_in_the_upgrade_table() -> None:
    (version,) = set(pinned_versions().values())
    listed = set()
    for row in table_rows(section(UPGRADE_SECTION)):
        listed |= set(re.findall(r"`([^`]+)`", row[0]))
    mine = {DOC_PATH, Path(__file__).resolve()}
    naming = set()
    for directory, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(directory) / name
            if path in mine or path.stat().st_size > 2_000_000:
                continue
            if version in path.read_text(encoding="utf-8", errors="ignore"):
                naming.add(path.relative_to(ROOT).as_posix())
    assert {"keycloak-spi/pom.xml", "scripts/keycloak.sh", "Makefile"} <= naming
    assert naming <= listed, f"files naming Keycloak {version} missing from the upgrade table: {sorted(naming - listed)}"
