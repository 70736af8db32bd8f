"""The guardrails corpus: expected verdicts per role, decided and then proven end to end.

``tests/corpus/guardrails.txt`` holds one case per line (``AGENT DEVELOPER DBA
| SQL``, format described at the top of that file) for the roles of
``tests/corpus/guardrails.yaml``. Two tests use it:

* ``test_decision`` (one per line, no database): ``check_statement`` for each
  role gives the expected action, and the expected rule where the line names
  one.
* ``test_end_to_end[ROLE]``: a real gateway in front of the test PostgreSQL
  (database ``corpus``, owned by the target login ``app``), one dev-issuer
  token and one psycopg connection per role. Every case expected deny/review
  for that role is sent; each must fail with pgwarden's SQLSTATE, a message
  starting with ``pgwarden:`` and the rule named, and the session must stay
  usable. A snapshot of everything those statements could change (table
  contents, sequence, catalogs of relations/columns/functions/roles/schemas/
  extensions/languages/foreign servers/large objects/prepared transactions,
  ``postgresql.auto.conf``) is taken before and after and must be identical;
  the same snapshot after every case names the case that changed something.
  For the ``agent`` (a read role, whose upstream session is read-only) the
  cases it is allowed are run first, inside the same snapshot: they must not
  be refused by pgwarden (PostgreSQL may still reject some, e.g. ``SAVEPOINT``
  outside a transaction). Allowed cases of the other roles are not run: they
  are writes and DDL that would change the state.

Failures are collected per role and reported together, so one run lists every
case that does not hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import pq

from pgwarden.config import load_config, parse_config
from pgwarden.identity.login import dev_issuer_for
from pgwarden.policy.analysis import Analyzer
from pgwarden.policy.rules import Policy
from pgwarden.services.policy import check_statement
from pgwarden.testing.gateway import RunningGateway

CORPUS_DIR = Path(__file__).parent / "corpus"
CORPUS_FILE = CORPUS_DIR / "guardrails.txt"
CONFIG_FILE = CORPUS_DIR / "guardrails.yaml"
ROLES = ("agent", "developer", "dba")
ACTIONS = ("allow", "deny", "review")
PLACEHOLDERS = {"{NL}": "\n", "{CR}": "\r", "{TAB}": "\t", "{FF}": "\f", "{NBSP}": "\u00a0"}

CORPUS_DB = "corpus"
TARGET = "corpus"
# SQLSTATEs pgwarden answers refusals with (pgwarden/policy/stages/guardrails.py).
SQLSTATE_RULE = "42501"
SQLSTATE_SYNTAX = "42601"
SYNTAX_RULES = {"guardrails.syntax", "identity.unparseable"}
# The identity guard runs before the guardrails for token sessions and refuses
# role changes, read-write switches and DO/CALL in read sessions, and what the
# parser rejects, under its own rule names. Which of the two stages answers does
# not matter here; that the statement is refused, and by pgwarden, does.
IDENTITY_RULES = {"identity.role_fixed", "identity.read_only", "identity.unparseable"}


# ----------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Expectation:
    action: str
    rule: str | None

    def __str__(self) -> str:
        return self.action + (f":{self.rule}" if self.rule else "")


@dataclass(frozen=True)
class Case:
    line: int
    sql: str
    expect: dict[str, Expectation]

    @property
    def short(self) -> str:
        text = " ".join(self.sql.split())
        return text if len(text) <= 60 else text[:57] + "..."


def parse_corpus(text: str) -> list[Case]:
    """Parse the corpus format; a malformed line raises ValueError naming its number."""
    cases = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        head, sep, sql = line.partition(" | ")
        if not sep or not sql.strip():
            raise ValueError(f"{CORPUS_FILE.name}:{number}: expected 'AGENT DEVELOPER DBA | SQL': {raw!r}")
        words = head.split()
        if len(words) != len(ROLES):
            raise ValueError(f"{CORPUS_FILE.name}:{number}: {len(words)} expectations, need {len(ROLES)}")
        expect = {}
        for role, word in zip(ROLES, words):
            action, _, rule = word.partition(":")
            if action not in ACTIONS or (word.endswith(":")):
                raise ValueError(f"{CORPUS_FILE.name}:{number}: bad expectation {word!r} for {role}")
            expect[role] = Expectation(action, rule or None)
        for key, value in PLACEHOLDERS.items():
            sql = sql.replace(key, value)
        cases.append(Case(number, sql, expect))
    return cases


CASES = parse_corpus(CORPUS_FILE.read_text(encoding="utf-8"))


def _case_id(case: Case) -> str:
    words = re.sub(r"[^A-Za-z0-9_]+", "_", case.short).strip("_")[:40]
    return f"L{case.line}-{words}"


@pytest.fixture(scope="module")
def corpus_config():
    return load_config(CONFIG_FILE)


@pytest.fixture(scope="module")
def corpus_policy(corpus_config):
    return Policy(corpus_config), Analyzer(max_length=corpus_config.guardrails.max_statement_length)


def test_corpus_is_well_formed(corpus_config):
    assert len(CASES) >= 120
    assert set(corpus_config.roles) == set(ROLES)
    sqls = [c.sql for c in CASES]
    duplicates = sorted({s for s in sqls if sqls.count(s) > 1})
    assert not duplicates, f"duplicate cases: {duplicates}"
    with pytest.raises(ValueError, match=":2:"):
        parse_corpus("# comment\nallow allow | SELECT 1\n")
    with pytest.raises(ValueError, match="bad expectation"):
        parse_corpus("allow permit allow | SELECT 1\n")
    # every family the issue lists has at least a few cases
    families = [line for line in CORPUS_FILE.read_text().splitlines() if line.startswith("# ----")]
    assert len(families) >= 15


# ----------------------------------------------------------------- 1. decisions


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decision(case: Case, corpus_config, corpus_policy):
    policy, analyzer = corpus_policy
    wrong = []
    for role in ROLES:
        expected = case.expect[role]
        decision = check_statement(corpus_config, case.sql, role=role, policy=policy, analyzer=analyzer).decision
        got = Expectation(decision.action, decision.rule)
        if got.action != expected.action or (expected.rule and got.rule != expected.rule):
            wrong.append(f"{role}: expected {expected}, got {got} ({decision.message})")
    assert not wrong, f"line {case.line}: {case.short}\n  " + "\n  ".join(wrong)


# ----------------------------------------------------------------- 2. end to end


FIXTURE_SQL = """
CREATE TABLE corpus_customers (
    id int PRIMARY KEY, name text NOT NULL, email text NOT NULL, ssn text NOT NULL);
