"""A real, throwaway PostgreSQL server that the test suite starts itself.

Why a real server: pgwarden sits between clients and PostgreSQL, so the parts
worth testing (authentication relay, TLS, the extended query protocol, error
and notice passthrough) only mean something against the real thing. Mocking
the backend would test our assumptions, not PostgreSQL's behaviour.

Why start our own instead of using one that is running: tests need known roles
with passwords stored in every format (SCRAM, MD5, cleartext on the wire,
trust), a pg_hba.conf that maps each role to its method, TLS with a CA the test
controls, and a port nobody else uses. Building that in a temporary cluster
takes a couple of seconds (``initdb --no-sync``, ``fsync=off``) and leaves
nothing behind.

Binaries: the system's PostgreSQL (``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``, else ``initdb`` on PATH), or, when none is
installed, the build bundled in the ``pgserver`` wheel. Set
``PGWARDEN_PG_BINDIR`` to a directory, ``system`` or ``pgserver`` to choose.
The pgserver build has no OpenSSL, so with it :attr:`TestPostgres.ssl` is False
and TLS tests should skip.

Root: ``initdb`` and ``postgres`` refuse to run as root, and CI runs as root.
Then the server runs as the ``postgres`` OS user (created if missing) and its
directory lives under ``/tmp``, which that user can reach.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgwarden.certs import write_ca_signed

__all__ = [
    "PgBinaries",
    "PostgresSetupError",
    "TestPostgres",
    "find_pg_binaries",
]

#: Environment variable that picks the binaries: a bindir, ``system`` or ``pgserver``.
BINDIR_ENV = "PGWARDEN_PG_BINDIR"
#: Set to 1 to keep the temporary directory (data, logs) after stop(), for debugging.
KEEP_ENV = "PGWARDEN_PG_KEEP"

#: OS user the server runs as when the test process is root.
SERVICE_USER = "postgres"

#: Roles created besides the superuser, mapped to the pg_hba.conf method used
#: for them over TCP. Everything not listed uses scram-sha-256.
HBA_METHODS: Mapping[str, str] = {
    "md5user": "md5",
    "clearuser": "password",
    "trustuser": "trust",
}

_STARTUP_TIMEOUT = 60  # seconds; pg_ctl -w normally returns in well under one.
_REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")


class PostgresSetupError(RuntimeError):
    """The test server could not be found, initialised, started or configured."""


@dataclass(frozen=True)
class PgBinaries:
    """Where the PostgreSQL programs are, and how they were found."""

    bindir: Path
    #: ``pg_config``, ``debian`` (/usr/lib/postgresql/N/bin), ``path``, ``pgserver`` or ``env``.
    source: str
    #: ``postgres --version`` output, e.g. ``postgres (PostgreSQL) 15.18 (Debian ...)``.
    version: str

    @property
    def major(self) -> int:
        """Major version number (15 for 15.18), 0 if the version text is unexpected."""
        m = re.search(r"\)\s*(\d+)", self.version)
        return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------- binaries


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / prog, os.X_OK) for prog in _REQUIRED_PROGRAMS)


def _server_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True, text=True, check=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    return out.stdout.strip()


def _system_bindirs() -> list[tuple[Path, str]]:
    """Candidate system bindirs in preference order."""
    found: list[tuple[Path, str]] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True,
                timeout=30, stdin=subprocess.DEVNULL,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            found.append((Path(out), "pg_config"))

    def _major(p: Path) -> tuple[int, str]:
        name = p.parent.name
        return (int(name), name) if name.isdigit() else (-1, name)

    # pg_config may come from libpq-dev without a server; Debian installs each
    # major version side by side, so take the newest that has initdb.
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
    found.extend((p, "debian") for p in debian)

    initdb = shutil.which("initdb")
    if initdb:
        found.append((Path(initdb).resolve().parent, "path"))
    return found


def _pgserver_bindir() -> Path | None:
    # find_spec, not import: importing pgserver starts its own machinery
    # (platformdirs, psutil) that we do not use.
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(list(spec.submodule_search_locations)[0]).resolve() / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def find_pg_binaries(prefer: str | None = None) -> PgBinaries:
    """Locate PostgreSQL server programs.

    *prefer* (default: ``$PGWARDEN_PG_BINDIR``, else automatic) is a bindir
    path, ``"system"``, ``"pgserver"`` or ``"auto"``: system first, then
    pgserver.
    """
    prefer = prefer or os.environ.get(BINDIR_ENV) or "auto"
    candidates: list[tuple[Path, str]] = []
    if prefer not in ("auto", "system", "pgserver"):
        candidates.append((Path(prefer), "env"))
    else:
        if prefer in ("auto", "system"):
            candidates.extend(_system_bindirs())
        if prefer in ("auto", "pgserver"):
            bindir = _pgserver_bindir()
            if bindir is not None:
                candidates.append((bindir, "pgserver"))
    for bindir, source in candidates:
        if _has_server(bindir):
            return PgBinaries(bindir=bindir, source=source, version=_server_version(bindir))
    tried = ", ".join(str(b) for b, _ in candidates) or "nothing"
    raise PostgresSetupError(
        f"no PostgreSQL server programs ({', '.join(_REQUIRED_PROGRAMS)}) found "
        f"(prefer={prefer!r}; tried: {tried}). Install the 'postgresql' package "
        "or 'pip install pgserver'."
    )


# --------------------------------------------------------------------------- helpers


def _free_port(host: str) -> int:
    """A port that is free right now. Another process could take it before
    postgres binds; start() retries with a new port if that happens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _dsn_quote(value: str) -> str:
    """Quote a value for a libpq keyword/value connection string."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _clean_env(**extra: str) -> dict[str, str]:
    """Environment for PostgreSQL programs: no PG* variables from the caller
    (PGHOST, PGSSLMODE, PGSERVICE... would redirect or change connections)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    env.update(extra)
    return env


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    try:
        import grp

        grp.getgrnam(name)
        group_args = ["--gid", name]
    except KeyError:
        group_args = ["--user-group"]
    cmd = [useradd, "--system", *group_args, "--no-create-home",
           "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise PostgresSetupError(
            f"running as root, PostgreSQL needs an unprivileged OS user {name!r}, "
            f"and creating it failed: {' '.join(cmd)}: {detail.strip()}"
        ) from exc
    return pwd.getpwnam(name)


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach *path* (every ancestor o+x)."""
    for p in [path, *path.parents]:
        try:
            if not p.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _relocate_pgserver(bindir: Path) -> Path:
    """Copy pgserver's bundled install where the ``postgres`` user can run it.

    When root runs the tests, pgserver usually lives under /root (mode 0700),
    which the unprivileged server user cannot enter. Its binaries find their
    libraries via RPATH ``$ORIGIN/../../../pgserver.libs`` and their share dir
    relative to bin/, so the copy keeps the site-packages layout:
    ``<cache>/pgserver/pginstall`` next to ``<cache>/pgserver.libs``.
    """
    install = bindir.parent  # .../pgserver/pginstall
    site = install.parent.parent
    version = _server_version(bindir).split()[-1]
    target = Path("/tmp") / f"pgwarden-pgserver-{version}-{os.getuid()}"
    new_bindir = target / "pgserver" / "pginstall" / "bin"
    if target.is_dir() and target.stat().st_uid == os.getuid() and _has_server(new_bindir):
        return new_bindir
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir="/tmp"))
    try:
        shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
        libs = site / "pgserver.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        for root, dirs, _files in os.walk(staging):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(staging, 0o755)
        os.chmod(staging / "pgserver", 0o755)
        try:
            os.rename(staging, target)  # atomic; loses harmlessly to a concurrent copy
        except OSError:
            pass
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if not _has_server(new_bindir):
        raise PostgresSetupError(f"could not prepare a copy of pgserver's binaries in {target}")
    return new_bindir


# --------------------------------------------------------------------------- server


class TestPostgres:
    """A temporary PostgreSQL cluster on 127.0.0.1 with the test roles.

    ``start()`` (or ``with TestPostgres() as pg:``) initialises and starts it;
    ``stop()`` shuts it down and deletes everything. Roles, all able to log in
    to ``postgres`` and ``appdb`` over TCP:

    ============  ===========================  ==================================
    role          stored password              pg_hba.conf method (TCP)
    ============  ===========================  ==================================
    postgres      SCRAM (superuser)            scram-sha-256
    app           SCRAM, owns ``appdb``        scram-sha-256
    md5user       MD5                          md5
    clearuser     SCRAM                        password (cleartext on the wire)
    trustuser     none                         trust
    ============  ===========================  ==================================

    Unix-socket connections (in :attr:`socket_dir`) are ``trust`` for everyone;
    :meth:`psql` uses them so setup never depends on the auth being tested.
    """

    __test__ = False  # the name starts with "Test"; keep pytest from collecting it

    host: str = "127.0.0.1"
    #: Database created for the tests, owned by ``app``.
    app_database: str = "appdb"

    def __init__(self, *, bindir: str | os.PathLike[str] | None = None) -> None:
        """*bindir* overrides binary discovery (see :func:`find_pg_binaries`)."""
        self._prefer = str(bindir) if bindir is not None else None
        self.binaries: PgBinaries | None = None
        self.port: int = 0
        self.base_dir: Path | None = None
        self.passwords: dict[str, str] = {}
        self.ssl: bool = False
        self.ca_cert_path: Path | None = None
        self.server_cert_path: Path | None = None
        self.server_key_path: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._started = False
        self._stopped = False

    # ------------------------------------------------------------- attributes

    @property
    def bindir(self) -> Path:
        """Directory of the server programs actually used."""
        return self._require_binaries().bindir

    @property
    def bindir_source(self) -> str:
        """How the binaries were found: pg_config, debian, path, env or pgserver."""
        return self._require_binaries().source

    @property
    def version(self) -> str:
        return self._require_binaries().version

    @property
    def socket_dir(self) -> Path:
        return self._require_base()

    @property
    def datadir(self) -> Path:
        return self._require_base() / "data"

    @property
    def logfile(self) -> Path:
        return self._require_base() / "postgres.log"

    @property
    def superuser_password(self) -> str:
        return self.passwords["postgres"]

    @property
    def running_as(self) -> str:
        """OS user the server processes run as."""
        return self._run_as.pw_name if self._run_as else pwd.getpwuid(os.getuid()).pw_name

    def dsn(self, user: str = "postgres", database: str = "postgres", **extra: Any) -> str:
        """libpq keyword/value string for a TCP connection as *user*.

        Includes the user's password when it has one. *extra* adds or overrides
        keywords (``sslmode="verify-full"``, ``host="localhost"``); a value of
        ``None`` removes the keyword.
        """
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": user,
            "dbname": database,
        }
        if user in self.passwords:
            params["password"] = self.passwords[user]
        params.update(extra)
        return " ".join(
            f"{k}={_dsn_quote(str(v))}" for k, v in params.items() if v is not None
        )

    def psql(
        self,
        sql: str,
        user: str = "postgres",
        database: str = "postgres",
        *,
        check: bool = True,
        args: tuple[str, ...] = (),
    ) -> str:
        """Run *sql* with psql over the Unix socket (trust auth); return stdout.

        Output is unaligned and tuples-only (``-At``), so ``psql("select 1")``
        returns ``"1"``. Stops at the first error (``ON_ERROR_STOP``) and raises
        :class:`subprocess.CalledProcessError` carrying stderr when *check*.
        """
        proc = subprocess.run(
            [str(self._psql_program()), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", database,
             *args, "-f", "-"],
            input=sql, capture_output=True, text=True, encoding="utf-8", timeout=120,
            env=_clean_env(PGCLIENTENCODING="UTF8"),
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr
            )
        return proc.stdout.strip()

    # ------------------------------------------------------------- lifecycle

    def __enter__(self) -> TestPostgres:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> TestPostgres:
        """Create, start and populate the cluster. Returns self."""
        if self._started:
            raise PostgresSetupError("this TestPostgres was already started")
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Fast shutdown and removal of the temporary directory. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        base = self.base_dir
        if base is None:
            return
        if (self.datadir / "postmaster.pid").exists():
            try:
                self._run(["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30",
                           "-s", "stop"], "pg_ctl stop")
            except (PostgresSetupError, OSError):
                self._kill_postmaster()
        if os.environ.get(KEEP_ENV) == "1":
            return
        shutil.rmtree(base, ignore_errors=True)

    def stop_server(self) -> None:
        """Shut the server down (fast) but keep its data; :meth:`start_server` brings
        it back on the same port. For tests of clients whose server goes away."""
        self._run(["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30", "-s", "stop"],
                  "pg_ctl stop")

    def start_server(self) -> None:
        """Start a server stopped with :meth:`stop_server` again."""
        self._run(["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", str(_STARTUP_TIMEOUT),
                   "-s", "start"], "pg_ctl start")

    # ------------------------------------------------------------- internals

    def _require_binaries(self) -> PgBinaries:
        if self.binaries is None:
            self.binaries = find_pg_binaries(self._prefer)
        return self.binaries

    def _require_base(self) -> Path:
        if self.base_dir is None:
            raise PostgresSetupError("TestPostgres is not started")
        return self.base_dir

    def _psql_program(self) -> Path:
        candidate = self.bindir / "psql"
        if os.access(candidate, os.X_OK):
            return candidate
        found = shutil.which("psql")
        if not found:
            raise PostgresSetupError(f"psql not found in {self.bindir} or on PATH")
        return Path(found)

    def _run(self, argv: list[str], what: str, timeout: float = _STARTUP_TIMEOUT) -> str:
        """Run a server program from bindir as the server's OS user."""
        argv = [str(self.bindir / argv[0]), *argv[1:]]
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        # Output goes to a temporary file, not a pipe: `pg_ctl start` leaves the
        # postmaster holding its stdout, and reading a pipe would wait forever.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    cwd=self.base_dir, env=_clean_env(HOME=str(self.base_dir)), text=True,
                    timeout=timeout, **kwargs,
                )
            except subprocess.TimeoutExpired as exc:
                out.seek(0)
                raise PostgresSetupError(
                    f"{what} timed out after {timeout}s: {' '.join(argv)}\n{out.read()}"
                ) from exc
            out.seek(0)
            output = out.read()
        if proc.returncode != 0:
            raise PostgresSetupError(
                f"{what} failed (exit {proc.returncode}): {' '.join(argv)}\n{output.strip()}"
            )
        return output

    def _kill_postmaster(self) -> None:
        """Last resort when pg_ctl stop fails: immediate shutdown via SIGQUIT."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
        except (OSError, ValueError, IndexError):
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.05)

    def _start(self) -> None:
        binaries = self._require_binaries()
        if os.geteuid() == 0:
            self._run_as = _ensure_os_user(SERVICE_USER)
            if not _reachable_by_others(binaries.bindir):
                if binaries.source != "pgserver":
                    raise PostgresSetupError(
                        f"the {SERVICE_USER!r} user cannot reach {binaries.bindir}"
                    )
                self.binaries = PgBinaries(
                    _relocate_pgserver(binaries.bindir), binaries.source, binaries.version
                )
        self.ssl = self._supports_ssl()

        # Under /tmp, not $TMPDIR: the server user must traverse every parent,
        # and the Unix socket path must stay short (~107 bytes max).
        tmp_root = "/tmp" if os.access("/tmp", os.W_OK) else None
        base = Path(tempfile.mkdtemp(prefix="pgwarden-pg-", dir=tmp_root))
        self.base_dir = base
        os.chmod(base, 0o755)

        for name in ("postgres", "app", "md5user", "clearuser"):
            self.passwords[name] = secrets.token_urlsafe(18)

        tls = write_ca_signed(base / "tls", ["localhost", "127.0.0.1"])
        self.ca_cert_path = tls["ca_cert"]
        self.server_cert_path = tls["cert"]
        self.server_key_path = tls["key"]

        pwfile = base / "pwfile"
        pwfile.write_text(self.passwords["postgres"] + "\n")
        os.chmod(pwfile, 0o600)
        if self._run_as is not None:
            for root, dirs, files in os.walk(base):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, self._run_as.pw_uid, self._run_as.pw_gid)

        try:
            self._run(
                ["initdb", "-D", str(self.datadir), "-U", "postgres", "--encoding=UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                 f"--pwfile={pwfile}", "--no-sync"],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)

        conf = self.datadir / "postgresql.conf"
        initdb_conf = conf.read_text()
        (self.datadir / "pg_hba.conf").write_text(self._hba_conf())

        for attempt in range(3):
            self.port = _free_port(self.host)
            conf.write_text(initdb_conf + self._server_conf())
            self.logfile.unlink(missing_ok=True)
            try:
                self._run(["pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile),
                           "-w", "-t", str(_STARTUP_TIMEOUT), "-s", "start"], "pg_ctl start")
                break
            except PostgresSetupError as exc:
                log = _tail(self.logfile)
                # Someone took the port between _free_port() and bind(): try another.
                if "already in use" in log and attempt < 2:
                    continue
                raise PostgresSetupError(
                    f"PostgreSQL did not start ({self.bindir_source}: {self.version}).\n"
                    f"{exc}\n--- {self.logfile} (tail) ---\n{log}"
                ) from exc

        try:
            self.psql(self._setup_sql())
        except subprocess.CalledProcessError as exc:
            raise PostgresSetupError(
                f"creating test roles failed: {exc.stderr.strip()}\n"
                f"--- {self.logfile} (tail) ---\n{_tail(self.logfile)}"
            ) from exc

    def _supports_ssl(self) -> bool:
        """pgserver's build lacks OpenSSL; ssl=on would stop the server starting."""
        pg_config = self.bindir / "pg_config"
        if not os.access(pg_config, os.X_OK):
            return True  # assume a normal distribution build
        try:
            configure = subprocess.run(
                [str(pg_config), "--configure"], capture_output=True, text=True,
                timeout=30, stdin=subprocess.DEVNULL,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return True
        return "--with-openssl" in configure or "--with-ssl=openssl" in configure

    def _server_conf(self) -> str:
        settings: dict[str, str] = {
            "listen_addresses": _conf_quote(self.host),
            "port": str(self.port),
            "unix_socket_directories": _conf_quote(str(self.socket_dir)),
            "password_encryption": "'scram-sha-256'",
            "max_connections": "100",
            "shared_buffers": "'64MB'",
            # Durability is worthless for a cluster deleted at the end of the run.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",  # pg_ctl -l already writes the log file
            "ssl": "on" if self.ssl else "off",
        }
        if self.ssl:
            settings["ssl_cert_file"] = _conf_quote(str(self.server_cert_path))
            settings["ssl_key_file"] = _conf_quote(str(self.server_key_path))
        lines = "\n".join(f"{k} = {v}" for k, v in settings.items())
        return f"\n# ---- pgwarden TestPostgres ----\n{lines}\n"

    @staticmethod
    def _hba_conf() -> str:
        lines = ["# pgwarden TestPostgres: method per role over TCP; socket is trust",
                 "local all all trust"]
        for address in ("127.0.0.1/32", "::1/128"):
            for role, method in HBA_METHODS.items():
                lines.append(f"host all {role} {address} {method}")
            lines.append(f"host all all {address} scram-sha-256")
        return "\n".join(lines) + "\n"

    def _setup_sql(self) -> str:
        pw = {k: _sql_literal(v) for k, v in self.passwords.items()}
        db = _sql_ident(self.app_database)
        return f"""
ALTER ROLE postgres PASSWORD {pw['postgres']};
CREATE ROLE app LOGIN PASSWORD {pw['app']};
CREATE ROLE md5user LOGIN;
SET password_encryption = 'md5';
ALTER ROLE md5user PASSWORD {pw['md5user']};
RESET password_encryption;
CREATE ROLE clearuser LOGIN PASSWORD {pw['clearuser']};
CREATE ROLE trustuser LOGIN;
CREATE DATABASE {db} OWNER app;
GRANT CONNECT ON DATABASE {db} TO PUBLIC;
"""

    def __repr__(self) -> str:
        state = "running" if self._started and not self._stopped else "stopped"
        where = f"{self.host}:{self.port}" if self.port else "-"
        return f"<TestPostgres {state} {where} bindir={self.binaries and self.binaries.bindir}>"
