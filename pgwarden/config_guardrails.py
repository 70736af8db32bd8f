"""The ``guardrails:`` section of the config: ordered rules, built-in packs, defaults.

Kept apart from ``config.py`` because the rule language is its own small
vocabulary; ``docs/guardrails.md`` is the user-facing description of every key.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "GuardrailsConfig",
    "RuleConfig",
    "RuleMatch",
    "TimeWindow",
    "PACKS",
    "PACK_RULES",
    "PACK_RULE_NAMES",
    "RolePolicy",
    "Action",
    "Classification",
]

PACKS = ("dangerous", "read-only")
# Every built-in pack rule, by name (``roles.NAME.guardrails.exempt`` takes these).
PACK_RULES = {
    "dangerous": (
        "drop", "truncate", "no_where", "alter_system", "copy_program", "server_files", "exfiltration",
        "hidden_sql", "roles", "load", "extension", "untrusted_language", "backend_control", "anonymous_code",
    ),
    "read-only": (
        "read_write", "write", "row_lock", "sequences", "settings", "listen_notify", "lock", "temp_objects",
        "opaque_code", "functions",
    ),
}
PACK_RULE_NAMES = frozenset(f"{pack}.{rule}" for pack, rules in PACK_RULES.items() for rule in rules)
Action = Literal["allow", "deny", "review", "alert"]
Default = Literal["allow", "deny", "review"]
Classification = Literal["read", "write", "ddl", "dcl", "transaction", "session", "utility"]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _listify(value: object) -> object:
    """Let a single value stand for a one-item list (``command: DELETE``)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]
    return value


class TimeWindow(_Strict):
    """When a rule applies: days of the week and a start-end time of day in a time zone."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = list(_DAYS)
    start: str = "00:00"
    end: str = "24:00"
    timezone: str = "UTC"

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: object) -> object:
        value = _listify(value)
        if isinstance(value, list):
            out: list[str] = []
            for item in value:
                text = str(item).lower()[:3]
                if "-" in str(item):  # mon-fri
                    first, last = (p.strip().lower()[:3] for p in str(item).split("-", 1))
                    if first in _DAYS and last in _DAYS:
                        i, j = _DAYS.index(first), _DAYS.index(last)
                        span = _DAYS[i : j + 1] if i <= j else _DAYS[i:] + _DAYS[: j + 1]
                        out.extend(span)
                        continue
                out.append(text)
            return out
        return value

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("use HH:MM (24-hour clock)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class RuleMatch(_Strict):
    """What a rule matches. Every key given must match; a list matches when any item does.

    Object patterns (``tables``, ``columns``, ``functions``, ``schemas``) are
    globs (``*``, ``?``, ``[...]``), case-insensitive. For ``allow`` rules every
    object of that kind the statement touches must match (so an allow on
    ``public.orders`` never lets a join with ``customers`` through); for the
    other actions one is enough.
    """

    classification: list[Classification] | None = None
    command: list[str] | None = None
    tables: list[str] | None = None
    schemas: list[str] | None = None
    columns: list[str] | None = None
    functions: list[str] | None = None
    has_where: bool | None = None
    flags: list[str] | None = None
    targets: list[str] | None = None
    roles: list[str] | None = None
    identities: list[str] | None = None
    time: TimeWindow | None = None

    @field_validator(
        "classification", "command", "tables", "schemas", "columns", "functions", "flags", "targets", "roles",
        "identities", mode="before",
    )
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return _listify(value)

    @field_validator("command")
    @classmethod
    def _upper(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [" ".join(v.upper().split()) for v in value]


class RuleConfig(_Strict):
    """One rule: a name (shown to the client and recorded), a match, an action."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")]
    match: RuleMatch = RuleMatch()
    action: Action
    # Raise an alert (the Alerts milestone delivers it) in addition to the action.
    alert: bool = False
    message: str | None = None
    hint: str | None = None


def _check_exempt(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in PACK_RULE_NAMES]
    if unknown:
        raise ValueError(f"unknown pack rule(s) {', '.join(unknown)}; known: {', '.join(sorted(PACK_RULE_NAMES))}")
    return names


class RolePolicy(_Strict):
    """Guardrail settings that a role may override (``roles.NAME.guardrails``)."""

    packs: list[Literal["dangerous", "read-only"]] | None = None
    exempt: list[str] = []  # pack rules switched off, e.g. dangerous.truncate
    default: Default | None = None

    _exempt = field_validator("exempt")(classmethod(lambda cls, v: _check_exempt(v)))


class GuardrailsConfig(_Strict):
    enabled: bool = True
    # Packs for sessions without a role (static users); a role's own list wins.
    packs: list[Literal["dangerous", "read-only"]] = ["dangerous"]
    exempt: list[str] = []
    default: Default = "allow"
    rules: list[RuleConfig] = []
    # Longest statement text analysed; longer statements are refused (54000).
    max_statement_length: Annotated[int, Field(ge=1024)] = 1024 * 1024
    cache_size: Annotated[int, Field(ge=16)] = 8192

    _exempt = field_validator("exempt")(classmethod(lambda cls, v: _check_exempt(v)))

    @model_validator(mode="after")
    def _unique_names(self) -> "GuardrailsConfig":
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate rule name(s) {', '.join(dupes)}")
        return self
