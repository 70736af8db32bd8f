#!/usr/bin/env python3
"""Compare pgwarden's pass-through cost with a direct connection, pgbouncer and a bare forwarder.

    python bench/pgbench_compare.py [--duration S] [--rounds N] [--quick]

What it does, start to finish:

1. Starts a throwaway PostgreSQL (:class:`pgwarden.testing.postgres.TestPostgres`:
   ``fsync=off``, ``synchronous_commit=off``; this script raises
   ``max_connections`` and ``shared_buffers``) and loads pgbench data into
   ``appdb`` as the ``app`` role (``pgbench -i -s SCALE``).
2. Starts pgbouncer (session pooling, SCRAM to the client and to PostgreSQL,
   plain-text password in its userlist), ``pgwarden serve`` (TLS disabled,
   statement logging off, log level warning) and ``bench/forwarder.py`` (the
   reference path: a bare Python/uvloop TCP byte forwarder, no protocol
   parsing; the floor for any Python proxy here), each on a free port on
   127.0.0.1. Nothing uses TLS: the client side is ``sslmode=disable`` on every
   path and every proxy reaches PostgreSQL without TLS.
3. For each round, for each (protocol, clients) case, runs ``pgbench -n -S``
   against direct, pgbouncer, pgwarden and forwarder in an order that rotates
   with the round and the case, so slow drift on a shared machine does not
   always hit the same path. Then reads a large result (default 1,000,000 rows,
   five times on one connection) through each path, again in rotated order.
4. Reports medians over the rounds: TPS, mean latency, the ratios
   pgwarden/direct, pgwarden/pgbouncer and pgwarden/forwarder (pgwarden's own
   overhead), the latency each proxy adds over a direct connection, the CPU
   each proxy process used, and rows/s. Prints a
   plain table and a Markdown block for docs/benchmarks.md, and writes
   everything (every single run too) to ``bench/results/<timestamp>.json``.

Every server it started is stopped and every temporary directory removed on
exit, including Ctrl-C, SIGTERM and errors (``--keep`` keeps the temporary
directory with the configs and logs).

Runs as root too: PostgreSQL and pgbouncer refuse root, so both run as the
``postgres`` OS user. When pgbouncer is missing and we are root, it is
installed with apt-get without starting the Debian service.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing

PATHS = ("direct", "pgbouncer", "pgwarden", "forwarder")
PROXIES = ("pgbouncer", "pgwarden", "forwarder")  # the paths with a process of their own
FORWARDER = Path(__file__).resolve().parent / "forwarder.py"
DB = "appdb"          # database name on every path (pgwarden's target has the same name)
ROLE = "app"          # PostgreSQL role; pgwarden's static user has the same name and password
# The large read. "table" (default) reads pgbench_accounts, which sits in
# shared_buffers, so PostgreSQL produces the ~100-byte rows cheaply and the
# path's throughput shows. "series" is generate_series + md5: PostgreSQL spends
# most of the time in md5(), which hides what the path costs.
ROWS_QUERIES = {
    "table": "select aid, bid, abalance, filler from pgbench_accounts limit {n}",
    "series": "select g, md5(g::text) from generate_series(1, {n}) g",
}

# Added to TestPostgres's postgresql.conf (later lines win).
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "'256MB'",   # scale 10 (~150 MB) stays in shared buffers
    "max_wal_size": "'2GB'",
    "log_min_messages": "warning",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without PG* variables (PGHOST, PGSSLMODE... would change connections)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    env.update(extra)
    return env


def client_env(password: str) -> dict[str, str]:
    return clean_env(PGPASSWORD=password, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10", PGGSSENCMODE="disable")


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def wait_for_port(port: int, proc: subprocess.Popen, what: str, logfile: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}\n--- {logfile} ---\n{tail(logfile)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within {timeout}s\n--- {logfile} ---\n{tail(logfile)}")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal one process we started (by its pid), wait, and kill it if it does not exit."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process, from /proc/<pid>/stat."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_text(argv: list[str], timeout: float = 30) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


# --------------------------------------------------------------------------- pgbouncer install


def ensure_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or (Path("/usr/sbin/pgbouncer").is_file() and "/usr/sbin/pgbouncer")
    if found:
        return str(found)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(
            "pgbouncer is not installed (apt-get install pgbouncer), "
            "or leave it out with --paths direct,pgwarden,forwarder"
        )
    log("pgbouncer is missing: installing it with apt-get (the Debian service is not started)")
    # invoke-rc.d asks /usr/sbin/policy-rc.d whether it may start services; exit 101 means no.
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\n# temporary, written by pgwarden bench/pgbench_compare.py\nexit 101\n")
        policy.chmod(0o755)
        created = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "pgbouncer"],
                       check=True, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BenchError(f"installing pgbouncer failed: {exc}") from exc
    finally:
        if created:
            policy.unlink(missing_ok=True)
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.access(found, os.X_OK):
        raise BenchError("pgbouncer still not found after apt-get install")
    return found


# --------------------------------------------------------------------------- servers


def make_postgres_class():
    from pgwarden.testing.postgres import TestPostgres

    class BenchPostgres(TestPostgres):
        """TestPostgres with more connections and a cache big enough for the data."""

        __test__ = False

        def _server_conf(self) -> str:  # TestPostgres's hook for postgresql.conf
            extra = "\n".join(f"{k} = {v}" for k, v in PG_SETTINGS.items())
            return super()._server_conf() + "# ---- bench/pgbench_compare.py ----\n" + extra + "\n"

    return BenchPostgres


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen
    logfile: Path


def service_user() -> pwd.struct_passwd | None:
    """The unprivileged user servers run as when we are root (TestPostgres creates it)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam("postgres")


