"""The masking corpus (tests/corpus/masking.txt): attempts to read masked data around the rules.

Every case runs through the gateway as ``agent``, ``developer`` and ``dba``
(psycopg, simple protocol), and the outcome must be the one the corpus line
names. Whatever the outcome, nothing an ``agent`` or ``developer`` receives
(every value of every result set, COPY data, error message, detail and hint,
notices) may contain a customer's email, SSN (with or without dashes) or card
number.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from masking_env import leaks, masking_gateway

CORPUS = Path(__file__).parent / "corpus" / "masking.txt"
ROLES = ("agent", "developer", "dba")
OUTCOMES = {"ok", "refuse", "deny", "error", "-"}


def load_cases() -> list[tuple[int, dict[str, str], str]]:
    cases = []
    for number, line in enumerate(CORPUS.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        expected, sql = line.split("|", 1)
        outcomes = expected.split()
        assert len(outcomes) == 3 and set(outcomes) <= OUTCOMES, f"line {number}: {line!r}"
        cases.append((number, dict(zip(ROLES, outcomes)), sql.strip()))
    return cases


CASES = load_cases()


def test_corpus_covers_every_kind_of_attempt():
    assert len(CASES) >= 60
    for role in ("agent", "developer"):
        seen = {c[1][role] for c in CASES}
        assert {"ok", "refuse", "error"} <= seen


@pytest.fixture(scope="module")
def env(pg, tmp_path_factory):
    with masking_gateway(pg, tmp_path_factory.mktemp("masking-corpus")) as env:
        yield env


def run_case(conn: psycopg.Connection, sql: str) -> tuple[str, list, str]:
    """(outcome, everything received, message of a refusal or error)."""
    received: list = []
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(f"{d.message_primary} {d.message_detail or ''}"))
    try:
        with conn.cursor() as cur:
            if sql.upper().startswith("COPY"):
                with cur.copy(sql) as copy:
                    received.extend(bytes(b) for b in copy)
            else:
                cur.execute(sql, prepare=False)
                while True:
                    if cur.description is not None:
                        received.append(cur.fetchall())
                    if not cur.nextset():
                        break
        outcome, message = "ok", ""
    except errors.InsufficientPrivilege as exc:
        message = str(exc)
        received.append([message, exc.diag.message_detail, exc.diag.message_hint])
        outcome = "refuse" if "masking." in (exc.diag.message_primary or "") else "deny"
    except psycopg.Error as exc:
        message = str(exc)
        received.append([message, exc.diag.message_detail, exc.diag.message_hint, exc.diag.context])
        outcome = "error"
    finally:
        conn._notice_handlers.clear()  # noqa: SLF001 - one handler per case
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.execute("ROLLBACK")
    received.extend(notices)
    return outcome, received, message


@pytest.mark.parametrize("role", ROLES)
def test_corpus(env, role):
    failures = []
    with env.connect(role, prepare_threshold=None) as conn:
        for number, expected, sql in CASES:
            want = expected[role]
            if want == "-":
                continue
            outcome, received, message = run_case(conn, sql)
            if outcome != want:
                failures.append(f"line {number}: expected {want}, got {outcome}: {sql}  [{message.strip()[:200]}]")
            if role != "dba":
                found = leaks(received)
                if found:
                    failures.append(f"line {number}: LEAK of {sorted(set(found))}: {sql}")
    assert not failures, "\n".join(failures)
