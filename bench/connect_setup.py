#!/usr/bin/env python3
"""What does token login cost per connection?

    python bench/connect_setup.py [--connections N] [--rounds R]

Two measurements:

1. Validation alone, warm key cache: ``TokenValidator.validate()`` on an RS256
   and an ES256 token from a local JWKS issuer (served on 127.0.0.1) and an
   EdDSA token from the dev issuer, median of many calls. This is the number the
   Identity target speaks of (≤ 2 ms per connection).
2. End to end: wall time of ``psycopg.connect()`` + ``close()`` over TLS, direct to
   PostgreSQL (SCRAM), through pgwarden as a static SCRAM user, and through
   pgwarden with an RS256 access token, interleaved in rounds; medians.

Everything runs on this machine; the gateway runs in-process (a background
thread, as in the tests), which slightly understates a separate process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import ec, rsa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pgwarden.certs import write_selfsigned  # noqa: E402
from pgwarden.config import parse_config  # noqa: E402
from pgwarden.identity import DevIssuer, IssuerSettings, JwksCache, TokenValidator  # noqa: E402
from pgwarden.session.scram import make_verifier  # noqa: E402
from pgwarden.testing.gateway import RunningGateway  # noqa: E402
from pgwarden.testing.postgres import TestPostgres  # noqa: E402


def start_issuer() -> tuple[str, dict, ThreadingHTTPServer]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwks = {"keys": []}
    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        jwks["keys"].append(jwk)
    state: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": state["issuer"], "jwks_uri": state["issuer"] + "/jwks"}
            elif self.path == "/jwks":
                body = jwks
            else:
                self.send_error(404)
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["issuer"] = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state["issuer"], {"RS256": ("r1", rsa_key), "ES256": ("e1", ec_key)}, server


def mint(issuer: str, alg: str, kid: str, key, sub: str = "bench-agent") -> str:
    now = int(time.time())
    claims = {"iss": issuer, "aud": "pgwarden", "sub": sub, "iat": now, "nbf": now, "exp": now + 3600,
              "groups": ["agents"]}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


def validation_times(issuer: str, keys: dict, dev: DevIssuer, n: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        validator = TokenValidator([IssuerSettings(issuer=issuer, audience="pgwarden")], JwksCache(), dev)
        tokens = {alg: mint(issuer, alg, *keys[alg]) for alg in keys}
        tokens["EdDSA (dev issuer)"] = dev.mint("bench-agent", groups=("agents",), ttl=3600)
        results = {}
        for name, token in tokens.items():
            await validator.validate(token)  # warm the cache
            samples = []
            for _ in range(n):
                started = time.perf_counter()
                await validator.validate(token)
                samples.append(time.perf_counter() - started)
            results[name] = statistics.median(samples) * 1e3
        return results

    return asyncio.run(run())


def connect_time(dsn: str) -> float:
    started = time.perf_counter()
    psycopg.connect(dsn).close()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=100, help="connections per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--validations", type=int, default=500)
    args = ap.parse_args()

    issuer, keys, http = start_issuer()
    tmp = Path(tempfile.mkdtemp(prefix="pgwarden-connect-bench-"))
    dev = DevIssuer(tmp / "dev.key")
    print("token validation, warm key cache (median ms per token):")
    for name, ms in validation_times(issuer, keys, dev, args.validations).items():
        print(f"  {name:<20} {ms:.3f} ms")

    cert, key = write_selfsigned(tmp / "tls")
    with TestPostgres() as pg:
        config = parse_config({
            "listen": {"host": "127.0.0.1", "port": 0, "tls": {"mode": "require", "cert": str(cert), "key": str(key)}},
            "logging": {"level": "warning", "statements": False},
            "targets": {"app": {"host": pg.host, "port": pg.port, "database": "appdb", "user": "app",
                                "password": pg.passwords["app"], "sslmode": "require" if pg.ssl else "disable"}},
            "users": [{"name": "alice", "scram_verifier": make_verifier("alice-pw")}],
            "identity": {"issuers": [{"issuer": issuer, "audience": "pgwarden"}]},
            "roles": {"agent": {"targets": ["app"], "access": "read"}},
            "role_bindings": [{"role": "agent", "match": {"groups": "agents"}}],
        })
        with RunningGateway(config) as gw:
            token = mint(issuer, "RS256", *keys["RS256"])
            sslmode = "require" if pg.ssl else "disable"
            paths = {
                "direct (SCRAM)": pg.dsn("app", "appdb", sslmode=sslmode),
                "pgwarden (SCRAM user)": gw.dsn("alice", "alice-pw", sslmode="require"),
                "pgwarden (RS256 token)": gw.dsn("bench-agent", token, sslmode="require"),
            }
            for dsn in paths.values():  # warm everything, including the key cache
                connect_time(dsn)
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for round_no in range(args.rounds):
                order = list(paths.items())
                order = order[round_no % len(order):] + order[: round_no % len(order)]
                for name, dsn in order:
                    samples[name].extend(connect_time(dsn) for _ in range(args.connections))
    http.shutdown()
    print(f"\nconnect + close over TLS, median of {args.rounds} x {args.connections} per path (ms):")
    medians = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    for name, ms in medians.items():
        print(f"  {name:<24} {ms:.2f} ms")
    added = medians["pgwarden (RS256 token)"] - medians["pgwarden (SCRAM user)"]
    print(f"\ntoken login vs static SCRAM user through pgwarden: {added:+.2f} ms per connection")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
