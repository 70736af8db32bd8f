"""Tests for the ``pgwarden demo`` sample data and embedded PostgreSQL.

The generator tests are pure Python. One test starts a real embedded server
(pgserver) in a throw-away directory, so it is skipped where pgserver is not
installed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import pytest

from pgwarden.demo.sample_data import (
    PII_COLUMNS,
    REFERENCE_NOW,
    TABLE_ORDER,
    SampleData,
    generate_sample_data,
    iban_check_digits,
    is_iban_valid,
    is_luhn_valid,
    luhn_check_digit,
    schema_sql,
)


@pytest.fixture(scope="module")
def data() -> SampleData:
    return generate_sample_data()


# --- generator ---------------------------------------------------------------


def test_generator_is_deterministic(data: SampleData) -> None:
    again = generate_sample_data()
    for name in TABLE_ORDER:
        assert again[name].columns == data[name].columns
        assert again[name].rows == data[name].rows, name
    other = generate_sample_data(seed=data.seed + 1)
    assert other["customers"].rows != data["customers"].rows


def test_sizes_and_ids(data: SampleData) -> None:
    counts = data.row_counts()
    assert counts["customers"] == 500
    assert counts["products"] >= 20
    assert counts["orders"] > counts["customers"]
    assert counts["order_items"] > counts["orders"]
    assert 0 < counts["payments"] <= counts["orders"]
    for name in TABLE_ORDER:
        ids = [row[0] for row in data[name].rows]
        assert ids == list(range(1, len(ids) + 1)), name
    assert len(generate_sample_data(customers=7)["customers"].rows) == 7


def test_every_card_is_luhn_valid_with_a_real_iin(data: SampleData) -> None:
    brands: Counter[str] = Counter()
    for c in data["customers"].dicts():
        card = c["card_number"]
        assert is_luhn_valid(card), card
        if card.startswith("4"):
            assert len(card) == 16
            brands["visa"] += 1
        elif card[:2] in {"51", "52", "53", "54", "55"} or 2221 <= int(card[:4]) <= 2720:
            assert len(card) == 16
            brands["mastercard"] += 1
        elif card[:2] in {"34", "37"}:
            assert len(card) == 15
            brands["amex"] += 1
        else:
            pytest.fail(f"unexpected IIN: {card}")
    assert set(brands) == {"visa", "mastercard", "amex"}


def test_luhn_helper() -> None:
    assert is_luhn_valid("4111111111111111")
    assert is_luhn_valid("4111 1111 1111 1111")
    assert is_luhn_valid("378282246310005")  # amex test number
    assert not is_luhn_valid("4111111111111112")
    assert not is_luhn_valid("41111111111a1111")
    assert not is_luhn_valid("")
    assert not is_luhn_valid("0")
    assert luhn_check_digit("411111111111111") == "1"


def test_every_iban_is_valid(data: SampleData) -> None:
    ibans = [p["iban"] for p in data["payments"].dicts() if p["iban"] is not None]
    assert ibans
    lengths = {"DE": 22, "FR": 27, "GB": 22}
    assert {i[:2] for i in ibans} == set(lengths)
    for iban in ibans:
        assert is_iban_valid(iban), iban
        assert len(iban) == lengths[iban[:2]], iban
        assert iban_check_digits(iban[:2], iban[4:]) == iban[2:4]
    for iban in (i for i in ibans if i.startswith("FR")):  # national RIB key too
        bank, branch, account, key = iban[4:9], iban[9:14], iban[14:25], iban[25:27]
        assert (89 * int(bank) + 15 * int(branch) + 3 * int(account) + int(key)) % 97 == 0


def test_iban_helper() -> None:
    assert is_iban_valid("GB82 WEST 1234 5698 7654 32")
    assert is_iban_valid("DE89370400440532013000")
    assert is_iban_valid("FR1420041010050500013M02606")
    assert not is_iban_valid("DE89370400440532013001")  # changed digit
    assert not is_iban_valid("DE8937040044053201300")  # wrong length for DE
    assert not is_iban_valid("GB82WEST12345698765432!")
    assert not is_iban_valid("")


def test_ssn_phone_and_email_formats(data: SampleData) -> None:
    customers = data["customers"].dicts()
    ssn_re = re.compile(r"9\d\d-(\d\d)-(\d{4})")
    phone_re = re.compile(r"\+1 \(555\) [2-9]\d\d-\d{4}")
    email_re = re.compile(r"[a-z0-9]+(?:[._][a-z0-9]+)*@(?:example\.(?:com|net|org)|[a-z]+\.(?:example|test))")
    for c in customers:
        m = ssn_re.fullmatch(c["ssn"])
        assert m and m.group(1) != "00" and m.group(2) != "0000", c["ssn"]
        assert phone_re.fullmatch(c["phone"]), c["phone"]
        assert email_re.fullmatch(c["email"]), c["email"]
        assert c["full_name"].count(" ") >= 1
        age_years = (REFERENCE_NOW.date() - c["date_of_birth"]).days / 365.25
        assert 18 <= age_years <= 86
        assert c["created_at"] <= REFERENCE_NOW
    emails = [c["email"] for c in customers]
    assert len(set(emails)) == len(emails)


def test_referential_integrity_and_money(data: SampleData) -> None:
    customers = {c["id"]: c for c in data["customers"].dicts()}
    products = {p["id"]: p for p in data["products"].dicts()}
    orders = {o["id"]: o for o in data["orders"].dicts()}
    line_totals: dict[int, Decimal] = defaultdict(Decimal)
    for item in data["order_items"].dicts():
        assert item["order_id"] in orders
        assert item["unit_price"] == products[item["product_id"]]["price"]
        line_totals[item["order_id"]] += item["unit_price"] * item["quantity"]
    for order in orders.values():
        assert order["customer_id"] in customers
        assert order["total"] == line_totals[order["id"]]
        assert order["ordered_at"] >= customers[order["customer_id"]]["created_at"]
    paid = {"paid", "shipped", "delivered", "refunded"}
    paid_orders = [p["order_id"] for p in data["payments"].dicts()]
    assert len(set(paid_orders)) == len(paid_orders)
    assert set(paid_orders) == {o["id"] for o in orders.values() if o["status"] in paid}
    refs = set()
    for p in data["payments"].dicts():
        order = orders[p["order_id"]]
        assert p["amount"] == order["total"]
        assert p["paid_at"] >= order["ordered_at"]
        if p["method"] == "card":
            assert p["iban"] is None
            assert p["card_last4"] == customers[order["customer_id"]]["card_number"][-4:]
        else:
            assert p["method"] == "bank_transfer" and p["card_last4"] is None and p["iban"]
        refs.add(p["processor_ref"])
    assert len(refs) == len(paid_orders)


def test_schema_marks_pii_columns() -> None:
    ddl = schema_sql()
    for table in TABLE_ORDER:
        assert f"CREATE TABLE {table} (" in ddl
    for (table, column), kind in PII_COLUMNS.items():
        assert f"COMMENT ON COLUMN {table}.{column} IS 'pii:{kind}';" in ddl
    assert "COMMENT ON TABLE payments IS 'audit:" in ddl


# --- embedded server ---------------------------------------------------------


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, pgserver adds o+rx to every ancestor of
    # pgdata, and we would rather it did that to a fresh /tmp/<x> than to
    # pytest's private base directory.
    path = Path(tempfile.mkdtemp(prefix="pgwdemo-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_embedded_server_loads_once_and_reuses_data(demo_dir: Path) -> None:
    pytest.importorskip("pgserver")
    from pgwarden.demo.embedded import APP_ROLE, MARKER_TABLE, start_embedded_postgres

    expected = generate_sample_data(customers=120).row_counts()
    pgdata = demo_dir / "postgres"

    pg = start_embedded_postgres(pgdata, customers=120)
    try:
        assert pg.freshly_loaded
        assert pg.socket_path.is_socket()
        assert stat.S_IMODE(pg.socket_path.stat().st_mode) == 0o700
        assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700
        assert pg.uri().startswith(f"postgresql://{APP_ROLE}@/shop?host=")
        assert pg.upstream_target()["host"].startswith("/")
        first_pid = pg.pid
        with pg.connect() as conn:
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLE_ORDER}  # type: ignore[index]
            assert counts == expected
            loaded_at = conn.execute(f"SELECT value FROM {MARKER_TABLE} WHERE key = 'loaded_at'").fetchone()
            owners = conn.execute(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            assert owners == [(APP_ROLE,)]
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
            comments = dict(
                conn.execute(
                    "SELECT c.relname || '.' || a.attname, d.description FROM pg_description d"
                    " JOIN pg_class c ON c.oid = d.objoid JOIN pg_attribute a"
                    " ON a.attrelid = d.objoid AND a.attnum = d.objsubid WHERE d.objsubid > 0"
                ).fetchall()
            )
            assert {k: v for k, v in comments.items() if v.startswith("pii:")} == {
                f"{t}.{c}": f"pii:{k}" for (t, c), k in PII_COLUMNS.items()
            }
            cards = [r[0] for r in conn.execute("SELECT card_number FROM customers").fetchall()]
            assert all(is_luhn_valid(c) for c in cards)
    finally:
        stopped = pg.stop()  # assert after, so a failure above is not masked
    assert stopped
    assert not (pgdata / "postmaster.pid").exists()
    assert pg.stop()  # idempotent

    pg = start_embedded_postgres(pgdata, customers=120)
    try:
        assert not pg.freshly_loaded
        assert pg.pid != first_pid  # really restarted, not left running
        with pg.connect() as conn:
            counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLE_ORDER}  # type: ignore[index]
            assert counts == expected
            assert conn.execute(f"SELECT value FROM {MARKER_TABLE} WHERE key = 'loaded_at'").fetchone() == loaded_at
            # identity sequences were moved past the explicit ids
            with conn.transaction(force_rollback=True):
                new_id = conn.execute(
                    "INSERT INTO products (name, price) VALUES ('Test Widget', 1.00) RETURNING id"
                ).fetchone()
                assert new_id == (expected["products"] + 1,)
    finally:
        stopped = pg.stop()
    assert stopped
    if os.geteuid() == 0:
        assert pg.os_user == "pgserver"
