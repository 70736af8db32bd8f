"""Reading a target's catalog for masking, on a connection of pgwarden's own.

Why a separate connection: a session's upstream connection carries only that
client's traffic (its transaction state is the client's); catalog reads go
over a short-lived asyncpg connection with the target's configured login,
which can read ``pg_class`` and ``pg_attribute`` like any role.
"""

from __future__ import annotations

import asyncio

from ..config import Config
from ..policy.masking.catalog import CATALOG_QUERY
from .tls import upstream_context

__all__ = ["CatalogUnavailable", "catalog_loader"]


class CatalogUnavailable(Exception):
    """The catalog of a target could not be read (the statement that needed it is refused)."""


def catalog_loader(config: Config):
    """``async load(target_name) -> rows`` for :class:`~pgwarden.policy.masking.catalog.CatalogCache`."""

    async def load(target_name: str) -> list[tuple]:
        import asyncpg

        target = config.targets[target_name]
        ssl = None
        if target.sslmode != "disable":
            ssl = upstream_context(target.sslmode, target.sslrootcert)
        try:
            password = target.resolve_password()
            conn = await asyncio.wait_for(
                asyncpg.connect(
                    host=target.host,
                    port=target.port,
                    user=target.user,
                    password=password,
                    database=target.database,
                    ssl=ssl,
                    timeout=target.connect_timeout,
                    # pg_get_viewdef locks the relations a view reads: never wait long behind
                    # someone's open ALTER TABLE (the statement that needed us is refused instead).
                    server_settings={"application_name": "pgwarden-catalog", "lock_timeout": "3s",
                                     "statement_timeout": "30s", "default_transaction_read_only": "on"},
                    statement_cache_size=0,
                ),
                timeout=target.connect_timeout,
            )
        except Exception as exc:  # noqa: BLE001 - any failure means: no catalog, refuse
            raise CatalogUnavailable(
                f"cannot connect to target {target_name!r} to read its catalog: {type(exc).__name__} {exc}".rstrip()
            ) from exc
        try:
            records = await asyncio.wait_for(conn.fetch(CATALOG_QUERY), timeout=max(target.connect_timeout, 30.0))
        except Exception as exc:  # noqa: BLE001
            raise CatalogUnavailable(
                f"cannot read the catalog of target {target_name!r}: {type(exc).__name__} {exc}".rstrip()
            ) from exc
        finally:
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except Exception:  # noqa: BLE001
                conn.terminate()
        return [tuple(r) for r in records]

    return load
