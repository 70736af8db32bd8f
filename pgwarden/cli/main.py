"""The ``pgwarden`` command line.

Every command takes ``--config`` (or ``PGWARDEN_CONFIG``). Problems are printed
as one line on stderr with exit status 2 (bad input) or 1 (failure), never as a
traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ..config import Config, ConfigError, load_config

app = typer.Typer(
    name="pgwarden",
    help="Identity-aware Layer-7 gateway for PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Validate configuration files.", no_args_is_help=True)
tls_app = typer.Typer(help="TLS helpers for local use.", no_args_is_help=True)
user_app = typer.Typer(help="Static (break-glass) gateway users.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tls_app, name="tls")
app.add_typer(user_app, name="user")
token_app = typer.Typer(help="Access tokens from pgwarden's dev issuer (demos, local development).", no_args_is_help=True)
app.add_typer(token_app, name="token")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", envvar="PGWARDEN_CONFIG", help="Gateway config file (YAML).", show_default=False),
]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def require_config(path: Path | None) -> Config:
    if path is None:
        fail("no config file given (use --config FILE or set PGWARDEN_CONFIG)")
    try:
        return load_config(path)  # type: ignore[arg-type]
    except ConfigError as exc:
        fail(str(exc))
    raise AssertionError  # unreachable


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run the gateway until SIGTERM or Ctrl-C (then drain sessions)."""
    cfg = require_config(config)
    from ..logs import setup_logging
    from ..server.gateway import install_uvloop, run

    setup_logging(cfg.logging.level, cfg.logging.format, cfg.logging.file)
    install_uvloop()
    from ..store import AuditStoreError

    try:
        asyncio.run(run(cfg))
    except AuditStoreError as exc:
        # Fail closed: without its audit trail the gateway does not start.
        fail(f"cannot start the audit trail: {exc}", 1)
    except ConfigError as exc:  # found while building the stages (e.g. the masking key)
        fail(str(exc), 1)
    except OSError as exc:
        fail(f"cannot listen on {cfg.listen.host}:{cfg.listen.port}: {exc.strerror or exc}", 1)


@config_app.command("check")
def config_check(
    file: Annotated[Optional[Path], typer.Argument(help="Config file to validate.", show_default=False)] = None,
    config: ConfigOption = None,
) -> None:
    """Validate a config file without serving."""
    path = file or config
    cfg = require_config(path)
    problems = []
    tls = cfg.listen.tls
    for label, p in (("listen.tls.cert", tls.cert), ("listen.tls.key", tls.key)):
        if tls.mode != "disable" and p is not None and not p.is_file():
            problems.append(f"{label}: file {p} does not exist")
    for name, target in cfg.targets.items():
        if target.password_file is not None and not target.password_file.is_file():
            problems.append(f"targets.{name}.password_file: file {target.password_file} does not exist")
        if target.sslrootcert is not None and not target.sslrootcert.is_file():
            problems.append(f"targets.{name}.sslrootcert: file {target.sslrootcert} does not exist")
        if target.password_env is not None and target.password_env not in os.environ:
            problems.append(f"targets.{name}.password_env: environment variable {target.password_env} is not set")
    masking = cfg.masking
    if masking.active and masking.uses_tokens and masking.key_env is not None:
        value = os.environ.get(masking.key_env)
        if value is None or len(value.encode()) < 16:
            problems.append(f"masking.key_env: environment variable {masking.key_env} must hold at least 16 bytes")
    if problems:
        fail(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    out.print(f"{path}: OK ({len(cfg.targets)} target(s), {len(cfg.users)} user(s))")


@tls_app.command("selfsigned")
def tls_selfsigned(
    directory: Annotated[Path, typer.Argument(help="Where to write server.crt and server.key.")],
    host: Annotated[list[str], typer.Option("--host", help="Host name or IP for the certificate (repeatable).")] = [],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    config: ConfigOption = None,
) -> None:
    """Make a self-signed certificate and key for local use."""
    from ..certs import DEFAULT_HOSTS, write_selfsigned

    try:
        cert, key = write_selfsigned(directory, tuple(host) or DEFAULT_HOSTS, overwrite=force)
    except (FileExistsError, OSError, ValueError) as exc:
        fail(str(exc))
    out.print(f"wrote {cert}\nwrote {key}")
    out.print("Use them in your config:\n  listen:\n    tls:\n      mode: require\n"
              f"      cert: {cert}\n      key: {key}")


@user_app.command("verifier")
def user_verifier(
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    iterations: Annotated[int, typer.Option(min=4096, help="PBKDF2 iterations.")] = 4096,
    config: ConfigOption = None,
) -> None:
    """Print a SCRAM-SHA-256 verifier for a static user's `scram_verifier` key."""
    from ..session.scram import make_verifier

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            fail("the passwords do not match")
    if not password:
        fail("the password is empty")
    out.print(make_verifier(password, iterations), soft_wrap=True)


def parse_duration(text: str) -> int:
    """'900', '90s', '15m', '8h', '1d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"not a duration: {text!r} (use e.g. 900, 15m, 8h)") from None


@token_app.command("mint")
def token_mint(
    sub: Annotated[str, typer.Option("--sub", help="The token's subject (who it identifies).")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups claim.")] = "",
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: seconds or 15m / 8h / 1d.")] = "15m",
    config: ConfigOption = None,
) -> None:
    """Print an access token signed by the dev issuer (when the config enables it)."""
    from ..identity.login import dev_issuer_for

    cfg = require_config(config)
    issuer = dev_issuer_for(cfg)
    if issuer is None:
        fail("the dev issuer is not enabled in this config (identity.dev_issuer.enabled: true)")
    seconds = parse_duration(ttl)
    if seconds <= 0 or seconds > 86400:
        fail("--ttl must be between 1 second and 1 day")
    group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
    try:
        token = issuer.mint(sub, groups=group_list, ttl=seconds)  # type: ignore[union-attr]
    except (OSError, ValueError) as exc:
        fail(f"cannot mint a token: {exc}", 1)
    print(token)


from . import demo as _demo  # noqa: E402  (registers the demo command)

_demo.register(app)

from .keys import keys_app as _keys_app  # noqa: E402

app.add_typer(_keys_app, name="keys")

from .control import revoke as _revoke, sessions_app as _sessions_app  # noqa: E402

app.command("revoke")(_revoke)
app.add_typer(_sessions_app, name="sessions")
from . import sessions as _sessions_cli  # noqa: E402,F401  (adds show/replay to `sessions`)

from .policy import policy_app as _policy_app  # noqa: E402

app.add_typer(_policy_app, name="policy")

from .audit import audit_app  # noqa: E402

app.add_typer(audit_app, name="audit")

from .approvals import approvals_app  # noqa: E402

app.add_typer(approvals_app, name="approvals")

from .alerts import alerts_app  # noqa: E402

app.add_typer(alerts_app, name="alerts")

from .evidence import evidence as _evidence  # noqa: E402

app.command("evidence")(_evidence)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
