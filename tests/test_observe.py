"""Observers (pgwarden/observe.py): the pipeline and the fan-out call only what an observer implements,
and a failing observer never changes a verdict."""

from __future__ import annotations

import logging

from pgwarden.observe import Observer, Observers, overridden
from pgwarden.policy.pipeline import Pipeline
from pgwarden.session.statement import SessionInfo, Statement
from pgwarden.session.verdict import Allow, Deny
from pgwarden.testing.stages import DenyMarkerStage


class Counting(Observer):
    def __init__(self) -> None:
        self.decided_verdicts: list[str] = []
        self.completed_n = 0

    def decided(self, stmt, verdict) -> None:
        self.decided_verdicts.append(type(verdict).__name__)

    def completed(self, stmt) -> None:
        self.completed_n += 1


class Broken(Observer):
    def decided(self, stmt, verdict) -> None:
        raise RuntimeError("observer bug")

    def audit_failed(self, error: str) -> None:
        raise RuntimeError("observer bug")


def _statement(text: str) -> Statement:
    info = SessionInfo(id="s1", user="u", target="t", client_addr="127.0.0.1:1")
    return Statement.query(text, info) if hasattr(Statement, "query") else _plain(text, info)


def _plain(text: str, info: SessionInfo) -> Statement:
    stmt = Statement.__new__(Statement)
    for name in Statement.__slots__:
        try:
            setattr(stmt, name, None)
        except AttributeError:
            pass
    stmt.kind, stmt.protocol, stmt.text, stmt.session = "query", "simple", text, info
    return stmt


def test_overridden_sees_only_real_hooks() -> None:
    assert overridden(Counting(), "decided")
    assert overridden(Counting(), "completed")
    assert not overridden(Counting(), "authenticated")
    assert not overridden(object(), "decided")


def test_pipeline_tells_observers_the_final_verdict_and_survives_a_broken_one(caplog) -> None:
    watcher = Counting()
    pipeline = Pipeline([DenyMarkerStage()], None, [Broken(), watcher])
    with caplog.at_level(logging.ERROR):
        allowed = pipeline.evaluate(_statement("SELECT 1"))
        denied = pipeline.evaluate(_statement("SELECT 1 /*deny*/"))
    assert isinstance(allowed, Allow) and isinstance(denied, Deny)
    assert watcher.decided_verdicts == ["Allow", "Deny"]
    assert "decided hook failed" in caplog.text
    assert pipeline.wants_completion  # the watcher implements completed


def test_pipeline_without_observers_keeps_the_plain_evaluate() -> None:
    pipeline = Pipeline([DenyMarkerStage()], None, [Observer()])
    assert pipeline.evaluate.__func__ is Pipeline.evaluate
    assert not pipeline.wants_completion


def test_fan_out_calls_implementers_only_and_guards_each(caplog) -> None:
    watcher = Counting()
    fan = Observers([Broken(), watcher, Observer()])
    assert fan.wants("decided") and fan.wants("audit_failed") and not fan.wants("authenticated")
    with caplog.at_level(logging.ERROR):
        fan.decided(None, Allow())
        fan.audit_failed("disk full")
        fan.authenticated(None)
    assert watcher.decided_verdicts == ["Allow"]
    assert caplog.text.count("observer Broken failed") == 2