def start_pgbouncer(binary: str, workdir: Path, pg, password: str, pool_size: int) -> Proxy:
    port = free_port()
    # pgbouncer runs as the postgres user: it must be able to enter workdir.
    os.chmod(workdir, workdir.stat().st_mode | 0o011)
    bdir = workdir / "pgbouncer"
    bdir.mkdir(mode=0o700)
    (bdir / "userlist.txt").write_text(f'"{ROLE}" "{password}"\n')
    ini = f"""\
[databases]
{DB} = host={pg.host} port={pg.port} dbname={DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {bdir / 'userlist.txt'}
pool_mode = session
default_pool_size = {pool_size}
max_client_conn = {max(200, pool_size * 4)}
max_db_connections = 0
client_tls_sslmode = disable
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
"""
    (bdir / "pgbouncer.ini").write_text(ini)
    user = service_user()
    kwargs: dict[str, Any] = {}
    if user is not None:
        for p in [bdir, *bdir.iterdir()]:
            os.chown(p, user.pw_uid, user.pw_gid)
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    logfile = workdir / "pgbouncer.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [binary, str(bdir / "pgbouncer.ini")], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            cwd=bdir, env=clean_env(HOME=str(bdir)), start_new_session=True, **kwargs,
        )
    proxy = Proxy("pgbouncer", port, proc, logfile)
    wait_for_port(port, proc, "pgbouncer", logfile)
    return proxy


def init_pgbench(pgbench: str, pg, scale: int = 1) -> None:
    """``pgbench -i -s SCALE`` into the bench database, as the bench role."""
    init = subprocess.run([pgbench, "-i", "-q", "-s", str(scale), "-h", str(pg.socket_dir), "-p", str(pg.port),
                           "-U", ROLE, DB], capture_output=True, text=True, env=clean_env(), timeout=600)
    if init.returncode != 0:
        raise BenchError(init.stderr)


def gateway_config(pg, password: str, port: int, data_dir: Path) -> dict[str, Any]:
    """The config the scenario benchmarks start from: the bench user (same name and password as
    the PostgreSQL role) on the bench database, no TLS, recording into ``data_dir``, no statement log."""
    from pgwarden.session.scram import make_verifier

    return {
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"mode": "disable"}, "shutdown_grace": 2},
        "logging": {"level": "warning", "statements": False},
        "targets": {DB: {"host": pg.host, "port": pg.port, "database": DB, "user": ROLE, "password": password,
                         "sslmode": "disable"}},
        "users": [{"name": ROLE, "scram_verifier": make_verifier(password)}],
        "data_dir": str(data_dir),
    }


def serve(workdir: Path, config: dict[str, Any], name: str = "pgwarden") -> Proxy:
    """``pgwarden serve`` with ``config`` (written to ``workdir``), in its own process; returns once it listens."""
    import yaml

    cfg = workdir / "pgwarden.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg.chmod(0o600)
    logfile = workdir / "pgwarden.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgwarden", "serve", "--config", str(cfg)], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO, env=clean_env(PYTHONPATH=str(REPO)), start_new_session=True,
        )
    port = config["listen"]["port"]
    proxy = Proxy(name, port, proc, logfile)
    wait_for_port(port, proc, name, logfile)
    return proxy


def start_pgwarden(workdir: Path, pg, password: str, use_uvloop: bool, guardrails: bool = True, audit: bool = True) -> Proxy:
    import yaml

    from pgwarden.session.scram import make_verifier

    port = free_port()
    config = {
        "listen": {
            "host": "127.0.0.1",
            "port": port,
            "tls": {"mode": "disable"},
            "max_connections": 1000,
            "shutdown_grace": 2,
        },
        # Statement logging off: this measures the pass-through path, not the log.
        "logging": {"level": "warning", "format": "text", "statements": False},
        "targets": {
            DB: {
                "host": pg.host,
                "port": pg.port,
                "database": DB,
                "user": ROLE,
                "password": password,
                "sslmode": "disable",
            }
        },
        # Same name and password as the PostgreSQL role, so every path takes the same pgbench command.
        "users": [{"name": ROLE, "scram_verifier": make_verifier(password), "targets": [DB]}],
    }
    if guardrails:
        # As the Guardrails issue measures it: both built-in packs on for the bench user.
        config["guardrails"] = {"packs": ["dangerous", "read-only"]}
    else:
        # --guardrails off: the core alone (empty pipeline), to see what the stages cost on top.
        config["guardrails"] = {"enabled": False}
    if audit:
        # Session recording on, as issue 5 measures it: the SQLite trail in the data dir, results capped.
        config["data_dir"] = str(workdir / "pgwarden-data")
    else:
        config["audit"] = {"enabled": False}
    cfg_path = workdir / "pgwarden.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg_path.chmod(0o600)
    if use_uvloop:
        argv = [sys.executable, "-m", "pgwarden", "serve", "--config", str(cfg_path)]
    else:
        # Same CLI, with uvloop made unimportable so install_uvloop() falls back to asyncio.
        stub = ("import sys; sys.modules['uvloop'] = None; sys.argv = ['pgwarden'] + sys.argv[1:]; "
                "from pgwarden.cli.main import main; main()")
        argv = [sys.executable, "-c", stub, "serve", "--config", str(cfg_path)]
    logfile = workdir / "pgwarden.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env=clean_env(PYTHONPATH=str(REPO)), start_new_session=True,
        )
    proxy = Proxy("pgwarden", port, proc, logfile)
    wait_for_port(port, proc, "pgwarden", logfile)
    return proxy