CREATE TABLE corpus_orders (
    id int PRIMARY KEY, customer_id int NOT NULL REFERENCES corpus_customers,
    amount numeric NOT NULL, status text NOT NULL DEFAULT 'new',
    created timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00');
INSERT INTO corpus_customers VALUES
    (1, 'Ada Lovelace', 'ada@example.com', '111-11-1111'),
    (2, 'Alan Turing', 'alan@example.com', '222-22-2222'),
    (3, 'Grace Hopper', 'grace@example.com', '333-33-3333');
INSERT INTO corpus_orders (id, customer_id, amount, status) VALUES
    (1, 1, 12.50, 'paid'), (2, 1, 7, 'new'), (3, 2, 99.90, 'paid'), (4, 3, 15, 'shipped');
CREATE SEQUENCE corpus_seq START 42;
SELECT nextval('corpus_seq');
CREATE FUNCTION corpus_helper() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE corpus_proc() LANGUAGE sql AS 'SELECT 1';
"""
CORPUS_TABLES = ("corpus_customers", "corpus_orders")
CORPUS_SEQUENCES = ("corpus_seq",)

_NOT_SYSTEM = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
# key -> query whose rows (as text) describe that part of the state. One round
# trip: every part is a scalar subquery.
_CATALOG_PARTS = {
    "relations": f"""SELECT string_agg(concat_ws(' ', n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner),
                         c.relacl::text, c.relrowsecurity, c.relpersistence), E'\\n' ORDER BY n.nspname, c.relname)
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_NOT_SYSTEM}""",
    "columns": f"""SELECT string_agg(concat_ws(' ', n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                       a.attnotnull, pg_get_expr(d.adbin, d.adrelid)), E'\\n'
                       ORDER BY n.nspname, c.relname, a.attnum)
                   FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                   WHERE a.attnum > 0 AND NOT a.attisdropped AND {_NOT_SYSTEM}""",
    "functions": f"""SELECT string_agg(concat_ws(' ', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
                         p.prokind, l.lanname, md5(coalesce(p.prosrc, '')), p.prosecdef, pg_get_userbyid(p.proowner),
                         p.proacl::text), E'\\n' ORDER BY 1)
                     FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                     JOIN pg_language l ON l.oid = p.prolang WHERE {_NOT_SYSTEM}""",
    "operators": f"""SELECT string_agg(n.nspname || '.' || o.oprname, E'\\n' ORDER BY 1)
                     FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace WHERE {_NOT_SYSTEM}""",
    "triggers": "SELECT string_agg(tgrelid::regclass || ' ' || tgname, E'\\n' ORDER BY 1) FROM pg_trigger"
                " WHERE NOT tgisinternal",
    "rules_policies": """SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
                             SELECT 'rule ' || ev_class::regclass || ' ' || rulename AS x FROM pg_rewrite
                             WHERE ev_class::regclass::text NOT LIKE 'pg_%'
                             AND ev_class::regclass::text NOT LIKE 'information_schema.%'
                             UNION ALL SELECT 'policy ' || polrelid::regclass || ' ' || polname FROM pg_policy) s""",
    "schemas": "SELECT string_agg(concat_ws(' ', nspname, pg_get_userbyid(nspowner), nspacl::text), E'\\n'"
               " ORDER BY nspname) FROM pg_namespace",
    "roles": """SELECT string_agg(concat_ws(' ', rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb,
                    rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil,
                    md5(coalesce(rolpassword, ''))), E'\\n' ORDER BY rolname) FROM pg_authid""",
    "memberships": "SELECT string_agg(concat_ws(' ', roleid::regrole, member::regrole, admin_option), E'\\n'"
                   " ORDER BY 1) FROM pg_auth_members",
    "role_settings": "SELECT string_agg(concat_ws(' ', setdatabase, setrole, setconfig::text), E'\\n' ORDER BY 1)"
                     " FROM pg_db_role_setting",
    "default_acl": "SELECT string_agg(defaclacl::text, E'\\n' ORDER BY 1) FROM pg_default_acl",
    "databases": "SELECT string_agg(concat_ws(' ', datname, pg_get_userbyid(datdba), datacl::text, datallowconn),"
                 " E'\\n' ORDER BY datname) FROM pg_database",
    "extensions": "SELECT string_agg(extname || ' ' || extversion, E'\\n' ORDER BY 1) FROM pg_extension",
    "languages": "SELECT string_agg(lanname || ' ' || lanpltrusted, E'\\n' ORDER BY 1) FROM pg_language",
    "foreign": """SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
                      SELECT 'fdw ' || fdwname AS x FROM pg_foreign_data_wrapper
                      UNION ALL SELECT 'server ' || srvname FROM pg_foreign_server
                      UNION ALL SELECT 'mapping ' || umuser || ' ' || umserver FROM pg_user_mapping
                      UNION ALL SELECT 'foreign table ' || ftrelid::regclass FROM pg_foreign_table
                      UNION ALL SELECT 'publication ' || pubname FROM pg_publication
                      UNION ALL SELECT 'subscription ' || subname FROM pg_subscription
                      UNION ALL SELECT 'event trigger ' || evtname FROM pg_event_trigger) s""",
    "large_objects": "SELECT string_agg(oid::text, ' ' ORDER BY oid) FROM pg_largeobject_metadata",
    "prepared_xacts": "SELECT string_agg(gid, ' ' ORDER BY gid) FROM pg_prepared_xacts",
    "replication_slots": "SELECT string_agg(slot_name, ' ' ORDER BY slot_name) FROM pg_replication_slots",
    # What ALTER SYSTEM writes (the server reads it at reload or restart).
    "auto_conf": "SELECT md5(pg_read_file('postgresql.auto.conf'))",
    "server_settings": "SELECT md5(string_agg(name || '=' || setting, ',' ORDER BY name)) FROM pg_settings"
                       " WHERE context IN ('postmaster', 'sighup', 'superuser-backend', 'backend')",
}
_CATALOG_QUERY = "SELECT " + ", ".join(f"({sql}) AS {key}" for key, sql in _CATALOG_PARTS.items())


def snapshot(admin: psycopg.Connection) -> dict[str, object]:
    """Everything a refused statement could have changed, read as the superuser."""
    with admin.cursor() as cur:
        row = cur.execute(_CATALOG_QUERY).fetchone()
        state: dict[str, object] = dict(zip(_CATALOG_PARTS, row))
        for table in CORPUS_TABLES + CORPUS_SEQUENCES:
            if cur.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is None:
                state[f"data:{table}"] = None
            elif table in CORPUS_SEQUENCES:
                state[f"data:{table}"] = cur.execute(f"SELECT last_value, is_called FROM public.{table}").fetchone()
            else:
                state[f"data:{table}"] = cur.execute(
                    f"SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                    f" FROM public.{table} t"
                ).fetchone()
    return state


def _diff(before: dict, after: dict) -> str:
    """The parts that differ; for multi-line parts only the lines removed (-) and added (+)."""
    out = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, str) and isinstance(new, str):
            old_lines, new_lines = old.splitlines(), new.splitlines()
            lines = [f"-{x}" for x in old_lines if x not in new_lines] + [f"+{x}" for x in new_lines
                                                                          if x not in old_lines]
            out.append(f"{key}: {' | '.join(lines)}")
        else:
            out.append(f"{key}: {old!r} -> {new!r}")
    return "; ".join(out)


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def reset_corpus_database(pg) -> None:
    """(Re)create the fixture objects in ``corpus`` (schema public owned by ``app``)."""
    if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{CORPUS_DB}'") != "1":
        pg.psql(f"CREATE DATABASE {_sql_ident(CORPUS_DB)} OWNER app")
    with psycopg.connect(pg.dsn("postgres", CORPUS_DB), autocommit=True) as admin:
        for (gid,) in admin.execute("SELECT gid FROM pg_prepared_xacts WHERE database = %s", (CORPUS_DB,)):
            admin.execute(f"ROLLBACK PREPARED '{gid}'")
        admin.execute("DROP SCHEMA IF EXISTS corpus_evil CASCADE")
        admin.execute("DROP SCHEMA IF EXISTS public CASCADE")
        admin.execute("CREATE SCHEMA public AUTHORIZATION app")
        admin.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    with psycopg.connect(pg.dsn("app", CORPUS_DB), autocommit=True) as conn:
        conn.execute(FIXTURE_SQL)


@pytest.fixture(scope="module")
def corpus_gateway(pg, tls_files, tmp_path_factory):
    """A gateway (default pipeline: identity guard + guardrails) with the corpus config's roles and rules."""
    data = yaml.safe_load(CONFIG_FILE.read_text())
    data["targets"] = {
        TARGET: {"host": pg.host, "port": pg.port, "database": CORPUS_DB, "user": "app",
                 "password": pg.passwords["app"], "sslmode": "require" if pg.ssl else "disable"},
    }
    data["listen"] = {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2,
                      "tls": {"mode": "require", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}}
    key_file = tmp_path_factory.mktemp("corpus-devissuer") / "dev-issuer.key"
    data["identity"] = {"dev_issuer": {"enabled": True, "key_file": str(key_file)}}
    config = parse_config(data)
    reset_corpus_database(pg)
    with RunningGateway(config, None) as gw:
        yield gw, dev_issuer_for(config), config


