"""Function lists for the guardrail rules.

``safe_functions()``
    Names of side-effect-free PostgreSQL built-in functions (``pg_catalog``
    schema implied): string, math, date/time, JSON, array, aggregate, window,
    range, network, text search, formatting and type-conversion functions, and
    a few vetted volatile reads such as ``random`` and ``gen_random_uuid``.
    The ``read-only`` pack refuses any function call whose name is *not* on
    this list (default deny), so a function missing here is refused, never
    silently allowed.

``dangerous_functions()``
    Functions that read server files, connect to other servers, control
    backends, or run SQL given as a string, mapped to their group
    (``file_access``, ``exfiltration``, ``backend_control``,
    ``sql_from_string``). Rules can refuse these in every pack.

Both lists are matched by lowercase name only, without argument types: a name
is safe only if all its callable overloads are.

The data live in ``pgwarden/policy/data/``. ``safe_functions.txt`` is
generated from ``pg_catalog.pg_proc`` of a real server; regenerate it (after
editing ``dangerous_functions.txt`` or when moving to a new PostgreSQL major
version) with::

    python tools/gen_safe_functions.py [--dsn DSN] [--out PATH] [--explain]

and review the diff. ``dangerous_functions.txt`` is written by hand.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["GROUPS", "dangerous_functions", "parse_dangerous", "parse_names", "safe_functions"]

#: Groups allowed in dangerous_functions.txt.
GROUPS = frozenset({"file_access", "exfiltration", "backend_control", "sql_from_string"})

_DATA_PACKAGE = "pgwarden.policy.data"
_GROUP_PREFIX = "# group:"


def _read(name: str) -> str:
    return resources.files(_DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def parse_names(text: str) -> list[str]:
    """Names from a list file: one per line; blank lines and ``#`` comments skipped."""
    names = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


def parse_dangerous(text: str) -> dict[str, str]:
    """Parse dangerous_functions.txt into ``{name: group}``.

    Raises ValueError for a name before the first ``# group:`` header, an
    unknown group, a name that is not lowercase, or a name listed twice.
    """
    result: dict[str, str] = {}
    group: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(_GROUP_PREFIX):
            group = line[len(_GROUP_PREFIX):].strip()
            if group not in GROUPS:
                raise ValueError(f"line {lineno}: unknown group {group!r}")
            continue
        if line.startswith("#"):
            continue
        if group is None:
            raise ValueError(f"line {lineno}: {line!r} is not under a '# group:' header")
        if line != line.lower():
            raise ValueError(f"line {lineno}: {line!r} is not lowercase")
        if line in result:
            raise ValueError(f"line {lineno}: {line!r} is listed twice")
        result[line] = group
    return result


@cache
def safe_functions() -> frozenset[str]:
    """Lowercase names of built-in functions the read-only pack allows."""
    return frozenset(parse_names(_read("safe_functions.txt")))


@cache
def dangerous_functions() -> dict[str, str]:
    """Lowercase dangerous function name -> group. Do not mutate the result (cached)."""
    return parse_dangerous(_read("dangerous_functions.txt"))
