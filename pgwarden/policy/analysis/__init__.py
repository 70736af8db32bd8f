"""SQL analysis with the PostgreSQL parser (pglast / libpg_query), parsed once per shape.

:func:`analyze` turns a statement text into an :class:`Analysis`. The costly
part, walking the parse tree, happens once per statement *shape*:

1. an exact-text lookup (a repeated prepared statement costs one dict lookup);
2. otherwise, for a short text without quoted identifiers, a lookup by the text
   with its numbers masked (see below);
3. otherwise the text is normalised by libpg_query (constants become ``$n``,
   about 2 µs) and looked up by that: clients in simple-query mode inline their
   literals, so ``pgbench -S`` sends a different text every time but always the
   same normalised one;
4. otherwise it is parsed and walked, and cached under all keys.

Why the normalised text and not pglast's 64-bit fingerprint: a fingerprint is a
hash, and a hostile client that found a collision could make a ``DROP`` look
like a cached ``SELECT``. Two texts with the same normalised form are the same
text except for the constants, so they have the same parse tree except for the
constants' values. An analysis that read a constant's value (``SET``,
``set_config('role', …)``) is marked literal-dependent and only ever reused for
the identical text.

The masked-number key (step 2) saves the normalisation (a full parse inside
libpg_query) for the commonest case, a client inlining numbers. It replaces each
run of ASCII digits that is not part of a word (a letter, digit, ``_``, ``$`` or
any non-ASCII character before it: identifiers, ``$1`` parameters) by ``0``.
It is only used for texts without a double quote, where such a run can only be
inside a numeric constant, a string, or a comment. Runs of 10 or more digits
are left as they are, so a number never changes between integer and numeric
(where the grammar accepts only one). A masked key is registered once per
shape and only after checking that the masked text normalises exactly as the
original did, so every masked digit was inside a constant that normalisation
ignores anyway.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

from pglast import parser as _pg

from .facts import CLASSIFICATIONS, Analysis, Column, Name, StatementFacts
from .statement import walk_statement

__all__ = ["error_rule", "Analysis", "Analyzer", "Column", "Name", "StatementFacts", "CLASSIFICATIONS", "analyze", "default_analyzer"]

SYNTAX_ERROR = "42601"
CHARACTER_NOT_IN_REPERTOIRE = "22021"
STATEMENT_TOO_COMPLEX = "54001"
PROGRAM_LIMIT_EXCEEDED = "54000"


# A run of 1-9 ASCII digits not preceded by anything PostgreSQL would read as part
# of an identifier or a parameter.
_NUMBER_RUN = re.compile(r"(?<![A-Za-z0-9_$\x80-\U0010ffff])[0-9]{1,9}(?![0-9])")
_MASK_MAX_LENGTH = 4096


def _mask_numbers_python(text: str) -> str:
    return _NUMBER_RUN.sub("0", text)


def _load_mask():
    """The compiled twin (pgwarden.session._speedups) when it is built, else the regex."""
    import os

    if os.environ.get("PGWARDEN_PURE_PYTHON", "") not in ("", "0"):
        return _mask_numbers_python
    try:
        from ...session._speedups import mask_numbers
    except ImportError:
        return _mask_numbers_python

    def mask(text: str) -> str:
        masked = mask_numbers(text)
        return _NUMBER_RUN.sub("0", text) if masked is None else masked

    return mask


mask_numbers = _load_mask()


class Analyzer:
    """A bounded, two-level analysis cache in front of the parser."""

    def __init__(self, cache_size: int = 8192, max_length: int = 1024 * 1024) -> None:
        self.cache_size = cache_size
        self.max_length = max_length
        self._exact: dict[str, Analysis] = {}
        self._shapes: OrderedDict[str, Analysis] = OrderedDict()
        self._masked: dict[str, Analysis] = {}
        self.misses = 0  # statements parsed and walked (cache misses)

    def analyze(self, text: str) -> Analysis:
        found = self._exact.get(text)
        if found is not None:
            return found
        masked = None
        if len(text) <= _MASK_MAX_LENGTH and '"' not in text:
            masked = mask_numbers(text)
            found = self._masked.get(masked)
            if found is not None:
                return found
        if len(text) > self.max_length:
            return Analysis(
                (),
                error=f"statement is {len(text)} characters long; pgwarden analyses at most {self.max_length}",
                error_sqlstate=PROGRAM_LIMIT_EXCEEDED,
            )
        try:
            key = _pg.normalize(text)
        except _pg.ParseError as exc:
            analysis = _parse_error(exc)
            self._remember_exact(text, analysis)
            return analysis
        except RecursionError:
            return _too_complex()
        except UnicodeError:
            return _bad_text()
        except Exception:  # a normaliser bug must not stop analysis: parse without the shape key
            key = None
        if key is not None:
            shapes = self._shapes
            found = shapes.get(key)
            if found is not None:
                shapes.move_to_end(key)
                if masked is not None:
                    self._remember_masked(masked, key, found)
                return found
        self.misses += 1
        analysis = analyze_uncached(text)
        if key is not None and not analysis.literal_dependent and analysis.ok:
            self._shapes[key] = analysis
            if len(self._shapes) > self.cache_size:
                self._shapes.popitem(last=False)
            if masked is not None:
                self._remember_masked(masked, key, analysis)
        self._remember_exact(text, analysis)
        return analysis

    def _remember_masked(self, masked: str, key: str, analysis: Analysis) -> None:
        """Register the masked-number key, if masking touched nothing but constants."""
        if masked in self._masked:
            return
        try:
            same = _pg.normalize(masked) == key
        except Exception:
            same = False
        if same:
            table = self._masked
            table[masked] = analysis
            if len(table) > self.cache_size:
                del table[next(iter(table))]

    def known(self, text: str) -> Analysis | None:
        """The cached analysis of exactly this text, if any (no parsing)."""
        return self._exact.get(text)

    def remember(self, text: str, analysis: Analysis) -> None:
        """Cache an analysis computed elsewhere (e.g. in a worker thread) for this exact text."""
        self._remember_exact(text, analysis)

    def _remember_exact(self, text: str, analysis: Analysis) -> None:
        exact = self._exact
        exact[text] = analysis
        if len(exact) > self.cache_size:
            del exact[next(iter(exact))]

    def clear(self) -> None:
        self._exact.clear()
        self._masked.clear()
        self._shapes.clear()


def _parse_error(exc: Exception) -> Analysis:
    message = str(exc.args[0]) if getattr(exc, "args", None) else str(exc)
    position = exc.args[1] if len(getattr(exc, "args", ())) > 1 else None
    if isinstance(position, int) and position >= 0:
        position += 1  # PostgreSQL reports 1-based character positions
    else:
        position = None
    if "stack depth" in message:
        return Analysis((), error=message, error_sqlstate=STATEMENT_TOO_COMPLEX)
    return Analysis((), error=message, error_sqlstate=SYNTAX_ERROR, error_position=position)


def _too_complex() -> Analysis:
    return Analysis((), error="statement is nested too deeply to analyse", error_sqlstate=STATEMENT_TOO_COMPLEX)


def _bad_text() -> Analysis:
    return Analysis((), error="statement text is not valid Unicode", error_sqlstate=CHARACTER_NOT_IN_REPERTOIRE)


_ERROR_RULES = {
    SYNTAX_ERROR: "guardrails.syntax",
    STATEMENT_TOO_COMPLEX: "guardrails.too_complex",
    PROGRAM_LIMIT_EXCEEDED: "guardrails.too_long",
    CHARACTER_NOT_IN_REPERTOIRE: "guardrails.encoding",
}


def error_rule(analysis: Analysis) -> str:
    """The rule name a refusal of an unanalysable statement carries."""
    return _ERROR_RULES.get(analysis.error_sqlstate or "", "guardrails.unparseable")


def analyze_uncached(text: str) -> Analysis:
    """Parse and walk ``text``; never raises for bad input (the error is in the Analysis)."""
    try:
        tree = json.loads(_pg.parse_sql_json(text))
    except _pg.ParseError as exc:
        return _parse_error(exc)
    except RecursionError:
        return _too_complex()
    except UnicodeError:
        return _bad_text()
    statements = []
    literal_dependent = False
    try:
        for raw in tree.get("stmts", ()):
            facts, dependent = walk_statement(raw.get("stmt") or {})
            statements.append(facts)
            literal_dependent |= dependent
    except RecursionError:
        return _too_complex()
    return Analysis(tuple(statements), literal_dependent=literal_dependent)


default_analyzer = Analyzer()


def analyze(text: str) -> Analysis:
    """Analyse ``text`` with the process-wide cache."""
    return default_analyzer.analyze(text)
