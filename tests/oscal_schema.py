"""Validation against NIST's published OSCAL 1.1.2 assessment-results JSON schema.

Why a module of its own: the OSCAL unit tests and the end-to-end test of
``pgwarden evidence --format oscal`` must judge documents by the same rules, so
both call :func:`validate_oscal`.

Why not plain ``jsonschema.validate``: NIST's patterns use Unicode property
classes (``\\p{L}``, ``\\p{N}`` in every token) that Python's ``re`` rejects, so
jsonschema would raise on the schema instead of judging the document. The
``pattern`` keyword is therefore re-implemented with the ``regex`` module,
which implements those classes (as the XML Schema and ECMAScript-with-``u``
regexes the schema was written for do). The schema itself is checked against
the draft-07 meta-schema first, with its ``regex`` format also judged by
``regex``, so a corrupted vendored file fails loudly instead of validating
nothing. References resolve inside the file only (``$id`` anchors); nothing is
fetched, so the tests run offline.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import regex
from jsonschema import Draft7Validator, FormatChecker, ValidationError, validators

__all__ = ["SCHEMA_PATH", "OscalInvalid", "validate_oscal", "oscal_errors"]

SCHEMA_PATH = Path(__file__).resolve().parent / "data" / "oscal" / "oscal_assessment-results_schema.json"


class OscalInvalid(AssertionError):
    """The document does not conform; ``errors`` holds every violation."""

    def __init__(self, errors: list[ValidationError]):
        self.errors = errors
        shown = "\n".join(f"  at {e.json_path}: {e.message[:300]}" for e in errors[:25])
        more = f"\n  ... and {len(errors) - 25} more" if len(errors) > 25 else ""
        super().__init__(f"OSCAL document is invalid ({len(errors)} error(s)):\n{shown}{more}")


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _pattern(validator, pattern: str, instance: Any, schema: dict):
    """The ``pattern`` keyword with ``regex`` semantics (unanchored search, as JSON Schema says)."""
    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _format_checker() -> FormatChecker:
    """Draft-07 formats, with ``regex`` judged by the ``regex`` module."""
    checker = FormatChecker(formats=[f for f in Draft7Validator.FORMAT_CHECKER.checkers if f != "regex"])

    @checker.checks("regex", raises=regex.error)
    def _is_regex(instance: object) -> bool:
        return not isinstance(instance, str) or bool(_compiled(instance))

    return checker


_OscalValidator = validators.extend(Draft7Validator, {"pattern": _pattern})


@functools.lru_cache(maxsize=1)
def _validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    if "patternProperties" in json.dumps(schema):
        # Would be judged by ``re``, not ``regex``: extend the validator first.
        raise RuntimeError("schema uses patternProperties, which this validator does not re-implement")
    meta = Draft7Validator(Draft7Validator.META_SCHEMA, format_checker=_format_checker())
    problems = list(meta.iter_errors(schema))
    if problems:
        raise RuntimeError(f"vendored OSCAL schema is not a valid draft-07 schema: {problems[0].message}")
    return _OscalValidator(schema, format_checker=_format_checker())


def oscal_errors(doc: Any) -> list[ValidationError]:
    """Every violation of the schema, in document order (empty when valid)."""
    return sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])


def validate_oscal(doc: Any) -> None:
    """Raise :class:`OscalInvalid` unless ``doc`` is a valid OSCAL 1.1.2 assessment-results document."""
    errors = oscal_errors(doc)
    if errors:
        raise OscalInvalid(errors)