def _connect(env, role: str) -> psycopg.Connection:
    gw, issuer, _ = env
    subject = f"corpus-{role}"
    token = issuer.mint(subject, groups=(f"corpus-{role}s",), ttl=600)
    # prepare_threshold=None: no server-side prepared statements of psycopg's own;
    # every case is sent as written, in one simple-protocol Query.
    conn = psycopg.connect(gw.dsn(subject, token, database=TARGET, sslmode="require"), autocommit=True,
                           prepare_threshold=None)
    return conn


def _rule_of(exc: psycopg.Error) -> str | None:
    detail = exc.diag.message_detail or ""
    m = re.search(r'pgwarden rule "([^"]+)"', detail) or re.search(r"\(rule ([A-Za-z0-9_.:-]+)\)",
                                                                   exc.diag.message_primary or "")
    return m.group(1) if m else None


def _run(conn: psycopg.Connection, sql: str) -> None:
    """Send one case; COPY ... TO STDOUT goes through the COPY protocol (read out and discarded)."""
    if re.match(r"\s*COPY\b", sql, re.IGNORECASE) and re.search(r"\bTO\s+STDOUT\b", sql, re.IGNORECASE):
        with conn.cursor() as cur:
            with cur.copy(sql) as copy:
                for _ in copy:
                    pass
        return
    conn.execute(sql)


