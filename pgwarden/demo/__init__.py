"""``pgwarden demo``: an embedded PostgreSQL with a fake-PII shop database.

* :mod:`pgwarden.demo.sample_data` - deterministic schema + data generator
  (no external faker), and the Luhn / IBAN check helpers.
* :mod:`pgwarden.demo.embedded` - pgserver wrapper that starts the server,
  loads the ``shop`` database exactly once and stops it on request.

Importing this package does not import ``pgserver``; that happens on the first
:func:`start_embedded_postgres` call, so ``pgwarden`` commands other than
``demo`` never pay for it.
"""

from pgwarden.demo.embedded import (
    APP_ROLE,
    DEMO_DATABASE,
    MARKER_TABLE,
    EmbeddedPostgres,
    ensure_shop_database,
    start_embedded_postgres,
)
from pgwarden.demo.sample_data import (
    PII_COLUMNS,
    SampleData,
    generate_sample_data,
    is_iban_valid,
    is_luhn_valid,
    load_sample_data,
    schema_sql,
)

__all__ = [
    "APP_ROLE",
    "DEMO_DATABASE",
    "MARKER_TABLE",
    "PII_COLUMNS",
    "EmbeddedPostgres",
    "SampleData",
    "ensure_shop_database",
    "generate_sample_data",
    "is_iban_valid",
    "is_luhn_valid",
    "load_sample_data",
    "schema_sql",
    "start_embedded_postgres",
]
