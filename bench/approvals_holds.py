"""Held statements cost other sessions nothing: pgbench -S with and without 20 sessions waiting for approval.

Rounds interleave three paths so machine noise hits them alike:

* ``direct``           PostgreSQL itself
* ``pgwarden``         the gateway with approvals on (guardrails, recording), nobody held
* ``pgwarden+20held``  the same gateway while 20 other sessions each hold an UPDATE for approval

Each run is ``pgbench -n -S -M extended -c CLIENTS -j 2 -T SECONDS`` as the
static user (whose UPDATEs of ``pgbench_branches`` need review). The held
sessions are opened, held, and withdrawn (connection closed) around each
held run; the gateway runs as ``pgwarden serve`` in its own process (uvloop).

    python bench/approvals_holds.py                      # 3 rounds × 10 s per path, about 2 minutes
    python bench/approvals_holds.py --rounds 1 --seconds 3   # smoke test
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402  (shared helpers: servers, ports, processes)

REPO = pc.REPO
DB, ROLE = pc.DB, pc.ROLE
HELD = 20


def start_gateway(workdir: Path, pg, password: str) -> pc.Proxy:
    config = pc.gateway_config(pg, password, pc.free_port(), workdir / "data")
    config["guardrails"] = {"rules": [{"name": "review-branches", "match": {"tables": "pgbench_branches",
                                                                         "command": "UPDATE"}, "action": "review"}]}
    config["approvals"] = {"enabled": True, "timeout": "1h"}
    return pc.serve(workdir, config)


class HeldSessions:
    """``count`` sessions, each with an UPDATE held for approval (closed, i.e. withdrawn, on exit)."""

    def __init__(self, port: int, password: str, count: int) -> None:
        import psycopg

        self.conns = [psycopg.connect(host="127.0.0.1", port=port, user=ROLE, password=password, dbname=DB,
                                      sslmode="disable", autocommit=True) for _ in range(count)]
        self.notices = 0
        self.lock = threading.Lock()
        self.threads = []
        for n, conn in enumerate(self.conns):
            conn.add_notice_handler(self._noticed)
            thread = threading.Thread(target=self._hold, args=(conn, n), daemon=True)
            thread.start()
            self.threads.append(thread)
        deadline = time.monotonic() + 30
        while self.notices < count:
            if time.monotonic() > deadline:
                raise pc.BenchError(f"only {self.notices} of {count} sessions were held")
            time.sleep(0.05)

    def _noticed(self, diag) -> None:
        with self.lock:
            self.notices += 1

    @staticmethod
    def _hold(conn, n: int) -> None:
        try:
            conn.execute(f"UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = {n % 1 + 1}")
        except Exception:
            pass  # withdrawn when the connection closes

    def close(self) -> None:
        for conn in self.conns:
            conn.pgconn.finish()
        for thread in self.threads:
            thread.join(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-holdbench-"))
    pg = pc.make_postgres_class()()
    gateway = None
    try:
        pg.start()
        password = pg.passwords[ROLE]
        pc.init_pgbench(pgbench, pg, scale=1)
        gateway = start_gateway(workdir, pg, password)
        results: dict[str, list[dict]] = {"direct": [], "pgwarden": [], f"pgwarden+{HELD}held": []}
        for round_no in range(1, args.rounds + 1):
            for name in results:
                port = pg.port if name == "direct" else gateway.port
                held = HeldSessions(gateway.port, password, HELD) if name.endswith("held") else None
                try:
                    got = pc.run_pgbench(pgbench, port, password, "extended", args.clients, 2, args.seconds,
                                         gateway.proc.pid if name != "direct" else None)
                finally:
                    if held is not None:
                        held.close()
                results[name].append(got)
                pc.log(f"round {round_no} {name:<18} {got['tps']:>10,.0f} tps  {got['latency_ms']:.3f} ms")
        print()
        print(f"`python bench/approvals_holds.py --rounds {args.rounds} --seconds {args.seconds} "
              f"--clients {args.clients}`")
        print()
        print("| path | tps (median) | latency ms (median) | vs pgwarden |")
        print("|---|---:|---:|---:|")
        base = statistics.median(r["tps"] for r in results["pgwarden"])
        for name, runs in results.items():
            tps = statistics.median(r["tps"] for r in runs)
            latency = statistics.median(r["latency_ms"] for r in runs)
            print(f"| {name} | {tps:,.0f} | {latency:.3f} | {tps / base:.2f} |")
        return 0
    finally:
        if gateway is not None:
            pc.stop_process(gateway.proc)
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