def start_forwarder(workdir: Path, pg, use_uvloop: bool) -> Proxy:
    """bench/forwarder.py: bytes only, no parsing; the client logs in to PostgreSQL itself (SCRAM)."""
    port = free_port()
    argv = [sys.executable, str(FORWARDER), str(pg.host), str(pg.port), str(port)]
    if not use_uvloop:
        argv.append("--no-uvloop")  # same event loop as pgwarden in this run
    logfile = workdir / "forwarder.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env=clean_env(), start_new_session=True,
        )
    proxy = Proxy("forwarder", port, proc, logfile)
    wait_for_port(port, proc, "forwarder", logfile)
    return proxy


def check_path(name: str, port: int, password: str) -> dict[str, Any]:
    """Log in through one path and confirm the data is there and nothing uses TLS."""
    import psycopg

    dsn = f"host=127.0.0.1 port={port} user={ROLE} dbname={DB} sslmode=disable connect_timeout=10"
    try:
        with psycopg.connect(dsn, password=password, autocommit=True) as conn:
            accounts = conn.execute("select count(*) from pgbench_accounts").fetchone()[0]
            upstream_ssl = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]
    except psycopg.Error as exc:
        raise BenchError(f"cannot query through {name} (port {port}): {exc}") from exc
    if upstream_ssl:
        raise BenchError(f"{name}: the connection to PostgreSQL uses TLS; this benchmark compares plaintext paths")
    return {"accounts": accounts, "upstream_ssl": upstream_ssl}


# --------------------------------------------------------------------------- measurements

_TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_LAT_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)
_FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
_XACTS_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_CONN_RE = re.compile(r"^initial connection time = ([0-9.]+) ms", re.M)


def parse_pgbench(output: str) -> dict[str, Any]:
    tps, lat = _TPS_RE.search(output), _LAT_RE.search(output)
    if not tps or not lat:
        raise BenchError(f"could not parse pgbench output:\n{output}")
    failed, xacts, conn = _FAILED_RE.search(output), _XACTS_RE.search(output), _CONN_RE.search(output)
    return {
        "tps": float(tps.group(1)),
        "latency_ms": float(lat.group(1)),
        "failed": int(failed.group(1)) if failed else 0,
        "transactions": int(xacts.group(1)) if xacts else None,
        "connect_ms": float(conn.group(1)) if conn else None,
    }


def run_pgbench(pgbench: str, port: int, password: str, mode: str, clients: int, jobs: int,
                duration: int, proxy_pid: int | None) -> dict[str, Any]:
    argv = [pgbench, "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(jobs), "-T", str(duration),
            "-h", "127.0.0.1", "-p", str(port), "-U", ROLE, DB]
    cpu0 = cpu_seconds(proxy_pid) if proxy_pid else None
    t0 = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=client_env(password),
                              timeout=duration + 120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"pgbench did not finish: {shlex.join(argv)}") from exc
    wall = time.monotonic() - t0
    cpu1 = cpu_seconds(proxy_pid) if proxy_pid else None
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed (exit {proc.returncode}): {shlex.join(argv)}\n{proc.stdout}\n{proc.stderr}")
    result = parse_pgbench(proc.stdout)
    result["wall_s"] = round(wall, 3)
    if cpu0 is not None and cpu1 is not None:
        result["proxy_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
        if result["transactions"]:
            # Includes pgbench's logins, which are a few out of tens of thousands of transactions.
            result["proxy_cpu_us_per_txn"] = round(1e6 * (cpu1 - cpu0) / result["transactions"], 2)
    if result["failed"]:
        raise BenchError(f"pgbench reported {result['failed']} failed transactions: {shlex.join(argv)}\n{proc.stdout}")
    return result


def rows_worker(port: int, query: str, rows: int, reps: int) -> None:
    """Child process: time *reps* reads of the big result on one warm connection; print JSON."""
    import psycopg

    password = os.environ.pop("BENCH_PASSWORD")
    dsn = f"host=127.0.0.1 port={port} user={ROLE} dbname={DB} sslmode=disable connect_timeout=10"
    times = []
    with psycopg.connect(dsn, password=password, autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("select 1")
        for _ in range(reps):
            t0 = time.perf_counter()
            # libpq (psycopg's C build) receives and parses the whole result; the
            # rows are never turned into Python objects, so Python is not the bottleneck.
            cur.execute(query)
            times.append(time.perf_counter() - t0)
            if cur.rowcount != rows:
                raise SystemExit(f"expected {rows} rows, got {cur.rowcount}")
    print(json.dumps({"rows": rows, "seconds": statistics.median(times), "all_seconds": times}))


def run_rows(port: int, password: str, query: str, rows: int, reps: int, proxy_pid: int | None) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--rows-worker", str(port), "--rows", str(rows),
            "--rows-reps", str(reps), "--rows-query", query]
    cpu0 = cpu_seconds(proxy_pid) if proxy_pid else None
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env=clean_env(BENCH_PASSWORD=password, PYTHONPATH=str(REPO)))
    cpu1 = cpu_seconds(proxy_pid) if proxy_pid else None
    if proc.returncode != 0:
        raise BenchError(f"row read through port {port} failed:\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["rows_per_s"] = data["rows"] / data["seconds"]
    if cpu0 is not None and cpu1 is not None:
        # Includes the login and "select 1"; both are tiny next to the reads.
        data["proxy_cpu_s_per_read"] = round((cpu1 - cpu0) / reps, 3)
    return data


# --------------------------------------------------------------------------- machine


def machine_info(pg, pgbouncer: str | None, pgbench: str, use_uvloop: bool) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    import pgwarden

    uv = "off"
    if use_uvloop:
        try:
            import uvloop

            uv = f"on (uvloop {uvloop.__version__})"
        except ImportError:
            uv = "off (uvloop not installed)"
    commit = run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if re.fullmatch(r"[0-9a-f]{4,40}", commit):
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "pgwarden"],
                               env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"), capture_output=True).returncode
        commit += " (pgwarden/ modified)" if dirty else ""
    else:
        commit = "unknown"
    try:
        import psycopg

        psycopg_v = f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version() // 10000}.{psycopg.pq.version() % 10000})"
    except Exception as exc:  # noqa: BLE001
        psycopg_v = f"unavailable ({exc})"
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "postgresql": pg.version,
        "pgbench": run_text([pgbench, "--version"]),
        "pgbouncer": run_text([pgbouncer, "--version"]).splitlines()[0] if pgbouncer else "not used",
        "pgwarden": f"{pgwarden.__version__} (commit {commit})",
        "uvloop": uv,
        "psycopg": psycopg_v,
        "loadavg_start": os.getloadavg(),
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


