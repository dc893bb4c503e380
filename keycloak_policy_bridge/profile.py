"""Vendor export profiles: declarative column mappings from a vendor's export to normalized rows.

An IGA product exports what it exports: SailPoint ISC search exports, IdentityIQ reports, Saviynt
analytics, Entra ID Governance assignments. A profile (``kpb-profile/1`` JSON, checked against
``schemas/profile.v1.schema.json``) says, per normalized column of contract-v1 section 2, where
the value comes from (a header, a template over several headers, or a constant) and how it is
translated (value maps such as Saviynt's ``1``/``2``, null sentinels, multi-valued cells, date
formats and zones). Cells are only ever treated as text: nothing is evaluated.

Shipped profiles live in ``keycloak_policy_bridge/profiles/``; a profile can also be a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from importlib import resources
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from keycloak_policy_bridge.canonical import digest
from keycloak_policy_bridge.errors import EntitlementSourceError, Issue
from keycloak_policy_bridge.json_schema import json_path, schema_issues
from keycloak_policy_bridge.timeutil import format_rfc3339, parse_rfc3339

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%X", "%c", "%p", "%T", "%R", "%f")
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


class RowError(ValueError):
    """Raised by ``Profile.apply`` when a row cannot be mapped; the message names the column."""


def header_key(name: str) -> str:
    """How headers are compared: case-insensitive, surrounding and repeated spaces ignored."""
    return " ".join(name.replace("\ufeff", "").split()).casefold()


@dataclass(frozen=True)
class DateRule:
    formats: tuple[str, ...]
    zone: tzinfo
    date_only_end: bool

    def parse(self, text: str) -> str:
        """Return RFC 3339 UTC for ``text``, trying each format in order.

        Raises:
            RowError: no format matches.
        """
        for fmt in self.formats:
            try:
                if fmt == "rfc3339":
                    return format_rfc3339(parse_rfc3339(text))
                if fmt in ("epoch_ms", "epoch_s"):
                    # Plain digits of a plausible length only: int() would also take "1_000",
                    # and a two-digit "epoch" is a misread column, not a date in 1970.
                    if not text.isdigit() or len(text) < (12 if fmt == "epoch_ms" else 9):
                        continue
                    number = int(text)
                    seconds = number / 1000 if fmt == "epoch_ms" else number
                    return format_rfc3339(datetime.fromtimestamp(seconds, UTC))
                parsed = datetime.strptime(text, fmt)
            except (ValueError, OverflowError, OSError):
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=self.zone)
                if parsed.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) != parsed.replace(tzinfo=None):
                    raise RowError(f"the local time does not exist in {self.zone} (skipped by a daylight-saving change)")
            if self.date_only_end and not any(d in fmt for d in _TIME_DIRECTIVES):
                parsed += timedelta(days=1)  # an inclusive last day ends where the next one starts
            return format_rfc3339(parsed)
        raise RowError(f"not a date in any of the formats {', '.join(self.formats)}")


@dataclass(frozen=True)
class ColumnRule:
    """How one normalized column is produced from a vendor row."""

    target: str
    sources: tuple[str, ...] = ()
    template: str | None = None
    constant: str | None = None
    value_map: dict[str, str] | None = None
    map_default: str | None = None
    default: str | None = None
    null_values: frozenset[str] = frozenset()
    split: str | None = None
    lower: bool = False
    date: DateRule | None = None
    optional: bool = False  # the export may lack the header entirely; then the default applies

    def inputs(self) -> tuple[str, ...]:
        """The vendor fields this column reads."""
        if self.template is not None:
            return tuple(_PLACEHOLDER.findall(self.template))
        return self.sources

    def _origin(self) -> str:
        if self.template is not None:
            return repr(self.template)
        return " or ".join(repr(s) for s in self.sources) or "a constant"

    def values(self, row: dict[str, str]) -> list[str]:
        """The normalized value(s) of this column for ``row`` (several only when splitting).

        Raises:
            RowError: a value is not in ``map`` (and there is no ``map_default``) or not a date.
        """
        raw = self._raw(row)
        if self.split is not None and raw:
            parts = [p.strip() for p in raw.split(self.split)]
            values = [self._finish(p) for p in parts if p and p not in self.null_values]
            # A cell of bare separators is an empty cell, not "no record": let the required
            # check see it.
            return values or [self._finish("")]
        return [self._finish(raw)]

    def _raw(self, row: dict[str, str]) -> str:
        if self.constant is not None:
            return self.constant
        if self.template is not None:
            cells = {name: row.get(header_key(name), "").strip() for name in _PLACEHOLDER.findall(self.template)}
            if not any(v and v not in self.null_values for v in cells.values()):
                return ""  # all inputs empty: empty, not the template's bare separators
            return _PLACEHOLDER.sub(lambda m: cells[m.group(1)], self.template)
        for source in self.sources:
            value = row.get(header_key(source))
            if value and value.strip() and value.strip() not in self.null_values:
                return value  # alternatives fall through empty and null-valued cells
        return ""

    def _finish(self, value: str) -> str:
        value = value.strip()
        if value in self.null_values:
            value = ""
        if not value:
            return self.default or ""
        if self.value_map is not None:
            mapped = self.value_map.get(value.casefold())
            if mapped is None:
                if self.map_default is None:
                    raise RowError(f"{self.target} (from {self._origin()}): value is not in the profile's map")
                mapped = self.map_default
            value = mapped
        if self.date is not None and value:
            try:
                value = self.date.parse(value)
            except RowError as exc:
                raise RowError(f"{self.target} (from {self._origin()}): {exc}") from None
        return value.lower() if self.lower else value


@dataclass(frozen=True)
class Profile:
    """A compiled vendor profile."""

    name: str
    source_system: str
    file_type: str  # csv | jsonl
    encoding: str
    delimiter: str
    quotechar: str
    columns: tuple[ColumnRule, ...]
    digest: str
    description: str = ""

    def missing_headers(self, headers: list[str]) -> list[tuple[str, str]]:
        """``(target, description)`` for every mapped column none of whose headers is present.

        A missing header is a rejection, not an empty column: an export that silently lost its
        privilege or end-date column must not load as "nothing is privileged, nothing ends".
        Only columns marked ``optional`` may be absent.
        """
        present = {header_key(h) for h in headers}
        missing = []
        for column in self.columns:
            if column.optional:
                continue
            if column.sources and not any(header_key(s) in present for s in column.sources):
                missing.append((column.target, f"{column.target} (from {' or '.join(repr(s) for s in column.sources)})"))
            for name in column.inputs() if column.template is not None else ():
                if header_key(name) not in present:
                    missing.append((column.target, f"{column.target} (template needs {name!r})"))
        return missing

    def apply(self, row: dict[str, str]) -> list[dict[str, str]]:
        """Map one vendor row (keys already passed through ``header_key``) to normalized rows.

        Raises:
            RowError: naming the column that could not be mapped.
        """
        base: dict[str, str] = {}
        split_column: ColumnRule | None = None
        split_values: list[str] = []
        for column in self.columns:
            values = column.values(row)
            if column.split is not None:
                split_column, split_values = column, values
            else:
                base[column.target] = values[0]
        if split_column is None:
            return [base]
        return [{**base, split_column.target: v} for v in split_values]


def _zone(name: str | None, path: str, issues: list[Issue]) -> tzinfo:
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    match = _OFFSET.match(name)
    if match:
        sign = 1 if match.group(1) == "+" else -1
        return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        issues.append(Issue(path, f"unknown time zone '{name}'", "bad_timezone"))
        return UTC


def compile_profile(document: Any, location: str = "<profile>") -> Profile:
    """Validate and compile a profile document.

    Raises:
        EntitlementSourceError: every problem, with its JSON path.
    """
    issues = schema_issues("profile.v1.schema.json", document)
    if issues:
        raise EntitlementSourceError(f"{location}: profile is invalid", issues)
    columns = []
    splitting = []
    for target, spec in document["columns"].items():
        path = json_path(["columns", target])
        date = None
        if "date" in spec:
            d = spec["date"]
            date = DateRule(tuple(d["formats"]), _zone(d.get("timezone"), f"{path}.date.timezone", issues), bool(d.get("date_only_end")))
        if "split" in spec:
            splitting.append(target)
        sources = spec.get("from", ())
        columns.append(
            ColumnRule(
                target=target,
                sources=(sources,) if isinstance(sources, str) else tuple(sources),
                template=spec.get("template"),
                constant=spec.get("value"),
                value_map={k.strip().casefold(): v for k, v in spec["map"].items()} if "map" in spec else None,
                map_default=spec.get("map_default"),
                default=spec.get("default"),
                null_values=frozenset(spec.get("null_values", ())),
                split=spec.get("split"),
                lower=bool(spec.get("lower")),
                date=date,
                optional=bool(spec.get("optional")),
            )
        )
    if len(splitting) > 1:
        # Two multi-valued columns would pair values by position, which no export guarantees.
        issues.append(Issue("$.columns", f"only one column may split, not {', '.join(splitting)}", "ambiguous_split"))
    fmt = document["format"]
    encoding = fmt.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except LookupError:
        issues.append(Issue("$.format.encoding", f"unknown encoding '{encoding}'", "bad_encoding"))
    if issues:
        raise EntitlementSourceError(f"{location}: profile is invalid", issues)
    return Profile(
        name=document["name"],
        source_system=document["source_system"],
        file_type=fmt["type"],
        encoding=encoding,
        delimiter=fmt.get("delimiter", ","),
        quotechar=fmt.get("quotechar", '"'),
        columns=tuple(columns),
        digest=digest(document),
        description=document.get("description", ""),
    )


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in the package."""
    folder = resources.files("keycloak_policy_bridge").joinpath("profiles")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name, or a profile file by path.

    Raises:
        EntitlementSourceError: unknown name, unreadable file, or an invalid profile.
    """
    if name_or_path in shipped_profiles():
        text = resources.files("keycloak_policy_bridge").joinpath("profiles", f"{name_or_path}.json").read_text("utf-8")
        location = f"profile {name_or_path}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(shipped_profiles())
            raise EntitlementSourceError(f"unknown profile '{name_or_path}' (shipped: {known}; or give a file path)")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise EntitlementSourceError(f"{path}: cannot read profile ({exc.strerror})") from None
        location = str(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EntitlementSourceError(f"{location}: not valid JSON (line {exc.lineno} column {exc.colno})") from None
    return compile_profile(document, location)
