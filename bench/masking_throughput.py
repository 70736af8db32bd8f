"""Masking throughput: 1,000,000-row reads of an 8-column table, 2 columns masked.

Paths, interleaved round by round so machine noise hits them alike:

* ``direct``        PostgreSQL itself
* ``pgbouncer``     session pooling (when installed)
* ``pgwarden-core`` pgwarden without masking configured (the gateway core's pass-through)
* ``pgwarden``      pgwarden, a user who sees every value (masking configured, not applied: pass-through)
* ``pgwarden-mask`` pgwarden, a user who sees ``email`` partially masked and ``ssn`` redacted

Each read is ``SELECT * FROM people`` (1M rows, ~150 bytes each) on a warm
connection; the client is psycopg, whose libpq receives and parses every row
in C without making Python objects, so the client is not the bottleneck. The
gateway runs as ``pgwarden serve`` in its own process (uvloop), as deployed.

    python bench/masking_throughput.py                 # 3 rounds × 3 reads per path, about 3 minutes
    python bench/masking_throughput.py --rounds 1 --reps 1 --rows 200000   # smoke test

Needs PostgreSQL server binaries (found like the test suite finds them) and,
optionally, pgbouncer. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402  (shared helpers: servers, ports, processes)

REPO = pc.REPO
DB, ROLE = pc.DB, pc.ROLE
CLEAR_USER = "appclear"
QUERY = "SELECT * FROM people"

SCHEMA = """
DROP TABLE IF EXISTS people;
CREATE TABLE people (
    id int PRIMARY KEY, full_name text, email text, ssn text, city text,
    amount numeric(10,2), created_at timestamptz, note text
);
INSERT INTO people
SELECT g, 'Person ' || g, 'user' || g || '@example.com',
       lpad((100 + g % 800)::text, 3, '0') || '-' || lpad((10 + g % 89)::text, 2, '0') || '-' || lpad((1000 + g % 8999)::text, 4, '0'),
       (ARRAY['Berlin', 'Lisbon', 'Austin', 'Osaka'])[1 + g % 4], (g % 100000) / 100.0,
       timestamptz '2024-01-01' + g * interval '1 minute', md5(g::text)
