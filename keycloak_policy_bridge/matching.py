"""Glob matching for client ids, sources and entitlement values, compiled once at load."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class GlobSet:
    """A set of exact strings and shell-style globs; ``matches`` is case-sensitive.

    An empty set is "unrestricted": it matches everything. Exact entries are checked with a set
    lookup first, since most entries in real policies have no wildcard.
    """

    patterns: tuple[str, ...] = ()
    _exact: frozenset[str] = frozenset()
    _regex: re.Pattern[str] | None = None

    @classmethod
    def of(cls, patterns: list[str] | tuple[str, ...] | None) -> GlobSet:
        """Compile ``patterns``; ``None`` or empty yields the unrestricted set."""
        items = tuple(patterns or ())
        exact = frozenset(p for p in items if not _GLOB_CHARS.intersection(p))
        wild = [fnmatch.translate(p) for p in items if _GLOB_CHARS.intersection(p)]
        regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild else None
        return cls(items, exact, regex)

    @property
    def unrestricted(self) -> bool:
        return not self.patterns

    def matches(self, value: str | None) -> bool:
        """True when the set is unrestricted or ``value`` matches one entry."""
        if not self.patterns:
            return True
        if value is None:
            return False
        if value in self._exact:
            return True
        return self._regex is not None and self._regex.match(value) is not None