def _settle(conn: psycopg.Connection) -> None:
    """Leave no transaction open between cases (BEGIN, or a failed one)."""
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")


def _expected_rules(case: Case, role: str, config, policy) -> set[str] | None:
    """Rule names a refusal of this case may carry; None: any pgwarden rule."""
    expected = case.expect[role].rule
    if expected is None:
        policy_, analyzer = policy
        decision = check_statement(config, case.sql, role=role, policy=policy_, analyzer=analyzer).decision
        if decision.action == "allow":
            return None  # a suspected bug in the decision: any refusal by pgwarden will do
        expected = decision.rule or "guardrails.default"
    return {expected} | IDENTITY_RULES


def _check_refusal(exc: psycopg.Error, allowed_rules: set[str] | None) -> str | None:
    """None if ``exc`` is a pgwarden refusal with the right SQLSTATE and rule, else what is wrong."""
    message = exc.diag.message_primary or str(exc)
    if not message.startswith("pgwarden:"):
        return f"reached PostgreSQL (not refused by pgwarden): {exc.sqlstate} {message}"
    rule = _rule_of(exc)
    if rule is None:
        return f"refusal names no rule: {message}"
    if allowed_rules is not None and rule not in allowed_rules:
        return f"refused by rule {rule}, expected {sorted(allowed_rules - IDENTITY_RULES)}: {message}"
    sqlstate = SQLSTATE_SYNTAX if rule in SYNTAX_RULES else SQLSTATE_RULE
    if exc.sqlstate != sqlstate:
        return f"SQLSTATE {exc.sqlstate}, expected {sqlstate} for rule {rule}"
    if rule not in message and rule not in (exc.diag.message_detail or ""):
        return f"rule {rule} not named in the error"
    return None