FROM generate_series(1, {rows}) g;
"""


def start_gateway(workdir: Path, pg, password: str, masking: bool = True) -> pc.Proxy:
    import yaml

    from pgwarden.session.scram import make_verifier

    port = pc.free_port()
    verifier = make_verifier(password)
    config = {
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"mode": "disable"}, "shutdown_grace": 2},
        "logging": {"level": "warning", "statements": False},
        "targets": {DB: {"host": pg.host, "port": pg.port, "database": DB, "user": ROLE, "password": password,
                         "sslmode": "disable"}},
        "users": [{"name": ROLE, "scram_verifier": verifier}, {"name": CLEAR_USER, "scram_verifier": verifier}],
        "audit": {"enabled": False},
        "masking": {
            "rules": [
                {"name": "email", "columns": ["people.email"], "type": "email", "strategy": "partial",
                 "unmasked_users": [CLEAR_USER]},
                {"name": "ssn", "columns": ["people.ssn"], "type": "us_ssn", "strategy": "redact",
                 "unmasked_users": [CLEAR_USER]},
            ],
            "detect": {"unmasked_users": [CLEAR_USER]},
        },
    }
    if not masking:
        del config["masking"]
    name = "pgwarden" if masking else "pgwarden-core"
    cfg = workdir / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    logfile = workdir / f"{name}.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgwarden", "serve", "--config", str(cfg)], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO, env=pc.clean_env(PYTHONPATH=str(REPO)), start_new_session=True,
        )
    proxy = pc.Proxy("pgwarden", port, proc, logfile)
    pc.wait_for_port(port, proc, "pgwarden", logfile)
    return proxy


def worker(port: int, user: str, rows: int, reps: int) -> None:
    """Child process: time ``reps`` reads on one warm connection; print JSON (and a sample row)."""
    import psycopg

    password = os.environ.pop("BENCH_PASSWORD")
    dsn = f"host=127.0.0.1 port={port} user={user} dbname={DB} sslmode=disable connect_timeout=10"
    times = []
    with psycopg.connect(dsn, password=password, autocommit=True) as conn:
        cur = conn.cursor()
        sample = cur.execute("SELECT email, ssn FROM people WHERE id = 1").fetchone()
        for _ in range(reps):
            t0 = time.perf_counter()
            cur.execute(QUERY)  # libpq receives every row; Python never sees them
            times.append(time.perf_counter() - t0)
            if cur.rowcount != rows:
                raise SystemExit(f"expected {rows} rows, got {cur.rowcount}")
    print(json.dumps({"seconds": statistics.median(times), "all": times, "sample": list(sample)}))


def read(port: int, user: str, password: str, rows: int, reps: int) -> dict:
    argv = [sys.executable, __file__, "--worker", str(port), user, str(rows), str(reps)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                          env=pc.clean_env(BENCH_PASSWORD=password, PYTHONPATH=str(REPO)))
    if proc.returncode != 0:
        raise pc.BenchError(f"read through port {port} as {user} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3, help="reads per path per round (median kept)")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        port, user, rows, reps = args.worker
        worker(int(port), user, int(rows), int(reps))
        return 0
    import psycopg

    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-maskbench-"))
    os.chmod(workdir, 0o755)
    pg = pc.make_postgres_class()()
    proxies: list[pc.Proxy] = []
    try:
        pg.start()
        password = pg.passwords[ROLE]
        pc.log(f"PostgreSQL {pg.port}; loading {args.rows:,} rows")
        if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB}'") != "1":
            pg.psql(f"CREATE DATABASE {DB} OWNER {ROLE}")
        with psycopg.connect(pg.dsn(ROLE, DB), autocommit=True) as conn:
            conn.execute(SCHEMA.format(rows=args.rows))
            conn.execute("VACUUM ANALYZE people")
        paths = {"direct": (pg.port, ROLE)}
        binary = pc.ensure_pgbouncer() if _has("pgbouncer") else None
        if binary:
            bouncer = pc.start_pgbouncer(binary, workdir, pg, password, pool_size=4)
            proxies.append(bouncer)
            paths["pgbouncer"] = (bouncer.port, ROLE)
        core = start_gateway(workdir, pg, password, masking=False)
        proxies.append(core)
        paths["pgwarden-core"] = (core.port, ROLE)
        gateway = start_gateway(workdir, pg, password)
        proxies.append(gateway)
        paths["pgwarden"] = (gateway.port, CLEAR_USER)
        paths["pgwarden-mask"] = (gateway.port, ROLE)
        results: dict[str, list[float]] = {name: [] for name in paths}
        samples = {}
        for round_no in range(1, args.rounds + 1):
            for name, (port, user) in paths.items():
                got = read(port, user, password, args.rows, args.reps)
                results[name].append(got["seconds"])
                samples[name] = got["sample"]
                pc.log(f"round {round_no} {name:<14} {args.rows / got['seconds']:>12,.0f} rows/s")
        print()
        print(f"`python bench/masking_throughput.py --rows {args.rows} --rounds {args.rounds} --reps {args.reps}`")
        print()
        print("| path | rows/s (median) | vs direct | sample row (email, ssn) |")
        print("|---|---:|---:|---|")
        direct = args.rows / statistics.median(results["direct"])
        for name, times in results.items():
            rate = args.rows / statistics.median(times)
            print(f"| {name} | {rate:,.0f} | {rate / direct:.2f} | {samples[name][0]}, {samples[name][1]} |")
        return 0
    finally:
        for proxy in proxies:
            pc.stop_process(proxy.proc)
        pg.stop()


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None or os.geteuid() == 0


if __name__ == "__main__":
    sys.exit(main())
