"""An embedded PostgreSQL for ``pgwarden demo``, built on the ``pgserver`` package.

Why pgserver: it ships PostgreSQL binaries in a wheel, so the demo works on a
machine with no PostgreSQL installed. This module adds what the demo needs on
top: a ``shop`` database loaded exactly once, a non-superuser ``shop_app`` role
for the gateway to use upstream, tightened socket permissions, and a ``stop()``
that really stops the server when the demo is interrupted.

How pgserver behaves (0.1.x, read from its source):

* ``initdb --auth=trust --auth-local=trust -U postgres`` on first use, then
  ``pg_ctl start -o '-h ""' -o '-k <socket_dir>'``: **no TCP listener at all**,
  only a Unix socket, trust authentication, database superuser ``postgres``.
  The port is the default 5432, so the socket is ``<socket_dir>/.s.PGSQL.5432``
  (we read both from ``postmaster.pid`` rather than assuming).
* The socket directory is ``pgdata`` itself unless that path is too long for
  ``AF_UNIX`` (~107 bytes), in which case it is a hashed directory under the
  user runtime dir (``$XDG_RUNTIME_DIR`` or ``/tmp/runtime-<uid>``).
* As root it cannot run PostgreSQL as root, so it creates (``useradd``) an OS
  account named ``pgserver`` (not ``postgres``), chowns ``pgdata`` to it and
  runs ``initdb``/``pg_ctl`` with ``user='pgserver'``. It also adds ``g+rx,o+rx``
  to **every ancestor** of ``pgdata`` so that account can reach it, and makes a
  fallback socket directory mode 0777.
* ``cleanup_mode``: ``'stop'`` stops the server when the last handle (across
  processes, tracked in ``pgdata/.handle_pids.json``) is released, via
  ``atexit`` or ``cleanup()``; ``'delete'`` also removes ``pgdata``; ``None``
  leaves it running. The demo uses ``'stop'``: data must survive, the server
  must not. ``pg_ctl`` starts the postmaster in its own session, so a Ctrl-C
  in the terminal does not reach PostgreSQL: it is ``stop()`` (or ``atexit``
  after ``KeyboardInterrupt``) that shuts it down.

Pass a **dedicated** directory as ``pgdata`` (for example
``<demo data dir>/postgres``) and keep the gateway config next to it, not in
it: initdb refuses a non-empty directory and pgserver hands ownership of it to
the ``pgserver`` account.
"""

from __future__ import annotations

import atexit
import json
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import psycopg
from psycopg import errors, sql

from pgwarden.demo.sample_data import (
    DEFAULT_CUSTOMERS,
    DEFAULT_SEED,
    SAMPLE_VERSION,
    TABLE_ORDER,
    generate_sample_data,
    load_sample_data,
)

if TYPE_CHECKING:
    from pgserver import PostgresServer

__all__ = [
    "APP_ROLE",
    "DEMO_DATABASE",
    "MARKER_TABLE",
    "SUPERUSER",
    "EmbeddedPostgres",
    "ensure_shop_database",
    "start_embedded_postgres",
]

DEMO_DATABASE = "shop"
#: The role the gateway uses upstream. Owns every object in ``shop`` but is not
#: a superuser, so the demo shows the gateway acting with ordinary privileges.
APP_ROLE = "shop_app"
#: pgserver's initdb superuser.
SUPERUSER = "postgres"
#: Presence of this table in ``shop`` means "sample data loaded"; it is created
#: in the same transaction as the data, so it can never lie.
MARKER_TABLE = "pgwarden_demo_meta"
#: Key for ``pg_advisory_xact_lock`` so two demos starting at once load once.
_LOAD_LOCK_KEY = 0x7067_7764_656D_6F  # "pgwdemo"
_SOCKET_MODE = 0o700


