"""Alerts cost the data path nothing: delivery latency, and pgbench beside a flood of alerts.

Two measurements, one run:

1. **Delivery latency**: one blocked statement at a time (de-duplication off,
   so each one raises an alert), the time from the client receiving the
   refusal to a local webhook receiver receiving the alert. ``--alerts`` of them.
2. **Throughput** (``pgbench -n -S -M extended``), rounds interleaving:

   * ``direct``            PostgreSQL itself
   * ``... alerts and metrics off``  the gateway (guardrails, recording) with ``alerts.enabled: false``
                           and no HTTP port: the baseline for what observing costs
   * ``... alerts only`` / ``... metrics only``  one of the two (metrics scraped every second)
   * ``pgwarden``          the gateway (guardrails, recording, alerts with the default de-duplication
                           and rate limit to a healthy webhook, /metrics on and scraped every second)
   * ``+flood, alerts off`` a gateway with ``alerts.enabled: false`` while another session runs
                           blocked statements in a loop (what the loop costs without alerts)
   * ``pgwarden+flood``    the ``pgwarden`` gateway beside the same loop
   * ``... unlimited``     a second gateway without de-duplication or rate limit: every blocked
                           statement of the flood is its own alert and its own POST (the worst case)
   * ``... hung sink``     a third, like the second, whose webhook accepts and never answers

   ``+flood`` against ``+flood, alerts off`` is what alerting on a loop of
   refusals costs with the defaults (the loop itself shares the gateway's
   event loop and, on a small machine, the CPU);
   ``unlimited`` shows what delivering every alert costs; ``hung sink``
   against ``unlimited`` is what a dead sink costs: it should be nothing.

Both gateways run as ``pgwarden serve`` in their own process (uvloop).

    python bench/alerts_sinks.py                       # 3 rounds × 10 s per path, about 5 minutes
    python bench/alerts_sinks.py --rounds 1 --seconds 3 --alerts 20   # smoke test
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

from pgwarden.testing.receivers import HungReceiver, WebhookReceiver  # noqa: E402

REPO = pc.REPO
DB, ROLE = pc.DB, pc.ROLE
BLOCKED = "DELETE FROM pgbench_history"  # no WHERE: refused by the rule below


class Receiver(WebhookReceiver):
    """A webhook receiver (pgwarden.testing.receivers) that notes when each alert arrived."""

    @property
    def arrivals(self) -> list[tuple[float, dict]]:
        return [(at, body) for _, body, at in self.posts]


def start_gateway(workdir: Path, pg, password: str, webhook_port: int, name: str, unlimited: bool,
                  alerts: bool = True, metrics: bool | None = None) -> pc.Proxy:
    workdir = workdir / name
    workdir.mkdir()
    api_port = pc.free_port()
    config = pc.gateway_config(pg, password, pc.free_port(), workdir / "data")
    config["guardrails"] = {"rules": [{"name": "no-history-wipe", "match": {"tables": "pgbench_history",
                                                                         "command": "DELETE"}, "action": "deny"}]}
    config["api"] = {"enabled": alerts if metrics is None else metrics, "host": "127.0.0.1", "port": api_port}
    config["alerts"] = {"enabled": False} if not alerts else {
        # unlimited: every blocked statement is its own alert and its own POST (the worst case);
        # otherwise the defaults (repeats within 60 s are one summary; at most 10 alerts a minute per sink).
        **({"dedupe_window": 0} if unlimited else {}),
        "sinks": [{"name": "hook", "type": "webhook", "url": f"http://127.0.0.1:{webhook_port}/alert",
                   "format": "json", "timeout": "30s", "max_attempts": 2,
                   **({"rate_limit": None} if unlimited else {})}],
    }
    proxy = pc.serve(workdir, config, f"pgwarden-{name}")
    proxy.api_port = api_port if config["api"]["enabled"] else None  # type: ignore[attr-defined]
    return proxy


class Scraper:
    """Scrapes /metrics once a second, as Prometheus would (a little more often than usual)."""

    def __init__(self, api_port: int | None) -> None:
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = None
        if api_port is not None:
            self.thread = threading.Thread(target=self._run, args=(api_port,), daemon=True)
            self.thread.start()

    def _run(self, api_port: int) -> None:
        import httpx

        while not self.stop.wait(1.0):
            if httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=10).status_code == 200:
                self.scrapes += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(15)


def connect(port: int, password: str):
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=port, user=ROLE, password=password, dbname=DB,
                           sslmode="disable", autocommit=True)


def delivery_latency(port: int, password: str, receiver: Receiver, count: int) -> list[float]:
    """Milliseconds from the refusal reaching the client to the alert reaching the receiver."""
    import psycopg

    latencies = []
    with connect(port, password) as conn:
        for _ in range(count):
            receiver.arrived.clear()
            before = len(receiver.arrivals)
            try:
                conn.execute(BLOCKED)
            except psycopg.Error:
                refused = time.monotonic()
            else:
                raise pc.BenchError("the blocked statement ran")
            if not receiver.arrived.wait(10):
                raise pc.BenchError("no alert within 10 s")
            while len(receiver.arrivals) == before:
                time.sleep(0.001)
            latencies.append(max(0.0, receiver.arrivals[before][0] - refused) * 1000)
    return latencies


class Flood:
    """One session running blocked statements back to back (each one an alert)."""

    def __init__(self, port: int, password: str) -> None:
        self.conn = connect(port, password)
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        while not self.stop.is_set():
            try:
                self.conn.execute(BLOCKED)
            except psycopg.Error:
                self.count += 1

    def close(self) -> int:
        self.stop.set()
        self.thread.join(30)
        self.conn.close()
        return self.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--alerts", type=int, default=200, help="blocked statements timed for delivery latency")
    args = parser.parse_args(argv)
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="pgwarden-alertbench-"))
    pg = pc.make_postgres_class()()
    receiver, hole = Receiver(), HungReceiver()
    gateways: list[pc.Proxy] = []
    try:
        pg.start()
        password = pg.passwords[ROLE]
        pc.init_pgbench(pgbench, pg, scale=1)
        defaults = start_gateway(workdir, pg, password, receiver.port, "defaults", unlimited=False)
        healthy = start_gateway(workdir, pg, password, receiver.port, "unlimited", unlimited=True)
        hung = start_gateway(workdir, pg, password, hole.port, "hung", unlimited=True)
        silent = start_gateway(workdir, pg, password, receiver.port, "silent", unlimited=False, alerts=False)
        alerts_only = start_gateway(workdir, pg, password, receiver.port, "alerts-only", unlimited=False,
                                    metrics=False)
        metrics_only = start_gateway(workdir, pg, password, receiver.port, "metrics-only", unlimited=False,
                                     alerts=False, metrics=True)
        gateways += [defaults, healthy, hung, silent, alerts_only, metrics_only]

        latencies = delivery_latency(healthy.port, password, receiver, args.alerts)
        latencies.sort()
        pc.log(f"alert delivery: p50 {statistics.median(latencies):.1f} ms, "
               f"p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms, max {latencies[-1]:.1f} ms")

        paths = {"direct": (pg.port, None), "pgwarden, alerts and metrics off": (silent.port, None),
                 "pgwarden, alerts only": (alerts_only.port, None),
                 "pgwarden, metrics only (scraped)": (metrics_only.port, None),
                 "pgwarden": (defaults.port, None),
                 "pgwarden+flood, alerts off": (silent.port, silent.port),
                 "pgwarden+flood": (defaults.port, defaults.port),
                 "pgwarden+flood unlimited": (healthy.port, healthy.port),
                 "pgwarden+flood unlimited, hung sink": (hung.port, hung.port)}
        by_port = {g.port: g for g in gateways}
        results: dict[str, list[dict]] = {name: [] for name in paths}
        flooded: dict[str, list[int]] = {name: [] for name in paths}
        for round_no in range(1, args.rounds + 1):
            for name, (port, flood_port) in paths.items():
                flood = Flood(flood_port, password) if flood_port else None
                proxy = by_port.get(port)
                scraper = Scraper(getattr(proxy, "api_port", None))
                try:
                    got = pc.run_pgbench(pgbench, port, password, "extended", args.clients, 2, args.seconds,
                                         proxy.proc.pid if proxy is not None else None)
                finally:
                    scraper.close()
                    if flood is not None:
                        flooded[name].append(flood.close())
                results[name].append(got)
                extra = f"  ({flooded[name][-1]:,} blocked statements beside it)" if flood else ""
                pc.log(f"round {round_no} {name:<36} {got['tps']:>10,.0f} tps  {got['latency_ms']:.3f} ms{extra}")
        print()
        print(f"`python bench/alerts_sinks.py --rounds {args.rounds} --seconds {args.seconds} "
              f"--clients {args.clients} --alerts {args.alerts}`")
        print()
        print(f"Alert delivery (blocked statement refused → webhook received), {len(latencies)} alerts: "
              f"p50 {statistics.median(latencies):.1f} ms, p95 {latencies[int(len(latencies) * 0.95) - 1]:.1f} ms, "
              f"max {latencies[-1]:.1f} ms")
        print()
        print("| path | tps (median) | latency ms (median) | vs pgwarden | gateway CPU µs/txn (median) "
              "| blocked statements beside (median) |")
        print("|---|---:|---:|---:|---:|---:|")
        base = statistics.median(r["tps"] for r in results["pgwarden"])
        for name, runs in results.items():
            tps = statistics.median(r["tps"] for r in runs)
            latency = statistics.median(r["latency_ms"] for r in runs)
            beside = f"{statistics.median(flooded[name]):,.0f}" if flooded[name] else "-"
            cpu = [r["proxy_cpu_us_per_txn"] for r in runs if "proxy_cpu_us_per_txn" in r]
            cpu_text = f"{statistics.median(cpu):.1f}" if cpu else "-"
            print(f"| {name} | {tps:,.0f} | {latency:.3f} | {tps / base:.2f} | {cpu_text} | {beside} |")
        print()
        print(f"Webhook receiver got {len(receiver.arrivals):,} alerts in all.")
        return 0
    finally:
        for proxy in gateways:
            pc.stop_process(proxy.proc)
        receiver.close()
        hole.close()
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