@pytest.mark.parametrize("role", ROLES)
def test_end_to_end(role, corpus_gateway, pg, corpus_config, corpus_policy):
    reset_corpus_database(pg)
    refused = [c for c in CASES if c.expect[role].action != "allow"]
    allowed = [c for c in CASES if c.expect[role].action == "allow"] if role == "agent" else []
    assert refused
    problems: list[str] = []
    with psycopg.connect(pg.dsn("postgres", CORPUS_DB), autocommit=True) as admin:
        admin.execute("SET statement_timeout = '10s'")
        before = snapshot(admin)
        last = before
        conn = _connect(corpus_gateway, role)
        try:
            pid = conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()[0]

            def after_case(case: Case) -> None:
                nonlocal conn, last
                try:
                    _settle(conn)
                    assert conn.execute("SELECT 1").fetchone() == (1,)
                except psycopg.Error as exc:
                    problems.append(f"L{case.line} {case.short}: session unusable afterwards: {exc}")
                    conn.close()
                    conn = _connect(corpus_gateway, role)
                now = snapshot(admin)
                if now != last:
                    problems.append(f"L{case.line} {case.short}: CHANGED THE DATABASE: {_diff(last, now)}")
                    last = now

            for case in allowed:
                try:
                    _run(conn, case.sql)
                except psycopg.Error as exc:
                    if (exc.diag.message_primary or "").startswith("pgwarden:"):
                        problems.append(f"L{case.line} {case.short}: allowed case refused by pgwarden: "
                                        f"{exc.sqlstate} {exc.diag.message_primary}")
                after_case(case)

            for case in refused:
                rules = _expected_rules(case, role, corpus_config, corpus_policy)
                try:
                    _run(conn, case.sql)
                except psycopg.Error as exc:
                    wrong = _check_refusal(exc, rules)
                    if wrong:
                        problems.append(f"L{case.line} {case.short}: {wrong}")
                else:
                    problems.append(f"L{case.line} {case.short}: NOT REFUSED (ran on PostgreSQL)")
                after_case(case)

            if conn.execute("SELECT pg_catalog.pg_backend_pid()").fetchone()[0] != pid:
                problems.append("the session's upstream backend changed (terminated?)")
        finally:
            conn.close()
        after = snapshot(admin)
    if after != before:
        problems.append(f"database state changed: {_diff(before, after)}")
    assert not problems, f"{role}: {len(problems)} problem(s) in {len(allowed)} allowed + {len(refused)} refused " \
                         "cases:\n  " + "\n  ".join(problems)