@dataclass
class EmbeddedPostgres:
    """A running pgserver instance plus what the gateway needs to reach it.

    Upstream access model: ``shop_app`` has **no password**; pgserver's
    ``pg_hba.conf`` trusts every local (Unix socket) connection and there is no
    TCP listener. That is safe here because reaching the socket already
    requires OS-level access: it lives in ``pgdata`` (mode 0700, owned by the
    server's OS account) and the socket file itself is forced to mode 0700, so
    only that account and root can connect. A password stored next to the
    socket would protect nothing the filesystem does not already protect, and
    it would be one more secret for the demo to keep stable across runs.
    """

    pgdata: Path
    socket_dir: Path
    port: int
    #: OS account PostgreSQL runs as (``'pgserver'`` when we are root, else ``None``
    #: meaning the current user).
    os_user: str | None
    #: True if this start created the ``shop`` data; False if it was reused.
    freshly_loaded: bool = False
    _server: "PostgresServer | None" = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def socket_path(self) -> Path:
        """The Unix socket file, ``<socket_dir>/.s.PGSQL.<port>``."""
        return self.socket_dir / f".s.PGSQL.{self.port}"

    @property
    def log_path(self) -> Path:
        """PostgreSQL's server log (pgserver writes it to ``pgdata/log``)."""
        return self.pgdata / "log"

    @property
    def pid(self) -> int | None:
        """Postmaster pid, or ``None`` once stopped."""
        if self._server is None or self._stopped:
            return None
        return self._server.get_pid()

    def uri(self, database: str = DEMO_DATABASE, user: str = APP_ROLE) -> str:
        """A libpq URI over the Unix socket, e.g. for ``psql`` on this machine.

        ``postgresql://shop_app@/shop?host=%2Fpath%2Fto%2Fpgdata&port=5432``
        """
        return (
            f"postgresql://{quote(user, safe='')}@/{quote(database, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}"
        )

    def conninfo(self, database: str = DEMO_DATABASE, user: str = APP_ROLE) -> dict[str, Any]:
        """Keyword connection parameters for ``psycopg.connect(**...)``."""
        return {"host": str(self.socket_dir), "port": self.port, "dbname": database, "user": user}

    def connect(
        self, database: str = DEMO_DATABASE, user: str = APP_ROLE, *, autocommit: bool = False
    ) -> "psycopg.Connection[Any]":
        """Open a psycopg connection over the socket (trust auth, no password)."""
        return psycopg.connect(**self.conninfo(database, user), autocommit=autocommit, connect_timeout=10)

    def upstream_target(self) -> dict[str, Any]:
        """Values for a gateway ``targets.<name>`` entry pointing at this server.

        ``host`` is the socket directory (the gateway treats a value starting
        with ``/`` as one). Recompute it on every start rather than caching it:
        the socket directory depends on the path length of ``pgdata``.
        """
        return {"host": str(self.socket_dir), "port": self.port, "database": DEMO_DATABASE, "user": APP_ROLE}

    def is_running(self) -> bool:
        """True while a postmaster for ``pgdata`` is alive (ours or another process's)."""
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()

    def stop(self) -> bool:
        """Release our handle; stop the server unless another process still holds one.

        Returns True if no postmaster is running afterwards. Safe to call
        twice, and after ``KeyboardInterrupt``. Another ``pgwarden demo`` using
        the same ``pgdata`` keeps the server alive until it stops too (that is
        pgserver's shared-handle rule, and the right one).
        """
        if self._server is not None and not self._stopped:
            self._stopped = True
            server = self._server
            try:
                server.cleanup()
            finally:
                # pgserver registered the same method with atexit; running it
                # again later could tear down a *newer* handle for this pgdata.
                atexit.unregister(server._cleanup)
        return not self.is_running()

    def __enter__(self) -> "EmbeddedPostgres":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _import_pgserver() -> Any:
    # pgserver computes platformdirs' runtime path at import time, which warns
    # when XDG_RUNTIME_DIR is unset (containers, sudo); the fallback is fine.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver

    return pgserver


def _prune_stale_handles(pgserver: Any, pgdata: Path) -> None:
    """Drop pids of dead processes from pgserver's handle list.

    pgserver only stops the server when the *last* registered process lets go.
    A demo killed with SIGKILL/SIGTERM never deregisters, and its pid would
    then keep every later run from stopping the server.
    """
    import psutil

    handle_file = pgdata / ".handle_pids.json"
    if not handle_file.exists():
        return
    with pgserver.PostgresServer._lock:
        try:
            pids = json.loads(handle_file.read_text())
        except (OSError, ValueError):
            return
        if not isinstance(pids, list):
            return
        alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p)]
        if alive != pids:
            handle_file.write_text(json.dumps(alive))


def _check_pgdata(pgdata: Path) -> None:
    if pgdata.exists() and not pgdata.is_dir():
        raise NotADirectoryError(f"{pgdata} exists and is not a directory")
    if pgdata.is_dir() and not (pgdata / "PG_VERSION").exists():
        try:
            leftovers = [p.name for p in pgdata.iterdir()]
        except PermissionError:
            leftovers = []
        if leftovers:
            raise FileExistsError(
                f"{pgdata} is not empty and is not a PostgreSQL data directory "
                f"(found {', '.join(sorted(leftovers)[:5])}); give the embedded server a directory of its own"
            )


def _tighten_socket(socket_path: Path) -> None:
    """Make the live socket owner-only (root can still connect: it bypasses modes).

    ``unix_socket_permissions`` (set by :func:`ensure_shop_database` through
    ALTER SYSTEM) only applies from the next server start, and pgserver's
    fallback socket directory is world-writable, so fix the current file now.
    """
    try:
        mode = stat.S_IMODE(socket_path.stat().st_mode)
        if mode & ~_SOCKET_MODE:
            socket_path.chmod(_SOCKET_MODE)
    except FileNotFoundError:
        pass


