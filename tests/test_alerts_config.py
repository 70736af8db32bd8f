"""Alerts without a gateway: config errors, de-duplication, rate limits, failure counting, payloads,
and the engine's hooks fed with the gateway's own types (a fake clock, no I/O)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pgwarden.alerts.engine import AlertEngine, make_engine
from pgwarden.alerts.limits import Deduper, FailureCounter, RateLimiter
from pgwarden.alerts.model import Alert
from pgwarden.alerts.sinks import json_payload, slack_payload
from pgwarden.config import ConfigError, parse_config
from pgwarden.session.statement import AuthEvent, SessionInfo, Statement
from pgwarden.session.verdict import ALLOW, Deny
from pgwarden.store.sinks import record_header


def config(**alerts):
    from pgwarden.session.scram import make_verifier

    return parse_config({"targets": {"app": {"host": "h", "database": "d", "user": "u", "password": "p"}},
                         "users": [{"name": "alice", "scram_verifier": make_verifier("pw"), "targets": ["app"]}],
                         "roles": {"agent": {"targets": ["app"]}},
                         "alerts": alerts})


def test_exfiltration_thresholds_name_known_roles_only():
    assert config(exfiltration={"roles": {"agent": {"rows": 5}, "user:alice": {"rows": 5}}}).alerts.exfiltration.active
    for unknown in ("agnet", "user:bob"):
        with pytest.raises(ConfigError) as info:
            config(exfiltration={"roles": {unknown: {"rows": 5}}})
        assert "alerts.exfiltration.roles: unknown role(s) " + unknown in str(info.value)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def alert(kind="statement_blocked", key="k", session=None) -> Alert:
    return Alert(kind, "warning", "title", "text", key=key, session=session)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("alerts, message", [
    ({"sinks": [{"name": "x", "type": "webhook", "url": "ftp://example.com/"}]}, "http:// or https://"),
    ({"sinks": [{"name": "x", "type": "webhook", "url": "https:///nohost"}]}, "with a host"),
    ({"sinks": [{"name": "x", "type": "log", "kinds": ["statement_blokced"]}]}, "statement_blocked"),
    ({"sinks": [{"name": "x", "type": "log", "min_severity": "urgent"}]}, "critical"),
    ({"sinks": [{"name": "x", "type": "pager"}]}, "webhook"),
    ({"sinks": [{"name": "x", "type": "log"}, {"name": "x", "type": "log"}]}, "duplicate name"),
    ({"sinks": [{"name": "x", "type": "log", "rate_limit": {"max": 0}}]}, "greater than or equal to 1"),
    ({"auth_failures": {"threshold": -1}}, "greater than or equal to 1"),
    ({"auth_failures": {"window": "soon"}}, "not a duration"),
    ({"exfiltration": {"rows": -5}}, "greater than or equal to 1"),
    ({"exfiltration": {"roles": {"agent": {"bytes": "-1MB"}}}}, "not a size"),
    ({"severity": {"exfiltration": "loud"}}, "critical"),
    ({"dedupe_window": "-1s"}, "not a duration"),
    ({"sinks": [{"name": "x", "type": "syslog", "port": 70000}]}, "less than or equal to 65535"),
])
def test_config_errors_are_clear(alerts, message):
    with pytest.raises(ConfigError) as info:
        config(**alerts)
    assert "alerts" in str(info.value) and message in str(info.value)


def test_config_defaults_and_shapes():
    c = config().alerts
    assert c.enabled and c.dedupe_window == 60 and c.auth_failures.threshold == 5 and c.verify_every == 3600
    assert [s.type for s in c.effective_sinks] == ["log"] and not c.exfiltration.active
    c = config(dedupe_window=0, verify_every="off", severity={"rule_alert": "high"},
               exfiltration={"bytes": "1.5MiB", "roles": {"user:alice": {"rows": 10}}},
               sinks=[{"name": "slack", "type": "webhook", "url": "https://hooks.example/T/B/x", "format": "slack",
                       "min_severity": "warning", "kinds": ["statement_blocked"], "rate_limit": None,
                       "timeout": "2s"},
                      {"name": "siem", "type": "syslog", "address": "10.0.0.1", "protocol": "tcp",
                       "port": 6514}]).alerts
    assert c.dedupe_window == 0 and c.verify_every == 0 and c.severity_of("rule_alert") == "high"
    assert c.exfiltration.bytes == int(1.5 * 1024 * 1024) and c.exfiltration.active
    assert c.sinks[0].timeout == 2 and c.sinks[0].rate_limit is None and c.sinks[1].facility == 13


# ---------------------------------------------------------------- pure logic


def test_dedupe_sends_the_first_at_once_and_one_summary_with_the_count():
    clock = Clock()
    d = Deduper(60, clock)
    sent = [d.offer(alert(session=f"s{i % 3}")) for i in range(50)]
    assert sum(a is not None for a in sent) == 1 and d.due() == []
    assert d.offer(alert(key="other")) is not None  # another key is not a repeat
    clock.now += 60
    summaries = d.due()
    assert [(s.count, s.summary, sorted(s.sessions)) for s in summaries] == [(49, True, ["s0", "s1", "s2"])]
    # The loop goes on: the window re-opened quietly, so no new immediate alert.
    assert d.offer(alert()) is None
    clock.now += 60
    assert [s.count for s in d.due()] == [1]
    clock.now += 60
    assert d.due() == [] and d.offer(alert()) is not None  # quiet for a window: next one is new again
    assert d.flush() == []


def test_dedupe_memory_is_bounded():
    clock = Clock()
    d = Deduper(60, clock, max_keys=100)
    for i in range(1000):
        d.offer(alert(key=str(i)))
    assert len(d) <= 100


def test_rate_limit_collapses_a_burst_into_one_summary():
    clock = Clock()
    r = RateLimiter(3, 60, clock)
    allowed = [r.allow(alert(kind="statement_blocked" if i % 2 else "auth_failures")) for i in range(10)]
    assert allowed.count(True) == 6 and r.due() is None  # 3 of each kind: a budget per kind
    clock.now += 60
    held = r.due()
    assert held.count == 4 and held.kinds == {"statement_blocked": 2, "auth_failures": 2}
    assert r.due() is None and [r.allow(alert()) for _ in range(4)] == [True, True, True, False]


def test_failure_counter_window_and_bounds():
    clock = Clock()
    f = FailureCounter(3, 10, clock, max_keys=5)
    assert [f.add("a") for _ in range(5)] == [1, 2, 3, 3, 3]
    clock.now += 11
    assert f.add("a") == 1
    for i in range(50):
        f.add(str(i))
    assert len(f) <= 5


def test_payloads():
    a = Alert("exfiltration", "high", "Possible <exfiltration>", "read & more", user="alice", client="1.2.3.4:5",
              count=3, first_at=1_800_000_000.0, last_at=1_800_000_001.0)
    j = json_payload(a, "gw1")
    assert j["type"] == "pgwarden.alert" and j["kind"] == "exfiltration" and j["count"] == 3
    assert j["first_at"].startswith("20") and json.dumps(j)
    s = slack_payload(a, "gw1")["text"]
    assert "[HIGH]" in s and "&lt;exfiltration&gt;" in s and "read &amp; more" in s and "count: 3" in s


# ---------------------------------------------------------------- the engine's hooks


class Writer:
    refuse_on_failure = True

    def __init__(self) -> None:
        self.records = []

    def submit(self, record, urgent=False):
        body = b'{"v":1,"seq":1,' + record.tail
        self.records.append(json.loads(body))
        assert record_header(body)[1] == record.type
        return len(self.records)


def engine(**alerts):
    alerts.setdefault("sinks", [{"name": "log", "type": "log", "rate_limit": None}])
    clock = Clock()
    writer = Writer()
    return make_engine(config(**alerts), writer, "gw", clock=clock), writer, clock


def stmt(text: str, user="alice", extra=None) -> Statement:
    info = SessionInfo(id="sess1", user=user, target="app", client_addr="10.1.2.3:5555", extra=extra or {})
    return Statement("query", "simple", text, info, 1)


def test_engine_maps_hooks_to_kinds_and_records_each_alert(caplog):
    e, writer, clock = engine(dedupe_window=0, auth_failures={"threshold": 2, "window": "1m"},
                              exfiltration={"roles": {"user:alice": {"rows": 5}}})
    e.decided(stmt("SELECT ssn FROM people"), Deny("pgwarden: masked column", "42501", rule="masking.ssn"))
    e.decided(stmt("DROP TABLE x"), Deny("pgwarden: refused", "42501", rule="dangerous.drop"))
    e.decided(stmt("INSERT 1"), Deny("pgwarden: audit down", "58030", rule="audit.unavailable"))  # no alert
    e.decided(stmt("SELECT 1"), ALLOW)  # no alert
    refused = dict(session_id="s", outcome="refused", user="bob", client_addr="10.9.9.9:1", tls=None)
    e.authenticated(AuthEvent(**refused, reason="api key rejected (revoked)"))
    e.authenticated(AuthEvent(**refused, reason="authentication failed for user bob"))
    e.authenticated(AuthEvent(**refused, reason="client disconnected during authentication"))  # not counted
    s = stmt("SELECT * FROM big")
    e.session_started(s.session)
    s.tags.append("SELECT 6")
    e.completed(s)
    e.completed(s)  # once per session
    request = SimpleNamespace(id="r1", requester="dev", target="app", rule="review", statement="UPDATE t SET a=1",
                              session="sess2", mode="hold")
    e.approval_event(request, SimpleNamespace(kind="requested", fields={}))
    e.approval_event(request, SimpleNamespace(kind="deny", fields={"reviewer": "boss", "comment": "no"}))
    e.audit_failed("disk full")
    e.audit_recovered(2.5)
    kinds = [r["kind"] for r in writer.records if r["type"] == "alert"]
    assert kinds == ["masking_refused", "statement_blocked", "revoked_identity", "auth_failures", "exfiltration",
                     "approval_requested", "approval_denied", "audit_store_unavailable", "audit_store_recovered"]
    by_kind = {r["kind"]: r for r in writer.records}
    blocked = by_kind["statement_blocked"]
    assert blocked["rule"] == "dangerous.drop" and blocked["session"] == "sess1"
    assert by_kind["auth_failures"]["severity"] == "high" and by_kind["auth_failures"]["count"] == 1
    assert by_kind["audit_store_unavailable"]["severity"] == "critical"
    assert by_kind["exfiltration"]["details"]["read"] == 6 and by_kind["approval_denied"]["sinks"] == ["log"]
    assert e.stats()["raised"]["statement_blocked/warning"] == 1
    assert e.stats()["sinks"]["log"]["delivered"] == len(kinds)


def test_without_thresholds_the_completion_hook_only_looks_at_refusals():
    """The plain engine hooks ``completed`` (tests/test_alerts_attacks.py: the relay refuses some
    statements without the pipeline's ``decided``, e.g. a FunctionCall); for a statement that
    was not refused it is one class check: no alert, no per-session state."""
    from pgwarden.observe import overridden

    plain, writer, _ = engine()
    assert type(plain) is AlertEngine and not overridden(plain, "session_started")
    assert overridden(plain, "decided") and overridden(plain, "authenticated")
    allowed = stmt("SELECT 1")
    allowed.verdict = ALLOW
    allowed.tags.append("SELECT 1")
    plain.completed(allowed)
    assert writer.records == [] and allowed.session.extra == {}
    watching, _, _ = engine(exfiltration={"bytes": "1MB"})
    assert overridden(watching, "completed") and overridden(watching, "session_started")


def test_engine_filters_and_rate_limits_per_sink():
    e, writer, clock = engine(dedupe_window=0, sinks=[
        {"name": "all", "type": "log", "rate_limit": {"max": 2, "per": "10s"}},
        {"name": "high", "type": "log", "min_severity": "high", "rate_limit": None},
        {"name": "no-blocks", "type": "log", "exclude_kinds": ["statement_blocked"], "rate_limit": None},
    ])
    for rule in ("r1", "r2", "r3", "r4"):
        e.decided(stmt("DROP TABLE x"), Deny("refused", "42501", rule=rule))
    e.audit_failed("x")
    clock.now += 10
    e._limits()
    sinks = e.stats()["sinks"]
    # Two warnings, the critical alert at once (never held by a rate limit: see
    # tests/test_alerts_attacks.py), then the summary of the two warnings held back.
    assert sinks["all"]["delivered"] == 4
    assert sinks["high"]["delivered"] == 1 and sinks["no-blocks"]["delivered"] == 1
    critical = [r for r in writer.records if r["kind"] == "audit_store_unavailable"]
    assert len(critical) == 1 and "all" in critical[0]["sinks"]
    summary = [r for r in writer.records if r["kind"] == "alerts_suppressed"]
    assert len(summary) == 1 and summary[0]["count"] == 2 and summary[0]["severity"] == "warning"
    assert summary[0]["details"]["kinds"] == {"statement_blocked": 2}


def test_a_flagged_statement_refused_afterwards_still_raises_its_rule_alert():
    from pgwarden.policy.rules import Decision

    e, writer, _ = engine(dedupe_window=0)
    flagged = stmt("SELECT salary FROM pay")
    flagged.decision = Decision("allow", None, alerts=("watch-pay",))
    e.decided(flagged, Deny("pgwarden: the audit trail is unavailable", "58030", rule="audit.unavailable"))
    self_refused = stmt("DROP TABLE pay")
    self_refused.decision = Decision("deny", "no-drop", alerts=("no-drop", "watch-pay"))
    e.decided(self_refused, Deny("pgwarden: refused", "42501", rule="no-drop"))
    got = [(r["kind"], r["rule"]) for r in writer.records if r["type"] == "alert"]
    # The trail being down raises its own alert, not statement_blocked; the watch rule still fires.
    # A rule that refuses is statement_blocked only; the other rule's flag is its own rule_alert.
    assert got == [("rule_alert", "watch-pay"), ("statement_blocked", "no-drop"), ("rule_alert", "watch-pay")]
