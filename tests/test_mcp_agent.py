"""End to end with a real MCP server: ``@modelcontextprotocol/server-postgres`` (npm).

The reference Postgres MCP server runs every ``query`` tool call as
``BEGIN TRANSACTION READ ONLY; <sql>; ROLLBACK`` with node-postgres. That is
not a boundary: the tool's SQL is sent as one simple-protocol Query, so
``COMMIT; DROP TABLE customers;`` ends the read-only transaction and drops
the table. This module runs the real server (over stdio, driven by the MCP
Python SDK, ``mcp`` on PyPI) twice:

* through pgwarden, logged in with a dev-issuer access token for the ``agent``
  role (``access: read``, guardrail packs ``dangerous`` and ``read-only``) as
  the password in the connection string: ordinary reads work; the exploit, a
  server-file read and a writable CTE are refused with a message naming the
  pgwarden rule, and the table keeps all its rows;
* straight at PostgreSQL, as the table's owner: the same exploit drops the
  table, which proves the test can tell the difference.

Each half has its own database (``mcp_gateway``, ``mcp_direct``, owned by
``app``) and every test recreates ``customers`` first, so order does not
matter. The npm package is installed by ``.ci/run`` (``npm install --prefix
tests/node``); when it is missing here, the module fixture installs it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
import pydantic
import pytest

from pgwarden.config import parse_config
from pgwarden.identity.login import dev_issuer_for
from pgwarden.testing.gateway import RunningGateway

NODE_DIR = Path(__file__).parent / "node"
PACKAGE = "@modelcontextprotocol/server-postgres"
SERVER_JS = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "server-postgres" / "dist" / "index.js"

GATEWAY_DB = "mcp_gateway"
DIRECT_DB = "mcp_direct"
CUSTOMERS = [(1, "Ada Lovelace", "ada@example.com"), (2, "Alan Turing", "alan@example.com"),
             (3, "Grace Hopper", "grace@example.com")]
EXPLOIT = "COMMIT; DROP TABLE customers;"
EXIT_ON_STDIN_END = "--import=data:text/javascript,process.stdin.on('end',()=>process.exit(0))"

if shutil.which("node") is None:
    pytest.skip("node (Node.js) is not on PATH; the MCP server under test is an npm package",
                allow_module_level=True)
if not SERVER_JS.is_file() and shutil.which("npm") is None:
    pytest.skip(f"npm is not on PATH and {PACKAGE} is not installed in tests/node", allow_module_level=True)

from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

try:  # mcp >= 2
    from mcp.shared.exceptions import MCPError  # noqa: E402
except ImportError:  # mcp 1.x
    from mcp.shared.exceptions import McpError as MCPError  # noqa: E402


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mcp_server_js() -> Path:
    """The server's entry point, installing the pinned package from tests/node/package.json if needed."""
    if not SERVER_JS.is_file():
        result = subprocess.run(
            ["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0 and SERVER_JS.is_file(), f"npm install failed:\n{result.stderr}"
    return SERVER_JS


def _sql_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture(scope="module")
def databases(pg) -> None:
    for db in (GATEWAY_DB, DIRECT_DB):
        if pg.psql(f"select 1 from pg_database where datname = '{db}'") != "1":
            pg.psql(f"create database {_sql_ident(db)} owner app")


def _reset_customers(pg, db: str) -> None:
    """(Re)create ``public.customers`` in *db*, owned by ``app`` (the target's login)."""
    with psycopg.connect(pg.dsn("app", db), autocommit=True) as conn:
        conn.execute("drop table if exists customers")
        conn.execute("create table customers (id int primary key, name text not null, email text not null)")
        with conn.cursor() as cur:
            cur.executemany("insert into customers values (%s, %s, %s)", CUSTOMERS)


def _customers_rows(pg, db: str) -> list[tuple] | None:
    """The table's rows, read as the superuser straight from PostgreSQL; None if it does not exist."""
    with psycopg.connect(pg.dsn("postgres", db), autocommit=True) as conn:
        if conn.execute("select to_regclass('public.customers')").fetchone() == (None,):
            return None
        return conn.execute("select id, name, email from customers order by id").fetchall()


@pytest.fixture()
def customers(pg, databases) -> None:
    for db in (GATEWAY_DB, DIRECT_DB):
        _reset_customers(pg, db)


@pytest.fixture(scope="module")
def agent_gateway(pg, tls_files, tmp_path_factory):
    """pgwarden in front of ``mcp_gateway`` with token login and the ``agent`` role."""
    key_file = tmp_path_factory.mktemp("mcp-devissuer") / "dev-issuer.key"
    data = {
        # TLS required: the token is the password. node-postgres verifies the
        # gateway's certificate (sslmode=verify-full with sslrootcert in the
        # URL), as a real deployment should; no cleartext-on-loopback switch.
        "listen": {"host": "127.0.0.1", "port": 0, "shutdown_grace": 2,
                   "tls": {"mode": "require", "cert": str(tls_files["cert"]), "key": str(tls_files["key"])}},
        "targets": {
            "shop": {"host": pg.host, "port": pg.port, "database": GATEWAY_DB, "user": "app",
                     "password": pg.passwords["app"], "sslmode": "require" if pg.ssl else "disable"},
        },
        "identity": {"dev_issuer": {"enabled": True, "key_file": str(key_file)}},
        "roles": {
            "agent": {"targets": ["shop"], "access": "read",
                      "guardrails": {"packs": ["dangerous", "read-only"]}},
        },
        "role_bindings": [{"role": "agent", "match": {"groups": "agents"}}],
    }
    config = parse_config(data)
    # stages=None: the gateway's own default pipeline for this config (guardrails included).
    with RunningGateway(config, None) as gw:
        yield gw, dev_issuer_for(config)


@pytest.fixture()
def gateway_url(agent_gateway, tls_files) -> str:
    """The MCP server's database URL through pgwarden: the access token is the password.

    JWTs are base64url segments joined by dots, so the token needs no escaping.
    ``sslrootcert`` is read by node-postgres (pg-connection-string) from the file.
    """
    gw, issuer = agent_gateway
    token = issuer.mint("mcp-agent", groups=("agents",), ttl=300)
    return (f"postgresql://mcp-agent:{token}@{gw.host}:{gw.port}/shop"
            f"?sslmode=verify-full&sslrootcert={quote(str(tls_files['ca_cert']))}")


@pytest.fixture()
def direct_url(pg) -> str:
    """The MCP server's database URL straight to PostgreSQL as ``app``, the table's owner."""
    return f"postgresql://app:{quote(pg.passwords['app'], safe='')}@{pg.host}:{pg.port}/{DIRECT_DB}"


# ----------------------------------------------------------------- MCP client


class Outcome:
    """One ``query`` tool call as the MCP client saw it."""

    def __init__(self, error: bool, text: str, raised: bool) -> None:
        self.error = error  # isError, or the server answered with a JSON-RPC error
        self.text = text
        self.raised = raised  # the server threw (server-postgres 0.6.2 rethrows database errors)

    def rows(self) -> list[dict]:
        assert not self.error, self.text
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"Outcome(error={self.error}, raised={self.raised}, text={self.text!r})"


async def _call(session: ClientSession, sql: str) -> Outcome:
    try:
        result = await session.call_tool("query", {"sql": sql})
    except MCPError as exc:
        return Outcome(True, str(exc), True)
    except pydantic.ValidationError as exc:
        # A multi-statement query gives node-postgres an array of results, so
        # server-postgres answers ``{"type": "text"}`` with no text (rows of
        # undefined), which the client refuses as an invalid CallToolResult.
        return Outcome(False, f"invalid tool result: {exc.error_count()} validation errors", False)
    text = "\n".join(getattr(block, "text", None) or "" for block in result.content)
    # the field is ``is_error`` in mcp 2.x, ``isError`` (the wire name) in 1.x
    is_error = getattr(result, "is_error", None)
    if is_error is None:
        is_error = getattr(result, "isError", False)
    return Outcome(bool(is_error), text, False)


def run_mcp(server_js: Path, url: str, *sqls: str, tmp_path: Path) -> tuple[list[str], list[Outcome]]:
    """Start the MCP server on *url* over stdio, list its tools, run each SQL with ``query``.

    Returns the tool names and one :class:`Outcome` per SQL, in order, all in
    one server process (so one node-postgres pool and, normally, one backend).
    """
    errlog_path = tmp_path / "mcp-server.stderr"

    async def main():
        # server-postgres keeps running after its stdin closes (node-postgres'
        # pool holds idle connections for 10 s), so the MCP client would wait
        # out its shutdown grace (2 s in mcp 2.x, the full 10 s in early 1.x)
        # for every server. Exiting at end of input is what the MCP stdio
        # transport asks of a server; the preload does only that.
        params = StdioServerParameters(command="node", args=[EXIT_ON_STDIN_END, str(server_js), url],
                                       cwd=str(NODE_DIR))
        with open(errlog_path, "w") as errlog:
            # stdio_client has no errlog (the server's stderr) in mcp 1.2
            extra = {"errlog": errlog} if "errlog" in inspect.signature(stdio_client).parameters else {}
            async with asyncio.timeout(60):
                async with stdio_client(params, **extra) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        tools = [tool.name for tool in (await session.list_tools()).tools]
                        return tools, [await _call(session, sql) for sql in sqls]

    try:
        return asyncio.run(main())
    except BaseException:
        if errlog_path.exists():
            print("MCP server stderr:\n" + errlog_path.read_text())
        raise


# ----------------------------------------------------------------- through pgwarden


def test_agent_reads_through_pgwarden(mcp_server_js, customers, gateway_url, tmp_path):
    tools, (count, names) = run_mcp(mcp_server_js, gateway_url, "SELECT count(*) FROM customers",
                                    "SELECT name FROM customers ORDER BY id", tmp_path=tmp_path)
    assert "query" in tools
    assert int(count.rows()[0]["count"]) == len(CUSTOMERS)  # node-postgres returns bigint as a string
    assert [r["name"] for r in names.rows()] == [c[1] for c in CUSTOMERS]


def test_commit_drop_exploit_is_refused_by_pgwarden(mcp_server_js, customers, pg, gateway_url, tmp_path):
    _, (exploit, after) = run_mcp(mcp_server_js, gateway_url, EXPLOIT,
                                  "SELECT count(*) AS n FROM customers", tmp_path=tmp_path)
    assert exploit.error, exploit
    assert _customers_rows(pg, GATEWAY_DB) == CUSTOMERS
    # the session stays usable: the server's next call through the same pool works
    assert int(after.rows()[0]["n"]) == len(CUSTOMERS)
    # refused by the guardrail, not merely by the read-only upstream session
    assert "pgwarden" in exploit.text and "dangerous.drop" in exploit.text, exploit


def test_server_file_read_is_refused_by_pgwarden(mcp_server_js, customers, gateway_url, tmp_path):
    _, (outcome,) = run_mcp(mcp_server_js, gateway_url, "SELECT * FROM pg_read_file('/etc/passwd')",
                            tmp_path=tmp_path)
    assert outcome.error, outcome
    assert "root:" not in outcome.text
    assert "pgwarden" in outcome.text, outcome


@pytest.mark.parametrize("where", ["", " WHERE id > 0"], ids=["all-rows", "with-where"])
def test_writable_cte_delete_is_refused_by_pgwarden(mcp_server_js, customers, pg, gateway_url, tmp_path, where):
    """A DELETE hidden in a CTE of a SELECT (with a WHERE it is no longer the dangerous pack's
    no-WHERE case, and the read-only pack has to catch it)."""
    sql = f"WITH d AS (DELETE FROM customers{where} RETURNING *) SELECT * FROM d"
    _, (outcome,) = run_mcp(mcp_server_js, gateway_url, sql, tmp_path=tmp_path)
    assert outcome.error, outcome
    assert _customers_rows(pg, GATEWAY_DB) == CUSTOMERS
    assert "pgwarden" in outcome.text, outcome


# ----------------------------------------------------------------- without pgwarden


def test_commit_drop_exploit_succeeds_against_postgres_directly(mcp_server_js, customers, pg, direct_url,
                                                                tmp_path):
    """The control: the same server, the same SQL, no pgwarden — the table is gone."""
    assert _customers_rows(pg, DIRECT_DB) == CUSTOMERS
    # The tool's answer does not matter here (a multi-statement query has no
    # single result, so server-postgres answers without rows); the table does.
    run_mcp(mcp_server_js, direct_url, EXPLOIT, tmp_path=tmp_path)
    assert _customers_rows(pg, DIRECT_DB) is None