# --------------------------------------------------------------------------- reporting


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict], rows_runs: list[dict], cases: list[tuple[str, int, int]], paths: list[str]) -> dict:
    pgbench_summary = []
    for mode, clients, jobs in cases:
        entry: dict[str, Any] = {"mode": mode, "clients": clients, "jobs": jobs, "paths": {}}
        for path in paths:
            sel = [r for r in runs if r["mode"] == mode and r["clients"] == clients and r["path"] == path]
            if not sel:
                continue
            cpu = [r["proxy_cpu_pct"] for r in sel if r.get("proxy_cpu_pct") is not None]
            per_txn = [r["proxy_cpu_us_per_txn"] for r in sel if r.get("proxy_cpu_us_per_txn") is not None]
            entry["paths"][path] = {
                "tps": median([r["tps"] for r in sel]),
                "latency_ms": median([r["latency_ms"] for r in sel]),
                "proxy_cpu_pct": median(cpu),
                "proxy_cpu_us_per_txn": median(per_txn),
                "tps_min": min(r["tps"] for r in sel),
                "tps_max": max(r["tps"] for r in sel),
                "n": len(sel),
            }
        p = entry["paths"]
        for proxy in PROXIES:
            if proxy in p and "direct" in p:
                entry[f"{proxy}_over_direct"] = p[proxy]["tps"] / p["direct"]["tps"]
                entry[f"{proxy}_added_latency_us"] = (p[proxy]["latency_ms"] - p["direct"]["latency_ms"]) * 1000
        for other in ("pgbouncer", "forwarder"):
            if "pgwarden" in p and other in p:
                entry[f"pgwarden_over_{other}"] = p["pgwarden"]["tps"] / p[other]["tps"]
        if "pgwarden" in p and "forwarder" in p:
            # What pgwarden's own work (parsing, tracking, pipeline) adds on top of the bare hop.
            entry["pgwarden_over_forwarder_latency_us"] = (
                p["pgwarden"]["latency_ms"] - p["forwarder"]["latency_ms"]) * 1000
            cpu_w, cpu_f = p["pgwarden"]["proxy_cpu_us_per_txn"], p["forwarder"]["proxy_cpu_us_per_txn"]
            if cpu_w is not None and cpu_f is not None:
                entry["pgwarden_over_forwarder_cpu_us_per_txn"] = cpu_w - cpu_f
        pgbench_summary.append(entry)
    rows_summary: dict[str, Any] = {"paths": {}}
    for path in paths:
        sel = [r for r in rows_runs if r["path"] == path]
        if sel:
            cpu = [r["proxy_cpu_s_per_read"] for r in sel if r.get("proxy_cpu_s_per_read") is not None]
            rows_summary["paths"][path] = {
                "rows_per_s": median([r["rows_per_s"] for r in sel]),
                "seconds": median([r["seconds"] for r in sel]),
                "proxy_cpu_s_per_read": median(cpu),
                "n": len(sel),
            }
    rp = rows_summary["paths"]
    for proxy in PROXIES:
        if proxy in rp and "direct" in rp:
            rows_summary[f"{proxy}_over_direct"] = rp[proxy]["rows_per_s"] / rp["direct"]["rows_per_s"]
    for other in ("pgbouncer", "forwarder"):
        if "pgwarden" in rp and other in rp:
            rows_summary[f"pgwarden_over_{other}"] = rp["pgwarden"]["rows_per_s"] / rp[other]["rows_per_s"]
    return {"pgbench": pgbench_summary, "rows": rows_summary}


