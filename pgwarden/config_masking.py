"""The ``masking:`` section of the config: which values each role sees masked, and how.

Kept apart from ``config.py`` because masking has its own vocabulary (rules,
semantic types, strategies); ``docs/masking.md`` describes every key.

A rule names columns (``schema.table.column`` globs) and says what their values
become: a strategy for everyone, overridden per role (``none`` = unmasked).
``derived`` says what happens to results *computed* from a masked column
(``lower(email)``, ``row_to_json(c)``): masked as a whole, or the statement is
refused. ``filter`` can refuse statements that use a masked column to choose,
order or group rows, because that lets a client infer the values.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MaskingConfig",
    "MaskRuleConfig",
    "DetectConfig",
    "SemanticType",
    "Strategy",
    "RoleStrategy",
    "column_pattern",
]

SemanticType = Literal[
    "email", "phone", "credit_card", "us_ssn", "iban", "ipv4", "ipv6", "jwt", "api_key", "person", "text"
]
Strategy = Literal["redact", "partial", "tokenize", "null", "constant"]
#: A role's strategy: one of the strategies, or ``none`` (the role sees the value).
RoleStrategy = Literal["redact", "partial", "tokenize", "null", "constant", "none"]
DETECTABLE_TYPES = ("email", "phone", "credit_card", "us_ssn", "iban", "ipv4", "ipv6", "jwt", "api_key")

_PATTERN_PART = re.compile(r"^[^.]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _listify(value: object) -> object:
    return [value] if isinstance(value, str) else value


def column_pattern(pattern: str) -> tuple[str, str, str]:
    """``column``, ``table.column`` or ``schema.table.column`` (globs) as a (schema, table, column) triple."""
    parts = pattern.split(".")
    if not 1 <= len(parts) <= 3 or not all(p and _PATTERN_PART.match(p) for p in parts):
        raise ValueError(f"{pattern!r} is not [schema.][table.]column (globs allowed, e.g. public.customers.email, *.ssn)")
    parts = ["*"] * (3 - len(parts)) + parts
    return parts[0], parts[1], parts[2]


class MaskRuleConfig(_Strict):
    """Columns whose values are masked, and how."""

    name: str
    # Globs on schema.table.column; shorter forms mean any schema (table.column) or any table (column).
    columns: list[str]
    # What the values are: shapes partial masks and format-preserving tokens (email keeps its
    # domain under partial; a tokenized card is 16 Luhn-valid digits).
    type: SemanticType = "text"
    # The strategy for every role not listed in ``roles``.
    strategy: Strategy = "redact"
    constant: str | None = None  # the value of strategy "constant" (text-like columns; other types get NULL)
    # Per role: another strategy, or "none" to see the values.
    roles: dict[str, RoleStrategy] = {}
    # Static (SCRAM) users who see the values; everyone else without a role gets ``strategy``.
    unmasked_users: list[str] = []
    # Results computed from these columns: masked as a whole (type-valid redaction or NULL), or refused.
    derived: Literal["mask", "refuse"] = "mask"
    # Statements using these columns in WHERE, JOIN, ORDER BY, GROUP BY, DISTINCT, ...: allowed or refused.
    filter: Literal["allow", "refuse"] = "allow"
    # COPY ... TO STDOUT of these columns: masked (text, csv, binary) or refused.
    copy_out: Literal["mask", "refuse"] = Field("mask", alias="copy")
    # Targets the rule applies to (empty: every target).
    targets: list[str] = []

    _columns = field_validator("columns", "targets", "unmasked_users", mode="before")(
        classmethod(lambda cls, v: _listify(v))
    )

    @field_validator("columns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a rule needs at least one column pattern")
        for pattern in value:
            column_pattern(pattern)
        return value

    @model_validator(mode="after")
    def _constant(self) -> "MaskRuleConfig":
        uses_constant = self.strategy == "constant" or "constant" in self.roles.values()
        if uses_constant and self.constant is None:
            raise ValueError(f"rule {self.name!r}: strategy 'constant' needs 'constant' (the value to show)")
        return self

    def matches(self, schema: str, table: str, column: str) -> bool:
        for pattern in self.columns:
            s, t, c = column_pattern(pattern)
            if fnmatch.fnmatchcase(column, c) and fnmatch.fnmatchcase(table, t) and fnmatch.fnmatchcase(schema, s):
                return True
        return False

    def strategy_for(self, role: str | None, user: str | None) -> str:
        """The strategy a session sees: its role's override, else the rule's (``none`` = unmasked)."""
        if role is None:
            return "none" if user is not None and user in self.unmasked_users else self.strategy
        return self.roles.get(role, self.strategy)


class DetectConfig(_Strict):
    """Content detection, for result columns whose origin pgwarden cannot tell (function results, ...)."""

    enabled: bool = True
    # unknown: only result columns whose origin pgwarden cannot tell; all: every text or JSON
    # column no column rule masks (slower: every such value is scanned).
    scope: Literal["unknown", "all"] = "unknown"
    types: list[SemanticType] = list(DETECTABLE_TYPES)
    strategy: Strategy = "redact"
    # Per role: semantic types that role sees unmasked (e.g. analyst: [email, phone]).
    visible: dict[str, list[SemanticType]] = {}
    # Per semantic type: another strategy (e.g. email: partial).
    strategies: dict[SemanticType, Strategy] = {}
    # Per role: another strategy for everything detected, or "none" (no detection for that role).
    roles: dict[str, RoleStrategy] = {}
    unmasked_users: list[str] = []
    # Optional plug-ins, e.g. {name: presidio} for free-text person names (pip install presidio-analyzer).
    plugins: list[dict[str, object]] = []

    @field_validator("types", mode="before")
    @classmethod
    def _types(cls, value: object) -> object:
        return _listify(value)


class MaskingConfig(_Strict):
    # Default: on when there are rules.
    enabled: bool | None = None
    # The HMAC key of strategy "tokenize": a file (created, 0600, when missing; relative to
    # data_dir) or an environment variable holding at least 16 bytes.
    key_file: Path = Path("masking.key")
    key_env: str | None = None
    # What strategy "redact" shows in text columns.
    redaction: str = "****"
    # Roles that see every value (no rule, no detection applies to them).
    unmasked_roles: list[str] = []
    # Seconds a target's catalog (relation OIDs, columns, view definitions) is trusted; DDL
    # through pgwarden, and any relation or OID it does not know, reload it sooner.
    catalog_ttl: Annotated[float, Field(gt=0)] = 300.0
    detect: DetectConfig = DetectConfig()
    rules: list[MaskRuleConfig] = []

    @model_validator(mode="after")
    def _unique_names(self) -> "MaskingConfig":
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: duplicate rule name(s) {', '.join(dupes)}")
        return self

    @property
    def active(self) -> bool:
        return self.enabled if self.enabled is not None else bool(self.rules)

    @property
    def uses_tokens(self) -> bool:
        strategies = {self.detect.strategy, *self.detect.strategies.values(), *self.detect.roles.values()}
        for rule in self.rules:
            strategies.add(rule.strategy)
            strategies.update(rule.roles.values())
        return "tokenize" in strategies

    def role_names(self) -> set[str]:
        names = set(self.unmasked_roles) | set(self.detect.roles) | set(self.detect.visible)
        for rule in self.rules:
            names.update(rule.roles)
        return names
