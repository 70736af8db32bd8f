"""Property test: random SQL built from the corpus never crashes the analyser.

The text is made of fragments of the corpus (``tests/corpus/guardrails.txt``):
tokens shuffled and glued with odd separators, whole cases spliced at random
cut points, cases wrapped in other statements (subquery, CTE, EXPLAIN,
PREPARE, COPY, DO...), random truncation, quotes, dollar quotes, comments and semicolons
inserted anywhere, parentheses or subqueries nested up to a few thousand deep,
and inputs repeated up to about 200 KB. For every text:

* ``analyze_uncached`` and ``Analyzer().analyze`` return an Analysis (never
  raise): either ``error`` is set (with a SQLSTATE pgwarden maps to a rule and
  no statements), or the statements are there;
* a shared, warm ``Analyzer`` (its shape cache filled by earlier texts) gives
  the same facts as a fresh analysis: the cache never hands one text another
  text's verdict;
* ``check_statement`` returns allow/deny/review for every role.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgwarden.config import load_config
from pgwarden.policy.analysis import Analysis, Analyzer, analyze_uncached
from pgwarden.policy.rules import Policy
from pgwarden.services.policy import check_statement

CORPUS_DIR = Path(__file__).parent / "corpus"
ROLES = ("agent", "developer", "dba")
ERROR_SQLSTATES = {"42601", "54001", "54000", "22021"}  # 22021: text that is not valid Unicode
MAX_TEXT = 200 * 1024


def _corpus_sql() -> list[str]:
    out = []
    for raw in (CORPUS_DIR / "guardrails.txt").read_text(encoding="utf-8").splitlines():
        if raw.strip() and not raw.lstrip().startswith("#") and " | " in raw:
            out.append(raw.partition(" | ")[2])
    return out


SQL_LINES = _corpus_sql()
# Words, quoted strings, dollar-quote tags, numbers and single punctuation characters.
_TOKEN = re.compile(r"\w+|'(?:[^']|'')*'|\$\w*\$|\S")
FRAGMENTS = sorted({tok for line in SQL_LINES for tok in _TOKEN.findall(line)})
SEPARATORS = [" ", " ", " ", "", "\n", "\t", "\r\n", "\f", "  ", "/**/", "/* c */", " -- c\n", "\u00a0"]
NOISE = ["'", '"', "$$", "$a$", "$1", "--", "/*", "*/", ";", ";;", "(", ")", "[", "]", "::", ",", "\\", "E'\\'",
         "U&'\\0041'", "B'01'", "X'ff'", "e'\\x", "\x00", "é", "😀", "\u2028", "`", "{", "}", "@", "#", "%",
         "?", "^", "|", "&", "~", "!", "<", ">", "=", "*", "+", "-", "/", "\\\\", "$$;$$"]


@st.composite
def token_soup(draw) -> str:
    """Corpus tokens and noise, glued with random separators."""
    parts = draw(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(NOISE)), max_size=60))
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps))


@st.composite
def spliced_cases(draw) -> str:
    """Whole corpus cases cut at random points and joined (often with semicolons)."""
    lines = draw(st.lists(st.sampled_from(SQL_LINES), min_size=1, max_size=4))
    out = []
    for line in lines:
        start = draw(st.integers(0, len(line)))
        stop = draw(st.integers(start, len(line)))
        out.append(line[: start] + line[stop:] if draw(st.booleans()) else line[start:stop] or line)
    joiner = draw(st.sampled_from(["; ", ";", " ", "\n", " UNION ", " ) ", " ( ", "$$"]))
    return joiner.join(out)


WRAPPERS = ["SELECT * FROM ({}) AS x", "WITH x AS ({}) SELECT * FROM x", "EXPLAIN {}", "EXPLAIN ANALYZE {}",
            "PREPARE p AS {}", "COPY ({}) TO STDOUT", "DECLARE c CURSOR FOR {}", "CREATE TABLE t AS {}",
            "SELECT ({})", "SELECT 1 WHERE EXISTS ({})", "BEGIN; {}; COMMIT", "{}; {}", "/* {} */ SELECT 1",
            "SELECT $${}$$", "DO $$BEGIN {}; END$$"]


@st.composite
def wrapped_cases(draw) -> str:
    """A corpus case inside another statement (subquery, CTE, EXPLAIN, PREPARE, COPY...), nested a few times."""
    text = draw(st.sampled_from(SQL_LINES))
    for _ in range(draw(st.integers(1, 4))):
        text = draw(st.sampled_from(WRAPPERS)).replace("{}", text.rstrip("; "))
    return text


@st.composite
def mutated(draw, base) -> str:
    text = draw(base)
    # insert noise at random positions
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 4]))):
        pos = draw(st.integers(0, len(text)))
        text = text[:pos] + draw(st.sampled_from(NOISE + SEPARATORS)) + text[pos:]
    # random nesting: bare parentheses, or subqueries, a few thousand deep
    kind = draw(st.sampled_from(["none"] * 6 + ["parens", "subquery", "array", "unbalanced"]))
    if kind != "none":
        depth = draw(st.integers(1, 3000))
        if kind == "parens":
            text = "SELECT " + "(" * depth + text + ")" * depth
        elif kind == "subquery":
            depth = min(depth, 1500)
            text = "SELECT " + "(SELECT " * depth + (text or "1") + ")" * depth
        elif kind == "array":
            text = "SELECT " + "ARRAY[" * depth + (text or "1") + "]" * depth
        else:
            text = "(" * depth + text + ")" * draw(st.integers(0, depth))
    # random truncation
    if draw(st.integers(0, 3)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    # very long inputs
    if draw(st.integers(0, 9)) == 0 and text:
        times = draw(st.integers(1, max(1, MAX_TEXT // len(text))))
        text = (text + draw(st.sampled_from(["; ", " ", "\n", ""]))) * times
    return text[:MAX_TEXT]


SQL_TEXT = mutated(st.one_of(token_soup(), spliced_cases(), wrapped_cases(), st.sampled_from(SQL_LINES)))


@pytest.fixture(scope="module")
def env():
    config = load_config(CORPUS_DIR / "guardrails.yaml")
    return config, Policy(config), Analyzer(max_length=config.guardrails.max_statement_length)


def _check_analysis(analysis: Analysis, text: str) -> None:
    assert isinstance(analysis, Analysis)
    if analysis.error is not None:
        assert analysis.error_sqlstate in ERROR_SQLSTATES, (analysis.error_sqlstate, analysis.error)
        assert analysis.statements == ()
    else:
        assert isinstance(analysis.statements, tuple)
        for facts in analysis.statements:
            assert facts.command and facts.classification
            facts.describe()


def _facts(analysis: Analysis) -> object:
    return (analysis.error_sqlstate, [f.describe() for f in analysis.statements])


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(text=SQL_TEXT)
def test_random_sql_never_crashes_the_analyser(text, env):
    config, policy, shared = env
    fresh = analyze_uncached(text)
    _check_analysis(fresh, text)
    own = Analyzer().analyze(text)
    _check_analysis(own, text)
    assert _facts(own) == _facts(fresh)
    cached = shared.analyze(text)  # warm cache, shared with every earlier example
    _check_analysis(cached, text)
    assert _facts(cached) == _facts(fresh), "the analysis cache returned another text's facts"
    for role in ROLES:
        decision = check_statement(config, text, role=role, policy=policy, analyzer=shared).decision
        assert decision.action in ("allow", "deny", "review")
        if fresh.error is not None:
            assert decision.action == "deny"


@pytest.mark.parametrize("text", [
    "SELECT '\ud800'",  # a lone surrogate: what `pgwarden policy check` gets from argv bytes that are not UTF-8
    "SELECT 1 -- \udcff",
], ids=["surrogate-in-string", "surrogate-in-comment"])
def test_text_that_is_not_encodable_does_not_crash(text, env):
    config, policy, _ = env
    _check_analysis(analyze_uncached(text), text)
    _check_analysis(Analyzer().analyze(text), text)
    assert check_statement(config, text, role="agent", policy=policy).decision.action == "deny"


def test_analysing_one_text_does_not_change_the_analysis_of_another():
    """The analysis is a function of the text alone: no state leaks between statements, sessions or users."""
    probes = [
        "ALTER TABLE corpus_customers ADD COLUMN leak text GENERATED ALWAYS AS (ssn) STORED",
        "CREATE INDEX ON corpus_customers ((lower(ssn)))",
        "SELECT ssn",
    ] + SQL_LINES
    before = [_facts(analyze_uncached(p)) for p in probes]
    # statements that mention a table no earlier test could have seen
    unique = f"corpus_probe_{uuid.uuid4().hex[:8]}"
    for other in (f"GRANT SELECT ON {unique} TO PUBLIC", f"CREATE TABLE {unique}_2 (LIKE {unique})",
                  f"CREATE TABLE {unique}_3 (x int REFERENCES {unique})"):
        analyze_uncached(other)
    changed = [p for p, old in zip(probes, before) if _facts(analyze_uncached(p)) != old]
    assert not changed, f"{len(changed)} analyses changed after unrelated statements: {changed[:5]}"
