"""Guardrails on the wire: refusals are proper errors, the session and transaction stay true.

A static SCRAM user (no role) gets the top-level packs (``dangerous``) and a
deny rule on one table; the assertions are what a client sees through
psycopg and what is (not) in the database afterwards.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from pgwarden.testing.gateway import RunningGateway, gateway_config

from conftest import GW_PASSWORD, GW_USER


@pytest.fixture(scope="module")
def guarded(pg, gw_users):
    pg.psql(
        "drop schema if exists gr cascade; create schema gr authorization app;"
        "drop table if exists public.gr_secret; "
        "create table public.gr_secret (id int, code text); insert into public.gr_secret values (1, 'x');"
        "alter table public.gr_secret owner to app;"
        "create table gr.gr_secret (id int); alter table gr.gr_secret owner to app;"
        "create table gr.items (id int primary key, name text); insert into gr.items values (1, 'a'), (2, 'b');"
        "alter table gr.items owner to app;",
        database="appdb",
    )
    config = gateway_config(
        pg,
        users=gw_users,
        guardrails={
            "packs": ["dangerous"],
            "rules": [
                {"name": "no-secret", "match": {"tables": "public.gr_secret"}, "action": "deny",
                 "message": "the secret table is off limits", "hint": "Ask the data owner."},
                {"name": "review-items-updates", "match": {"tables": "gr.items", "command": "UPDATE"},
                 "action": "review"},
            ],
        },
    )
    with RunningGateway(config) as gw:
        yield gw


def connect(gw, **kw):
    return psycopg.connect(
        host="127.0.0.1", port=gw.port, user=GW_USER, password=GW_PASSWORD, dbname="app", sslmode="disable", **kw
    )


def count_items(pg) -> int:
    return int(pg.psql("select count(*) from gr.items", database="appdb").strip())


def test_refusal_names_the_rule_and_keeps_the_session(guarded, pg):
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("DELETE FROM gr.items")
        diag = info.value.diag
        assert diag.message_primary.startswith("pgwarden:") and "dangerous.no_where" in diag.message_primary
        assert conn.execute("SELECT count(*) FROM gr.items").fetchone() == (2,)
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("SELECT * FROM public.gr_secret")
        assert "no-secret" in info.value.diag.message_primary
        assert info.value.diag.message_hint == "Ask the data owner."
    assert count_items(pg) == 2


def test_nothing_of_a_multi_statement_query_runs_when_a_part_is_refused(guarded, pg):
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("INSERT INTO gr.items VALUES (3, 'c'); COMMIT; DROP TABLE gr.items")
        assert "statement 3 of 3" in info.value.diag.message_primary
        assert "dangerous.drop" in info.value.diag.message_primary
    assert count_items(pg) == 2


def test_a_refusal_inside_a_transaction_aborts_it_like_postgres_would(guarded):
    with connect(guarded) as conn:  # psycopg opens a transaction block
        conn.execute("INSERT INTO gr.items VALUES (10, 'tx')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("TRUNCATE gr.items")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM gr.items WHERE id = 10").fetchone() == (0,)


def test_extended_protocol_parse_is_checked_and_prepared_statements_keep_working(guarded):
    with connect(guarded, autocommit=True, prepare_threshold=0) as conn:
        for i in range(3):  # server-side prepared after the first run
            assert conn.execute("SELECT name FROM gr.items WHERE id = %s", (1,)).fetchone() == ("a",)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT code FROM public.gr_secret WHERE id = %s", (1,))
        assert conn.execute("SELECT name FROM gr.items WHERE id = %s", (2,)).fetchone() == ("b",)


def test_sql_prepare_and_execute_are_tracked(guarded, pg):
    with connect(guarded, autocommit=True) as conn:
        conn.execute("PREPARE item_name(int) AS SELECT name FROM gr.items WHERE id = $1")
        assert conn.execute("EXECUTE item_name(1)").fetchone() == ("a",)
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("PREPARE wipe AS DELETE FROM gr.items")
        assert "dangerous.no_where" in info.value.diag.message_primary
        # A name pgwarden never saw prepared cannot be executed.
        with pytest.raises(errors.InvalidSqlStatementName) as info:
            conn.execute("EXECUTE wipe")
        assert "unknown to pgwarden" in info.value.diag.message_primary
        conn.execute("DEALLOCATE item_name")
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("EXECUTE item_name(1)")
    assert count_items(pg) == 2


def test_review_is_refused_until_approvals_exist(guarded):
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as info:
            conn.execute("UPDATE gr.items SET name = 'z' WHERE id = 1")
        message = info.value.diag.message_primary
        assert "review-items-updates" in message and "approvals are not configured" in message


def test_search_path_tricks_do_not_hide_a_table(guarded):
    with connect(guarded, autocommit=True) as conn:
        # gr.gr_secret exists, so the path change is real; the unqualified name
        # may still resolve to public.gr_secret, so it is refused.
        conn.execute("SET search_path = gr, public")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM gr_secret")
        conn.execute("RESET search_path")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM gr_secret")
        # A failed SET (in an aborted transaction) does not fool pgwarden either.
        conn.execute("BEGIN")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("SET search_path = gr")
        conn.execute("ROLLBACK")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM gr_secret")


def test_syntax_errors_are_refused_with_the_parser_message(guarded):
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.SyntaxError) as info:
            conn.execute("SELEC * FROM gr.items")
        assert 'syntax error at or near "SELEC"' in info.value.diag.message_primary
        assert "guardrails.syntax" in info.value.diag.message_primary
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_analysis_failure_refuses_the_statement(guarded, monkeypatch):
    stage = next(s for s in guarded.gateway.pipeline.stages if s.name == "guardrails")

    def broken(text):
        raise RuntimeError("analyser bug")

    monkeypatch.setattr(stage.analyzer, "analyze", broken)
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InternalError_) as info:
            conn.execute("SELECT 42")
        assert "statement refused" in info.value.diag.message_primary
        monkeypatch.undo()
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_decisions_are_attached_for_the_recorder(pg, gw_users):
    from pgwarden.config import parse_config  # noqa: F401
    from pgwarden.policy.stages.guardrails import GuardrailsStage
    from pgwarden.testing.stages import RecordingStage

    config = gateway_config(pg, users=gw_users)
    record = RecordingStage()
    with RunningGateway(config, [GuardrailsStage(config), record]) as gw:
        with connect(gw, autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM gr.items")
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("DROP TABLE gr.items")
    done = {s.text: s for s in record.completed_statements}
    allowed = done["SELECT count(*) FROM gr.items"].decision
    assert allowed.action == "allow" and allowed.facts[0].classification == "read"
    assert {str(t) for t in allowed.facts[0].tables} == {"gr.items"}
    refused = done["DROP TABLE gr.items"].decision
    assert refused.action == "deny" and refused.rule == "dangerous.drop"


def test_every_decision_is_logged_with_rule_and_classification(guarded, caplog):
    import logging
    import time

    caplog.set_level(logging.INFO, logger="pgwarden.statement")
    with connect(guarded, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE gr.items")
        conn.execute("SELECT name FROM gr.items WHERE id = 1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = {getattr(r, "rule", None): r for r in caplog.records if r.name == "pgwarden.statement"}
        if "dangerous.drop" in records and "default" in records:
            break
        time.sleep(0.05)
    refused = records["dangerous.drop"]
    assert refused.levelno == logging.WARNING and refused.classification == "ddl" and refused.decision == "deny"
    assert refused.tables == ["gr.items"]
    allowed = records["default"]
    assert allowed.decision == "allow" and allowed.classification == "read"


def test_huge_and_deep_statements_are_refused_or_analysed_without_stalling_others(guarded, caplog):
    """A large statement is analysed off the event loop (a hold of its own session only);
    too long and too deep ones are refused with the fitting SQLSTATE."""
    import logging
    import time

    caplog.set_level(logging.INFO)
    big = "SELECT 1 FROM gr.items WHERE name IN (" + ", ".join(f"'n{i}'" for i in range(20_000)) + ")"
    assert 100_000 < len(big) < 1024 * 1024
    with connect(guarded, autocommit=True) as conn, connect(guarded, autocommit=True) as other:
        assert conn.execute(big).fetchall() == []  # allowed, and it runs
        assert other.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(errors.ProgramLimitExceeded) as info:
            conn.execute("SELECT " + "1+" * 600_000 + "1")  # over max_statement_length
        assert "guardrails.too_long" in info.value.diag.message_primary
        with pytest.raises((errors.StatementTooComplex, errors.SyntaxError)) as info:
            conn.execute("SELECT " + "(" * 50_000 + "1" + ")" * 50_000)
        assert info.value.diag.message_primary.startswith("pgwarden:")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(
        "analysing a large statement" in r.getMessage() for r in caplog.records
    ):
        time.sleep(0.05)
    assert any("analysing a large statement" in r.getMessage() for r in caplog.records)