def start_embedded_postgres(
    pgdata: Path,
    *,
    load_sample: bool = True,
    seed: int = DEFAULT_SEED,
    customers: int = DEFAULT_CUSTOMERS,
) -> EmbeddedPostgres:
    """Start (or attach to) the embedded server in ``pgdata`` and prepare ``shop``.

    Creates ``pgdata`` (and its parents) if needed. The first start runs
    initdb (a few seconds) and loads the sample data; later starts reuse both:
    ``freshly_loaded`` on the result tells which happened. If a server for
    ``pgdata`` is already running (a crashed previous demo), it is reused.

    On failure after the server started, the server is stopped again.
    """
    pgdata = Path(pgdata).expanduser().resolve()
    _check_pgdata(pgdata)
    pgdata.parent.mkdir(parents=True, exist_ok=True)

    pgserver = _import_pgserver()
    _prune_stale_handles(pgserver, pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    info = server.get_postmaster_info()
    if info.socket_dir is None or info.port is None:  # pragma: no cover - Windows only
        server.cleanup()
        raise RuntimeError("pgserver started without a Unix socket; the demo needs one")

    pg = EmbeddedPostgres(
        pgdata=pgdata,
        socket_dir=Path(info.socket_dir),
        port=int(info.port),
        os_user=server.system_user,
        _server=server,
    )
    try:
        _tighten_socket(pg.socket_path)
        if load_sample:
            pg.freshly_loaded = ensure_shop_database(pg, seed=seed, customers=customers)
    except BaseException:
        pg.stop()
        raise
    return pg


def _ensure_role_and_database(pg: EmbeddedPostgres) -> None:
    with pg.connect("postgres", SUPERUSER, autocommit=True) as conn:
        if conn.execute("SELECT current_setting('unix_socket_permissions')").fetchone() != ("0700",):
            conn.execute("ALTER SYSTEM SET unix_socket_permissions = '0700'")
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() is None:
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION").format(
                        sql.Identifier(APP_ROLE)
                    )
                )
            except errors.DuplicateObject:  # another demo process won the race
                pass
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)).fetchone() is None:
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8'").format(
                        sql.Identifier(DEMO_DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
            except errors.DuplicateDatabase:
                pass


def ensure_shop_database(
    pg: EmbeddedPostgres, *, seed: int = DEFAULT_SEED, customers: int = DEFAULT_CUSTOMERS
) -> bool:
    """Make sure role ``shop_app`` and database ``shop`` exist with the sample loaded.

    Returns True if the data was loaded by this call, False if it was already
    there. Schema, data and the ``pgwarden_demo_meta`` marker are written in
    one transaction as ``shop_app`` (so it owns everything), under an advisory
    lock: an interrupted load leaves nothing behind and two concurrent demos
    load once.
    """
    _ensure_role_and_database(pg)
    with pg.connect(DEMO_DATABASE, APP_ROLE) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOAD_LOCK_KEY,))
            marker = conn.execute("SELECT to_regclass(%s)", (f"public.{MARKER_TABLE}",)).fetchone()
            if marker is not None and marker[0] is not None:
                return False
            existing = conn.execute("SELECT to_regclass('public.customers')").fetchone()
            if existing is not None and existing[0] is not None:
                raise RuntimeError(
                    f"database {DEMO_DATABASE!r} has sample tables but no {MARKER_TABLE} marker; "
                    "refusing to load over them (use a fresh data directory)"
                )
            counts = load_sample_data(conn, generate_sample_data(seed=seed, customers=customers))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (key text PRIMARY KEY, value text NOT NULL);"
                    " COMMENT ON TABLE {} IS 'pgwarden demo bookkeeping: marks the sample data as loaded'"
                ).format(sql.Identifier(MARKER_TABLE), sql.Identifier(MARKER_TABLE))
            )
            meta = {"sample_version": str(SAMPLE_VERSION), "seed": str(seed)}
            meta.update({f"rows.{table}": str(n) for table, n in counts.items()})
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {} (key, value) VALUES (%s, %s)").format(sql.Identifier(MARKER_TABLE)),
                    sorted(meta.items()),
                )
                cur.execute(
                    sql.SQL("INSERT INTO {} (key, value) VALUES ('loaded_at', now()::text)").format(
                        sql.Identifier(MARKER_TABLE)
                    )
                )
            # Fresh statistics so the demo's first EXPLAINs look sensible.
            conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, TABLE_ORDER))))
    return True
