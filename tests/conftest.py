"""Shared pytest fixtures.

``pg`` is a real PostgreSQL started once per session (about a second) because
starting one per test would dominate the run time; tests must not change its
roles or pg_hba.conf in ways other tests would notice.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgwarden.testing.postgres import TestPostgres


@pytest.fixture(scope="session")
def pg() -> Iterator[TestPostgres]:
    """A running :class:`TestPostgres`, stopped and deleted after the session."""
    with TestPostgres() as server:
        yield server
