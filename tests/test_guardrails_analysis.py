"""The SQL analyser and the rule language, without a database.

What a policy author relies on: that writes and function calls are found
wherever they hide, that the cache never lets one statement stand in for
another, and that allow rules are strict while deny rules are broad.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pgwarden.config import parse_config
from pgwarden.policy.analysis import Analyzer, analyze_uncached
from pgwarden.services.policy import check_statement


def facts(sql: str):
    analysis = analyze_uncached(sql)
    assert analysis.error is None, analysis.error
    return analysis.statements


def test_writes_hiding_in_reads_are_found():
    (cte,) = facts("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d")
    assert cte.classification == "write" and "DELETE" in cte.commands
    assert str(next(iter(cte.written))) == "orders" and cte.has_where is False
    (explain,) = facts("EXPLAIN (ANALYZE, BUFFERS) UPDATE orders SET total = 0")
    assert explain.classification == "write" and explain.command == "EXPLAIN ANALYZE"
    (plain_explain,) = facts("EXPLAIN UPDATE orders SET total = 0")
    assert plain_explain.classification == "read"  # not executed
    (into,) = facts("SELECT * INTO copy_of_orders FROM orders")
    assert into.classification == "ddl" and "select_into" in into.flags
    (locking,) = facts("SELECT * FROM orders FOR UPDATE SKIP LOCKED")
    assert locking.classification == "write" and "row_lock" in locking.flags
    (prepare,) = facts("PREPARE p(int) AS DELETE FROM orders WHERE id = $1")
    assert prepare.classification == "write" and prepare.inner_command == "DELETE"
    (seq,) = facts("SELECT nextval('order_ids')")
    assert seq.classification == "write" and "sequence" in seq.flags


def test_functions_are_found_everywhere():
    sql = (
        "SELECT (SELECT pg_ls_dir('.') LIMIT 1) FROM pg_read_file('/etc/passwd') f, "
        "LATERAL (SELECT lo_import('/x')) l WHERE pg_stat_file('/') IS NOT NULL "
        "ORDER BY pg_catalog.pg_read_binary_file('/y')"
    )
    (stmt,) = facts(sql)
    names = {f.name for f in stmt.functions}
    assert {"pg_ls_dir", "pg_read_file", "lo_import", "pg_stat_file", "pg_read_binary_file"} <= names


def test_cte_names_follow_postgres_scoping():
    # A non-recursive CTE does not see itself: the inner "customers" is the real table.
    (stmt,) = facts("WITH customers AS (SELECT * FROM customers) SELECT * FROM customers")
    assert {str(t) for t in stmt.tables} == {"customers"}
    # A CTE visible in one subquery does not hide the real table elsewhere.
    (stmt,) = facts("SELECT * FROM (WITH secrets AS (SELECT 1) SELECT * FROM secrets) a, secrets")
    assert {str(t) for t in stmt.tables} == {"secrets"}
    (stmt,) = facts("WITH s AS (SELECT 1) SELECT * FROM s")
    assert not stmt.tables


def test_columns_are_tied_to_their_tables_through_aliases():
    (stmt,) = facts("SELECT c.email AS e, ssn(c) FROM public.customers c")
    cols = {str(c) for c in stmt.columns}
    assert {"public.customers.email", "public.customers.ssn"} <= cols


def test_the_cache_reuses_a_shape_only_when_no_literal_matters():
    analyzer = Analyzer()
    first = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    second = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 2")
    assert first is second  # same shape, one analysis
    assert analyzer.misses == 1
    # set_config's first argument decides; its shape must never be reused.
    harmless = analyzer.analyze("SELECT set_config('application_name', 'x', false)")
    dangerous = analyzer.analyze("SELECT set_config('role', 'x', false)")
    assert harmless.statements[0].settings == {"application_name"}
    assert dangerous.statements[0].settings == {"role"}
    param = analyzer.analyze("SELECT set_config($1, 'off', false)")
    assert param.statements[0].settings == {"?"}
    assert analyzer.analyze("SELECT set_config('work_mem', 'off', false)").statements[0].settings == {"work_mem"}


def test_bad_input_is_an_error_not_an_exception():
    bad = Analyzer().analyze("SELEC 1")
    assert bad.error_sqlstate == "42601" and 'syntax error at or near "SELEC"' in bad.error
    deep = Analyzer().analyze("SELECT " + "(" * 20000 + "1" + ")" * 20000)
    assert deep.error is not None and deep.error_sqlstate in ("54001", "42601")
    long = Analyzer(max_length=2048).analyze("SELECT " + "1+" * 5000 + "1")
    assert long.error_sqlstate == "54000"


CONFIG = {
    "targets": {"app": {"host": "127.0.0.1", "database": "appdb", "user": "app", "password": "x"}},
    "roles": {
        "agent": {"targets": ["app"], "access": "read"},
        "developer": {"targets": ["app"], "access": "write"},
        "dba": {"targets": ["app"], "access": "admin", "guardrails": {"packs": [], "default": "allow"}},
        "analyst": {"targets": ["app"], "access": "read", "guardrails": {"default": "deny"}},
    },
    "guardrails": {
        "rules": [
            {"name": "no-ssn", "match": {"columns": "public.customers.ssn", "roles": ["developer"]}, "action": "deny",
             "message": "SSNs stay in the database"},
            {"name": "review-deletes", "match": {"command": "DELETE", "roles": ["developer"]}, "action": "review"},
            {"name": "analysts-read-reporting", "match": {"tables": "reporting.*", "roles": ["analyst"]},
             "action": "allow"},
            {"name": "watch-payments", "match": {"tables": "payments"}, "action": "alert"},
            {"name": "office-hours-ddl",
             "match": {"classification": "ddl", "roles": ["dba"],
                       "time": {"days": "sat-sun", "timezone": "UTC"}},
             "action": "deny", "message": "no schema changes at the weekend"},
        ]
    },
}


@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG)


def decide(config, sql, role, **kw):
    return check_statement(config, sql, role=role, **kw).decision


def test_packs_follow_access_and_roles_can_switch_them_off(config):
    assert decide(config, "DROP TABLE orders", "developer").rule == "dangerous.drop"
    assert decide(config, "DROP TABLE orders", "dba").action == "allow"
    assert decide(config, "INSERT INTO orders VALUES (1)", "agent").rule == "read-only.write"
    assert decide(config, "INSERT INTO orders VALUES (1)", "developer").action == "allow"
    # Transaction control and session settings are never in the way, even with default: deny.
    for role in ("agent", "developer", "dba", "analyst"):
        assert decide(config, "BEGIN; SAVEPOINT a; ROLLBACK TO a; COMMIT", role).action == "allow"
        assert decide(config, "SET application_name = 'x'; SHOW work_mem", role).action == "allow"
    assert decide(config, "SELECT 1", "analyst").action == "deny"


def test_deny_rules_are_broad_and_allow_rules_strict(config):
    # SELECT * reads the ssn column too.
    assert decide(config, "SELECT * FROM customers", "developer").rule == "no-ssn"
    assert decide(config, "SELECT id FROM customers", "developer").action == "allow"
    # A join with a table outside reporting.* is not covered by the allow rule.
    assert decide(config, "SELECT * FROM reporting.daily", "analyst").action == "allow"
    joined = decide(config, "SELECT * FROM reporting.daily d JOIN public.customers c ON true", "analyst")
    assert joined.action == "deny" and joined.rule is None  # the role's default
    # Unqualified: with the default search_path the table could be public.daily, not reporting.daily.
    assert decide(config, "SELECT * FROM daily", "analyst").action == "deny"
    assert decide(config, "SELECT * FROM daily", "analyst", search_path="reporting").action == "allow"


def test_review_and_alert_and_time_windows(config):
    review = decide(config, "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM d", "developer")
    assert review.action == "review" and review.rule == "review-deletes"
    alerted = decide(config, "SELECT amount FROM payments", "developer")
    assert alerted.action == "allow" and alerted.alerts == ("watch-payments",)
    saturday = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    monday = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    assert decide(config, "CREATE TABLE t (a int)", "dba", at=saturday).rule == "office-hours-ddl"
    assert decide(config, "CREATE TABLE t (a int)", "dba", at=monday).action == "allow"


def test_multi_statement_gets_the_most_severe_verdict(config):
    decision = decide(config, "SELECT 1; DELETE FROM orders WHERE id = 1; DROP TABLE orders", "developer")
    assert decision.action == "deny" and decision.rule == "dangerous.drop" and decision.statement == 2


def test_read_only_pack_vets_functions_and_watches_the_search_path(config):
    assert decide(config, "SELECT lower(name), now(), count(*) FROM customers GROUP BY 1", "agent").action == "allow"
    assert decide(config, "SELECT public.lower(name) FROM customers", "agent").rule == "read-only.functions"
    assert decide(config, "SELECT my_func()", "agent").rule == "read-only.functions"
    # With pg_catalog placed after public, an unqualified name may resolve to a user function.
    placed = decide(config, "SELECT lower('x')", "agent", search_path="public, pg_catalog")
    assert placed.rule == "read-only.functions"
    # set_config of a named, harmless setting is a SET (asyncpg turns jit off that way); a computed
    # name or a security setting is not.
    assert decide(config, "SELECT set_config('work_mem', '1MB', false)", "agent").action == "allow"
    assert decide(config, "SELECT set_config('jit', 'off', false)", "agent").action == "allow"
    assert decide(config, "SELECT set_config($1, '1MB', false)", "agent").action == "deny"
    assert decide(config, "SELECT set_config('transaction_read_only', 'off', false)", "agent").action == "deny"


@pytest.mark.parametrize(
    "first, second",
    [
        ("SELECT * FROM t1", "SELECT * FROM t2"),  # digits in identifiers
        ("SELECT * FROM é1", "SELECT * FROM é2"),  # after a non-ASCII identifier character
        ("SELECT * FROM €1", "SELECT * FROM €2"),
        ('SELECT * FROM "1"', 'SELECT * FROM "2"'),  # quoted identifiers
        ("SELECT $1::int FROM a", "SELECT $2::int FROM a"),  # parameters
        ("FETCH 5 FROM c", "FETCH 12345678901 FROM c"),  # integer vs numeric
        ("SELECT set_config('a1', 'x', false)", "SELECT set_config('a2', 'x', false)"),
    ],
)
def test_masked_numbers_never_stand_for_different_objects(first, second):
    analyzer = Analyzer()
    a, b = analyzer.analyze(first), analyzer.analyze(second)
    assert a is not b
    assert b.statements == analyze_uncached(second).statements or b.error == analyze_uncached(second).error


def test_masked_numbers_share_one_analysis_for_inlined_literals():
    analyzer = Analyzer()
    first = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 1 AND x > 2.5 LIMIT 10")
    misses = analyzer.misses
    again = analyzer.analyze("SELECT abalance FROM pgbench_accounts WHERE aid = 987 AND x > 0.25 LIMIT 3")
    assert again is first and analyzer.misses == misses


def test_where_clauses_that_never_look_at_the_row_count_as_none():
    import json

    from pglast.parser import parse_sql_json

    from pgwarden.policy.analysis.where import filters_rows

    def where(sql: str):
        stmt = json.loads(parse_sql_json(sql))["stmts"][0]["stmt"]
        return next(iter(stmt.values())).get("whereClause")

    for sql in ("DELETE FROM t", "DELETE FROM t WHERE true", "DELETE FROM t WHERE 0 = 0 OR true",
                "DELETE FROM t WHERE id = id", "DELETE FROM t WHERE t.id >= t.id", "DELETE FROM t WHERE $1",
                "DELETE FROM t WHERE NOT (1 = 2)", "DELETE FROM t WHERE id = 5 OR now() > '2000-01-01'"):
        assert not filters_rows(where(sql)), sql
    for sql in ("DELETE FROM t WHERE id = $1", "DELETE FROM t WHERE CURRENT OF c", "DELETE FROM t WHERE id = 1 AND true",
                "DELETE FROM t WHERE id = 1 OR id = 2", "DELETE FROM t WHERE id = other_id",
                "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.uid)", "DELETE FROM t WHERE id IS NULL"):
        assert filters_rows(where(sql)), sql