def _f(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


SHORT = {"direct": "direct", "pgbouncer": "pgb", "pgwarden": "pgw", "forwarder": "fwd"}


def _cell(e: dict, path: str, key: str, fmt: str) -> str:
    return _f(e["paths"].get(path, {}).get(key), fmt)


def text_report(summary: dict, paths: list[str], rows: int, query: str) -> str:
    proxies = [p for p in paths if p in PROXIES]
    both = "pgwarden" in paths and "forwarder" in paths  # pgwarden's own overhead = pgwarden - forwarder
    lines = []
    head = f"{'protocol':<9} {'-c':>3} " + " ".join(f"{p + ' TPS':>15}" for p in paths)
    head += f" {'pgw/direct':>10} {'pgw/pgb':>8} {'pgw/fwd':>8}"
    lines.append("pgbench -S, median TPS (pgbench 'without initial connection time')")
    lines.append(head)
    for e in summary["pgbench"]:
        row = f"{e['mode']:<9} {e['clients']:>3} "
        row += " ".join(f"{_cell(e, p, 'tps', ',.0f'):>15}" for p in paths)
        row += (f" {_f(e.get('pgwarden_over_direct'), '.3f'):>10} {_f(e.get('pgwarden_over_pgbouncer'), '.3f'):>8}"
                f" {_f(e.get('pgwarden_over_forwarder'), '.3f'):>8}")
        lines.append(row)
    lines.append("")
    lines.append("pgbench -S, median mean latency (ms); +µs = added over direct"
                 + ("; pgw-fwd = pgwarden minus forwarder, in µs" if both else ""))
    head = f"{'protocol':<9} {'-c':>3} " + " ".join(f"{p + ' ms':>14}" for p in paths)
    head += "".join(f" {SHORT[p] + ' +µs':>8}" for p in proxies) + (f" {'pgw-fwd µs':>10}" if both else "")
    lines.append(head)
    for e in summary["pgbench"]:
        row = f"{e['mode']:<9} {e['clients']:>3} "
        row += " ".join(f"{_cell(e, p, 'latency_ms', '.3f'):>14}" for p in paths)
        row += "".join(f" {_f(e.get(f'{p}_added_latency_us'), '.1f'):>8}" for p in proxies)
        row += f" {_f(e.get('pgwarden_over_forwarder_latency_us'), '.1f'):>10}" if both else ""
        lines.append(row)
    if proxies:
        lines.append("")
        lines.append("proxy process CPU: % of one core, and µs per transaction"
                     + ("; pgw-fwd = pgwarden's µs/tx minus forwarder's" if both else ""))
        head = f"{'protocol':<9} {'-c':>3}" + "".join(f" {SHORT[p] + ' CPU%':>8}" for p in proxies)
        head += "".join(f" {SHORT[p] + ' µs/tx':>9}" for p in proxies) + (f" {'pgw-fwd µs/tx':>13}" if both else "")
        lines.append(head)
        for e in summary["pgbench"]:
            row = f"{e['mode']:<9} {e['clients']:>3}"
            row += "".join(f" {_cell(e, p, 'proxy_cpu_pct', '.0f'):>8}" for p in proxies)
            row += "".join(f" {_cell(e, p, 'proxy_cpu_us_per_txn', '.1f'):>9}" for p in proxies)
            row += f" {_f(e.get('pgwarden_over_forwarder_cpu_us_per_txn'), '.1f'):>13}" if both else ""
            lines.append(row)
    rs = summary["rows"]
    if not rs["paths"]:
        return "\n".join(lines)
    lines.append("")
    direct = rs["paths"].get("direct", {}).get("rows_per_s")
    fwd = rs["paths"].get("forwarder", {}).get("rows_per_s")
    lines.append(f"{rows:,}-row read, median rows/s (psycopg/libpq, result buffered by libpq): {query}")
    for p in paths:
        v = rs["paths"].get(p)
        if v:
            ratios = [f"{v['rows_per_s'] / ref:.3f} × {name}" for name, ref in (("direct", direct), ("forwarder", fwd))
                      if ref]
            cpu = v.get("proxy_cpu_s_per_read")
            cpu = [f"proxy CPU {cpu:.3f} s per read"] if cpu is not None else []
            lines.append(f"  {p:<10} {v['rows_per_s']:>14,.0f} rows/s  ({v['seconds']:.3f} s)  "
                         + ", ".join(ratios + cpu))
    return "\n".join(lines)


def markdown_report(summary: dict, paths: list[str], meta: dict) -> str:
    m = meta["machine"]
    a = meta["settings"]
    proxies = [p for p in paths if p in PROXIES]
    both = "pgwarden" in paths and "forwarder" in paths
    out = []
    out.append(f"Command: `{meta['command']}`  ")
    out.append(f"Run: {meta['started']} → {meta['finished']}, {a['rounds']} round(s) of "
               f"{a['duration']} s per pgbench run, medians shown.")
    out.append("")
    out.append("| Machine | |")
    out.append("|---|---|")
    for key, label in (("cpu_model", "CPU"), ("nproc", "CPUs (nproc)"), ("memory", "Memory"),
                       ("kernel", "Kernel"), ("os", "OS"), ("python", "Python"), ("postgresql", "PostgreSQL"),
                       ("pgbench", "pgbench"), ("pgbouncer", "pgbouncer"), ("pgwarden", "pgwarden"),
                       ("uvloop", "uvloop"), ("psycopg", "psycopg (row read)")):
        out.append(f"| {label} | {m.get(key)} |")
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    if la0 and la1:
        out.append(f"| Load average (start / end) | {la0[0]:.2f} / {la1[0]:.2f} |")
    out.append("")
    prose = (f"pgbench scale {a['scale']}, `-S` (select-only), `-n`, `-j {a['threads']}` for more than one client. "
             "No TLS on any path.")
    if "pgwarden" in paths:
        prose += (f" pgwarden: guardrails stage **{a.get('pgwarden_guardrails', 'on')}**, session recording **{a.get('pgwarden_audit', 'off')}**, statement logging **off**, log level warning, "
                  f"uvloop {m.get('uvloop', '?').split(' ')[0]}, SCRAM-SHA-256 login.")
    if "pgbouncer" in paths:
        prose += (f" pgbouncer: session pooling, default_pool_size {a['pgbouncer_pool_size']}, "
                  "SCRAM-SHA-256 login.")
    if "forwarder" in paths:
        prose += (" forwarder: the reference path, `bench/forwarder.py`, a bare Python TCP byte forwarder "
                  "on the same event loop as pgwarden, no protocol parsing (the client logs in to PostgreSQL "
                  "through it); the floor for a Python proxy here, so pgwarden / forwarder is pgwarden's own "
                  "overhead.")
    out.append(prose)
    out.append("")
    cols = " | ".join(f"{p} TPS" for p in paths)
    out.append(f"| protocol | clients | {cols} | pgwarden / direct | pgwarden / pgbouncer | pgwarden / forwarder |")
    out.append("|---|---:|" + "---:|" * len(paths) + "---:|---:|---:|")
    for e in summary["pgbench"]:
        vals = " | ".join(_cell(e, p, "tps", ",.0f") for p in paths)
        out.append(f"| {e['mode']} | {e['clients']} | {vals} | {_f(e.get('pgwarden_over_direct'), '.2f')} | "
                   f"{_f(e.get('pgwarden_over_pgbouncer'), '.2f')} | {_f(e.get('pgwarden_over_forwarder'), '.2f')} |")
    out.append("")
    cols = "".join(f" {p} ms |" for p in paths) + "".join(f" {p} added µs |" for p in proxies)
    cols += " pgwarden − forwarder µs |" if both else ""
    out.append(f"| protocol | clients |{cols}")
    out.append("|---|---:|" + "---:|" * (len(paths) + len(proxies) + both))
    for e in summary["pgbench"]:
        vals = "".join(f" {_cell(e, p, 'latency_ms', '.3f')} |" for p in paths)
        vals += "".join(f" {_f(e.get(f'{p}_added_latency_us'), '.0f')} |" for p in proxies)
        vals += f" {_f(e.get('pgwarden_over_forwarder_latency_us'), '.0f')} |" if both else ""
        out.append(f"| {e['mode']} | {e['clients']} |{vals}")
    if proxies:
        out.append("")
        cols = "".join(f" {p} CPU % |" for p in proxies) + "".join(f" {p} CPU µs/txn |" for p in proxies)
        cols += " pgwarden − forwarder CPU µs/txn |" if both else ""
        out.append(f"| protocol | clients |{cols}")
        out.append("|---|---:|" + "---:|" * (2 * len(proxies) + both))
        for e in summary["pgbench"]:
            vals = "".join(f" {_cell(e, p, 'proxy_cpu_pct', '.0f')} |" for p in proxies)
            vals += "".join(f" {_cell(e, p, 'proxy_cpu_us_per_txn', '.1f')} |" for p in proxies)
            vals += f" {_f(e.get('pgwarden_over_forwarder_cpu_us_per_txn'), '.1f')} |" if both else ""
            out.append(f"| {e['mode']} | {e['clients']} |{vals}")
    rs = summary["rows"]
    if not rs["paths"]:
        return "\n".join(out)
    out.append("")
    direct = rs["paths"].get("direct", {}).get("rows_per_s")
    fwd = rs["paths"].get("forwarder", {}).get("rows_per_s")
    out.append(f"Large read: `{a['rows_query']}` with psycopg {m.get('psycopg', '')}: libpq buffers "
               "the result, rows are not turned into Python objects. "
               f"Median of {a['rows_reps']} reads per round, then of the rounds.")
    out.append("")
    out.append(f"| {a['rows']:,}-row read | rows/s | seconds | vs direct |"
               + (" vs forwarder |" if fwd else "") + " proxy CPU s per read |")
    out.append("|---|---:|---:|---:|" + ("---:|" if fwd else "") + "---:|")
    for p in paths:
        v = rs["paths"].get(p)
        if v:
            ratio = _f(v["rows_per_s"] / direct if direct else None, ".2f")
            vs_fwd = f" {_f(v['rows_per_s'] / fwd, '.2f')} |" if fwd else ""
            out.append(f"| {p} | {v['rows_per_s']:,.0f} | {v['seconds']:.3f} | {ratio} |{vs_fwd} "
                       f"{_f(v.get('proxy_cpu_s_per_read'), '.3f')} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (default 10, --quick 3)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are taken over them (default 3)")
    ap.add_argument("--quick", action="store_true", help="3 s runs and a 1 s warm-up: a smoke test, not a result")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10 = 1,000,000 accounts)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows in the large-read test (default 1,000,000; 0 skips)")
    ap.add_argument("--rows-source", choices=sorted(ROWS_QUERIES), default="table",
                    help="table: pgbench_accounts (default; needs scale >= rows/100000); "
                         "series: generate_series + md5 (server-bound)")
    ap.add_argument("--rows-reps", type=int, default=5, help="timed reads per path per round (default 5)")
    ap.add_argument("--rows-query", help=argparse.SUPPRESS)
    ap.add_argument("--clients", default="1,8", help="comma-separated pgbench client counts (default 1,8)")
    ap.add_argument("--threads", type=int, default=2, help="pgbench -j for multi-client runs (default 2; -c 1 uses 1)")
    ap.add_argument("--modes", default="simple,prepared", help="pgbench -M protocols (default simple,prepared)")
    ap.add_argument("--paths", default=",".join(PATHS), help="which of direct,pgbouncer,pgwarden,forwarder to run (default all)")
    ap.add_argument("--warmup", type=int, help="seconds of untimed pgbench (largest -c, prepared) per path first (default 3, --quick 1)")
    ap.add_argument("--pool-size", type=int, default=20, help="pgbouncer default_pool_size (default 20)")
    ap.add_argument("--no-uvloop", action="store_true",
                    help="run pgwarden and the forwarder on the standard asyncio loop")
    ap.add_argument("--guardrails", choices=("on", "off"), default="on",
                    help="pgwarden's guardrails stage (default on, with the dangerous and read-only packs; "
                         "off measures the core alone)")
    ap.add_argument("--audit", choices=("on", "off"), default="on",
                    help="pgwarden's session recording (default on: SQLite trail, results capped; off = no trail)")
    ap.add_argument("--output", type=Path, help="JSON file (default bench/results/<timestamp>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    ap.add_argument("--rows-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 3
    if args.rounds < 1 or args.duration < 1:
        ap.error("--rounds and --duration must be at least 1")
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    bad = [p for p in args.paths if p not in PATHS]
    if bad or not args.paths:
        ap.error(f"--paths: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(PATHS)}")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in ("simple", "extended", "prepared") for m in args.modes):
        ap.error("--modes: choose from simple, extended, prepared")
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.rows_worker is None and args.rows_source == "table" and args.rows > args.scale * 100_000:
        ap.error(f"--rows {args.rows} needs --scale {-(-args.rows // 100_000)} or more with --rows-source table")
    if args.rows_reps < 1:
        ap.error("--rows-reps must be at least 1")
    if args.pool_size < max(args.clients):
        ap.error("--pool-size must be at least the largest client count (session pooling)")
    return args