def test_snapshot_sees_changes(pg, corpus_gateway):
    """The snapshot is not blind: direct changes of each kind show up."""
    reset_corpus_database(pg)
    changes = [
        "UPDATE corpus_orders SET amount = amount + 1 WHERE id = 1",
        "SELECT nextval('corpus_seq')",
        "ALTER TABLE corpus_orders ADD COLUMN note text",
        "CREATE FUNCTION scratch_f() RETURNS int LANGUAGE sql AS 'SELECT 2'",
        "CREATE OR REPLACE FUNCTION corpus_helper() RETURNS int LANGUAGE sql AS 'SELECT 3'",
        "GRANT SELECT ON corpus_orders TO PUBLIC",
        "SELECT lo_from_bytea(0, 'x')",
    ]
    with psycopg.connect(pg.dsn("postgres", CORPUS_DB), autocommit=True) as admin, \
            psycopg.connect(pg.dsn("app", CORPUS_DB), autocommit=True) as app:
        for sql in changes:
            before = snapshot(admin)
            app.execute(sql)
            assert snapshot(admin) != before, sql
    reset_corpus_database(pg)
    with psycopg.connect(pg.dsn("postgres", CORPUS_DB), autocommit=True) as admin:
        admin.execute("SELECT lo_unlink(oid) FROM pg_largeobject_metadata")


def test_prepare_and_execute_across_queries(corpus_gateway, pg):
    """PREPARE in one Query, EXECUTE in a later one: decided on what the name runs."""
    reset_corpus_database(pg)
    with psycopg.connect(pg.dsn("postgres", CORPUS_DB), autocommit=True) as admin:
        before = snapshot(admin)
        agent = _connect(corpus_gateway, "agent")
        developer = _connect(corpus_gateway, "developer")
        try:
            agent.execute("PREPARE corpus_q(int) AS SELECT id FROM corpus_orders WHERE id = $1")
            assert agent.execute("EXECUTE corpus_q(1)").fetchall() == [(1,)]
            # a write the agent may not prepare is never remembered, so its EXECUTE is unknown
            for sql, rule in [
                ("PREPARE corpus_d(int) AS DELETE FROM corpus_orders WHERE id = $1", "read-only.write"),
                ("EXECUTE corpus_d(1)", "guardrails.unknown_statement"),
                ("PREPARE corpus_all AS DELETE FROM corpus_orders", "dangerous.no_where"),
                ("EXECUTE corpus_all", "guardrails.unknown_statement"),
            ]:
                with pytest.raises(psycopg.Error) as info:
                    agent.execute(sql)
                assert (info.value.diag.message_primary or "").startswith("pgwarden:"), sql
                if rule is not None:
                    assert _rule_of(info.value) == rule, (sql, info.value.diag.message_primary)
            # after DEALLOCATE the name is forgotten
            agent.execute("DEALLOCATE corpus_q")
            with pytest.raises(psycopg.Error) as info:
                agent.execute("EXECUTE corpus_q(1)")
            assert info.value.sqlstate == "26000" and _rule_of(info.value) == "guardrails.unknown_statement"
            # the developer's reviewed DELETE is not prepared either
            with pytest.raises(psycopg.Error) as info:
                developer.execute("PREPARE corpus_d(int) AS DELETE FROM corpus_orders WHERE id = $1")
            assert _rule_of(info.value) == "corpus.review_delete"
            with pytest.raises(psycopg.Error) as info:
                developer.execute("EXECUTE corpus_d(1)")
            assert info.value.sqlstate == "26000" and _rule_of(info.value) == "guardrails.unknown_statement"
            # nor is a name the server never saw
            with pytest.raises(psycopg.Error) as info:
                developer.execute("EXECUTE corpus_never_prepared")
            assert info.value.sqlstate == "26000"
            assert agent.execute("SELECT 1").fetchone() == (1,)
            assert developer.execute("SELECT 1").fetchone() == (1,)
        finally:
            agent.close()
            developer.close()
        assert snapshot(admin) == before