def estimate_seconds(args: argparse.Namespace, cases: list) -> float:
    per_round = len(cases) * len(args.paths) * (args.duration + 0.1)
    per_read = 0.3 if args.rows_source == "table" else 0.8
    per_round += len(args.paths) * (1.0 + per_read * args.rows_reps * args.rows / 1e6) if args.rows else 0
    setup = 8 + args.scale * 0.1  # initdb + pgbench -i (about 1 s at scale 10 on a fast disk)
    return setup + len(args.paths) * (args.warmup + 0.2) + args.rounds * per_round


def _raise_interrupt(signum, frame):  # SIGTERM/SIGHUP behave like Ctrl-C: clean up, then exit
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.rows_worker is not None:
        rows_worker(args.rows_worker, args.rows_query, args.rows, args.rows_reps)
        return 0
    # SIGINT explicitly too: a shell starting us in the background may have set it to "ignore".
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    pgbench = shutil.which("pgbench")
    if pgbench is None:
        from pgwarden.testing.postgres import find_pg_binaries

        candidate = find_pg_binaries().bindir / "pgbench"
        if not os.access(candidate, os.X_OK):
            raise BenchError("pgbench not found (apt-get install postgresql-client or postgresql-contrib)")
        pgbench = str(candidate)
    pgbouncer_bin = ensure_pgbouncer() if "pgbouncer" in args.paths else None

    cases = [(mode, c, 1 if c == 1 else min(c, args.threads)) for mode in args.modes for c in args.clients]
    rows_query = ROWS_QUERIES[args.rows_source].format(n=args.rows)
    command = shlex.join(["python", "bench/pgbench_compare.py", *(sys.argv[1:] if argv is None else argv)])
    started = _dt.datetime.now().astimezone()
    log(f"{command}: {len(cases)} case(s) × {len(args.paths)} path(s) × {args.rounds} round(s) of "
        f"{args.duration} s; expect about {estimate_seconds(args, cases) / 60:.1f} min")

    runs: list[dict] = []
    rows_runs: list[dict] = []
    meta: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-bench-", dir="/tmp"))
    os.chmod(workdir, 0o711)  # pgbouncer (as postgres) must reach its own subdirectory
    proxies: dict[str, Proxy] = {}
    pg = None
    ok = False
    try:
        BenchPostgres = make_postgres_class()
        log("starting PostgreSQL")
        pg = BenchPostgres().start()
        password = pg.passwords[ROLE]
        max_conn = pg.psql("show max_connections")
        log(f"{pg.version} on port {pg.port} (max_connections={max_conn})")

        log(f"pgbench -i -s {args.scale} into {DB} as {ROLE}")
        t0 = time.monotonic()
        init = subprocess.run(
            [pgbench, "-i", "-q", "-s", str(args.scale), "-h", str(pg.socket_dir), "-p", str(pg.port), "-U", ROLE, DB],
            capture_output=True, text=True, env=clean_env(), timeout=1800, stdin=subprocess.DEVNULL,
        )
        if init.returncode != 0:
            raise BenchError(f"pgbench -i failed:\n{init.stdout}\n{init.stderr}")
        pg.psql("checkpoint")
        log(f"loaded in {time.monotonic() - t0:.1f} s")

        ports = {"direct": pg.port}
        if "pgbouncer" in args.paths:
            proxies["pgbouncer"] = start_pgbouncer(pgbouncer_bin, workdir, pg, password, args.pool_size)
            ports["pgbouncer"] = proxies["pgbouncer"].port
        if "pgwarden" in args.paths:
            proxies["pgwarden"] = start_pgwarden(workdir, pg, password, not args.no_uvloop, args.guardrails == "on",
                                                args.audit == "on")
            ports["pgwarden"] = proxies["pgwarden"].port
        if "forwarder" in args.paths:
            proxies["forwarder"] = start_forwarder(workdir, pg, not args.no_uvloop)
            ports["forwarder"] = proxies["forwarder"].port
        for path in args.paths:
            info = check_path(path, ports[path], password)
            log(f"{path:<9} port {ports[path]}: ok ({info['accounts']:,} accounts, no TLS)")

        meta["machine"] = machine_info(pg, pgbouncer_bin, pgbench, not args.no_uvloop)

        def proxy_pid(path: str) -> int | None:
            return proxies[path].proc.pid if path in proxies else None

        if args.warmup:
            for path in args.paths:
                c = max(args.clients)
                run_pgbench(pgbench, ports[path], password, "prepared", c, min(c, args.threads) if c > 1 else 1,
                            args.warmup, None)
            log(f"warm-up done ({args.warmup} s per path)")

        for rnd in range(args.rounds):
            for i, (mode, clients, jobs) in enumerate(cases):
                k = (rnd + i) % len(args.paths)
                order = args.paths[k:] + args.paths[:k]
                parts = []
                for path in order:
                    r = run_pgbench(pgbench, ports[path], password, mode, clients, jobs, args.duration,
                                    proxy_pid(path))
                    r.update(round=rnd + 1, path=path, mode=mode, clients=clients, jobs=jobs)
                    runs.append(r)
                    parts.append(f"{path} {r['tps']:,.0f}")
                log(f"round {rnd + 1}/{args.rounds} {mode:<8} -c {clients}: " + ", ".join(parts) + " tps")
            if args.rows:
                k = rnd % len(args.paths)
                parts = []
                for path in args.paths[k:] + args.paths[:k]:
                    r = run_rows(ports[path], password, rows_query, args.rows, args.rows_reps, proxy_pid(path))
                    r.update(round=rnd + 1, path=path)
                    rows_runs.append(r)
                    parts.append(f"{path} {r['rows_per_s']:,.0f}")
                log(f"round {rnd + 1}/{args.rounds} {args.rows:,}-row read: " + ", ".join(parts) + " rows/s")

        for name, proxy in proxies.items():
            if proxy.proc.poll() is not None:
                raise BenchError(f"{name} exited during the run\n{tail(proxy.logfile)}")
        ok = True
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        return 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for proxy in proxies.values():
            status = proxy.proc.poll()
            state = "running" if status is None else f"EXITED with status {status}"
            print(f"--- {proxy.name} ({state}): {proxy.logfile} (tail) ---\n{tail(proxy.logfile)}", file=sys.stderr)
        return 1
    finally:
        # Ordered shutdown; each step runs even if an earlier one fails. A second
        # Ctrl-C must not cut it short (every step has its own timeout).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        warnings = ""
        for name in ("pgwarden", "pgbouncer", "forwarder"):
            proxy = proxies.get(name)
            if proxy is None:
                continue
            with contextlib.suppress(BaseException):
                stop_process(proxy.proc, signal.SIGINT if name == "pgbouncer" else signal.SIGTERM)
            if name == "pgwarden" and ok:
                with contextlib.suppress(OSError):
                    logged = [ln for ln in proxy.logfile.read_text(errors="replace").splitlines()
                              if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", ln)]
                    if logged:
                        warnings = f"pgwarden logged {len(logged)} warning/error line(s), e.g.: {logged[0]}"
        if pg is not None:
            with contextlib.suppress(BaseException):
                pg.stop()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if warnings:
            log(warnings)
            meta["pgwarden_log"] = warnings

    finished = _dt.datetime.now().astimezone()
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta.update(
        command=command,
        started=started.isoformat(timespec="seconds"),
        finished=finished.isoformat(timespec="seconds"),
        elapsed_s=round((finished - started).total_seconds(), 1),
        settings={
            "duration": args.duration, "rounds": args.rounds, "scale": args.scale, "rows": args.rows,
            "clients": args.clients, "threads": args.threads, "modes": args.modes, "paths": args.paths,
            "warmup": args.warmup, "pgbouncer_pool_size": args.pool_size, "pgbouncer_pool_mode": "session",
            "postgres_settings": {**PG_SETTINGS, "fsync": "off", "synchronous_commit": "off"},
            "pgwarden_logging": {"level": "warning", "statements": False},
            "pgwarden_guardrails": args.guardrails,
            "pgwarden_audit": args.audit,
            "tls": "none (client sslmode=disable on every path; both proxies reach PostgreSQL without TLS)",
            "rows_query": rows_query,
            "rows_reps": args.rows_reps,
            "rows_client": "psycopg (C implementation), cursor.execute(); libpq buffers the whole result, "
                           "rows are not converted to Python objects; timed on a warm connection; "
                           "median of the reps per round, then median of the rounds",
        },
    )
    summary = summarize(runs, rows_runs, cases, args.paths)
    report = text_report(summary, args.paths, args.rows, rows_query)
    markdown = markdown_report(summary, args.paths, meta)

    out_path = args.output or (REPO / "bench" / "results" / f"{started.strftime('%Y%m%d-%H%M%S')}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({**meta, "summary": summary, "runs": runs, "rows_runs": rows_runs,
                                    "markdown": markdown}, indent=2, default=str) + "\n")

    print()
    print("Statement logging in pgwarden was OFF (logging.statements: false, level warning); no TLS on any path.")
    print()
    print(report)
    print()
    print("---- Markdown for docs/benchmarks.md ----")
    print(markdown)
    print("---- end ----")
    print()
    log(f"finished in {meta['elapsed_s'] / 60:.1f} min; results in {out_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
