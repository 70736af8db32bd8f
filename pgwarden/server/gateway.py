"""The gateway process: listener, session registry, cancel routing, shutdown.

``Gateway`` owns everything long-lived: the config, the pipeline, the TLS
context, the listening server and the map from pgwarden-issued BackendKeyData
to sessions. Cancel keys handed to clients are pgwarden's own (random pid and
secret); a CancelRequest is matched with a constant-time compare and forwarded
to the session's upstream backend, so a forged key cancels nothing and clients
never see upstream backend ids.

When token or API-key login is configured, :class:`~pgwarden.server.control.ControlPlane`
handles revocations, live sessions and kills. With ``api.enabled`` the gateway
serves the HTTP API (its admin port): the approval routes when approvals are on,
``/metrics`` and ``/health`` always (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..config import Config
from ..alerts import build_alerts
from ..observe import Observers
from ..identity.control import control_store_for
from ..policy.pipeline import Pipeline, Stage
from ..policy.stages import StatementLogStage
from ..policy.stages.guardrails import GuardrailsStage
from ..policy.stages.identity_guard import IdentityGuardStage
from ..session.scram import ScramVerifier, parse_verifier
from ..session.startup import CheckPassword, StartupSettings
from .client import ClientConnection
from .control import ControlPlane
from .metrics import build_metrics
from .throttle import LoginThrottle
from .tls import client_facing_context
from .upstream import send_cancel

__all__ = ["Gateway", "PasswordChecker", "default_stages", "run", "install_uvloop"]

log = logging.getLogger("pgwarden.gateway")

#: async (CheckPassword) -> (identity or None, reason for the log)
PasswordChecker = Callable[[CheckPassword], Awaitable[tuple[Any, str]]]


def default_stages(config: Config, approvals: Any = None) -> list[Stage]:
    """The built-in pipeline, in order. ``approvals`` is the gateway's ApprovalBroker, if any."""
    stages: list[Stage] = []
    if config.guardrails.enabled:
        stages.append(GuardrailsStage(config, defer_review=approvals is not None))
    if config.masking.active:
        from ..policy.stages.masking import MaskingStage
        from .catalog import catalog_loader

        stages.append(MaskingStage(config, loader=catalog_loader(config)))
    if approvals is not None and config.guardrails.enabled:
        from ..policy.stages.approvals import ApprovalsStage

        guard = next((s for s in stages if isinstance(s, GuardrailsStage)), None)
        stages.append(ApprovalsStage(config, approvals, guard.analyzer if guard is not None else None))
    if config.logging.statements:
        stages.append(StatementLogStage())
    return stages


def build_recorder(config: Config, gateway_id: str):
    """The audit writer and recorder for ``config`` (the store is opened by ``writer.start``)."""
    from ..policy.stages.recorder import Recorder
    from ..store import AuditStoreError, store_for
    from ..store.signing import load_or_create_signer
    from ..store.writer import AuditWriter

    audit = config.audit
    sinks = None
    if audit.sinks.syslog is not None or audit.sinks.jsonl is not None:
        import socket

        from ..store.sinks import AuditSinks

        sinks = AuditSinks(audit.sinks, socket.gethostname())
    try:
        signer = load_or_create_signer(audit.checkpoints.key_file)
    except (OSError, ValueError) as exc:
        raise AuditStoreError(
            f"cannot load or create the signing key {audit.checkpoints.key_file}: {getattr(exc, 'strerror', None) or exc}"
        ) from exc
    writer = AuditWriter(
        store_for(config),
        signer,
        gateway_id=gateway_id,
        max_batch=audit.max_batch,
        max_backlog=audit.max_backlog,
        checkpoint_records=audit.checkpoints.every_records,
        checkpoint_seconds=audit.checkpoints.every_seconds,
        sinks=sinks,
        refuse_on_failure=audit.on_audit_failure == "refuse",
    )
    return writer, Recorder(writer, audit)


def install_uvloop() -> bool:
    """Use uvloop when it is installed (it roughly halves per-message loop overhead)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class Gateway:
    def __init__(
        self, config: Config, stages: Sequence[Stage] | None = None, password_checker: PasswordChecker | None = None
    ) -> None:
        self.config = config
        # async (CheckPassword) -> (identity or None, reason): how a password that
        # is not a static user's SCRAM secret is checked (the Identity milestone
        # plugs OIDC token validation in here). None disables password login.
        if password_checker is None:
            from ..identity.login import build_token_login

            password_checker = build_token_login(config)
        self.password_checker = password_checker
        self.gateway_id = secrets.token_hex(6)
        # Just-in-time approvals (docs/approvals.md): only with the built-in pipeline.
        self.approvals = None
        if config.approvals.enabled and stages is None:
            from .approvals import ApprovalBroker

            self.approvals = ApprovalBroker(config, self.gateway_id)
        chosen = list(default_stages(config, self.approvals) if stages is None else stages)
        if config.roles or config.identity.enabled:
            # Token and API-key sessions can never change their role or lift
            # read-only, whatever stages a caller chose.
            # The guardrails stage runs the same checks on its own analysis.
            if not any(isinstance(stage, GuardrailsStage) for stage in chosen):
                chosen.insert(0, IdentityGuardStage())
        # Session recording (docs/audit.md): the writer and the recorder, when enabled.
        self.audit_writer = None
        self.recorder = None
        if config.audit_enabled:
            self.audit_writer, self.recorder = build_recorder(config, self.gateway_id)
        if self.approvals is not None:
            self.approvals.recorder = self.recorder
        # Metrics and alerts watch the gateway through hooks (pgwarden/observe.py).
        self.observers = Observers()
        self.metrics = build_metrics(config, self)
        if self.metrics is not None:
            self.observers.add(self.metrics)
        self.alerts = build_alerts(config, self)
        if self.alerts is not None:
            self.observers.add(self.alerts)
        if self.audit_writer is not None:
            self.audit_writer.observer = self.observers if self.observers else None
        if self.recorder is not None:
            self.recorder.observer = self.observers if self.observers else None
        self.pipeline = Pipeline(chosen, self.recorder, self.observers.members)
        self.client_tls_context = None
        tls = config.listen.tls
        if tls.mode != "disable":
            self.client_tls_context = client_facing_context(tls.cert, tls.key, tls.min_version)  # type: ignore[arg-type]
        verifiers: dict[str, ScramVerifier] = {u.name: parse_verifier(u.scram_verifier) for u in config.users}
        self.startup_settings = StartupSettings(
            tls_mode=tls.mode,
            allow_plaintext_loopback=config.listen.allow_plaintext_loopback,
            safe_parameters=config.safe_startup_parameters,
            lookup_verifier=verifiers.get,
            password_login=password_checker is not None,
            allow_cleartext_loopback=config.listen.allow_cleartext_password_loopback,
        )
        self.throttle = LoginThrottle(config.listen.login_throttle)
        self.sessions: set[ClientConnection] = set()
        self._keys: dict[int, tuple[int, ClientConnection]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._background: set[asyncio.Task] = set()
        self._stopping = False
        self.stopped = asyncio.Event()
        self.port: int | None = None
        # The HTTP API (pgwarden/web: approvals, /metrics, /health) when api.enabled.
        self.api: Any = None
        # The control plane (revocations, live sessions, kills) when token login is configured.
        self.control_plane: ControlPlane | None = None
        store = control_store_for(config) if (config.roles or config.identity.enabled) else None
        if store is not None:  # None for configs built in code without a data directory
            self.control_plane = ControlPlane(store, lambda: self.sessions, self.spawn)

    # ---------------------------------------------------------------- sessions

    def register(self, conn: ClientConnection) -> bool:
        if self._stopping or len(self.sessions) >= self.config.listen.max_connections:
            return False
        self.sessions.add(conn)
        return True

    def unregister(self, conn: ClientConnection) -> None:
        self.sessions.discard(conn)
        if conn.backend_key is not None:
            self._keys.pop(conn.backend_key[0], None)
        if self._stopping and not self.sessions:
            self.stopped.set()

    # ---------------------------------------------------------------- control plane

    def session_started(self, conn: ClientConnection) -> None:
        if self.control_plane is not None:
            self.control_plane.session_started(conn)

    def session_ended(self, conn: ClientConnection) -> None:
        if self.control_plane is not None:
            self.control_plane.session_ended(conn)

    def issue_backend_key(self, conn: ClientConnection) -> tuple[int, int]:
        while True:
            pid = secrets.randbelow(2**31 - 1) + 1
            if pid not in self._keys:
                break
        secret = secrets.randbits(32)
        self._keys[pid] = (secret, conn)
        return pid, secret

    def cancel(self, pid: int, secret: int, peer: str | None) -> None:
        entry = self._keys.get(pid)
        if entry is None or not hmac.compare_digest(entry[0].to_bytes(4, "big"), secret.to_bytes(4, "big")):
            log.warning("cancel request with an unknown key from %s ignored", peer or "local socket", extra={"event": "cancel_refused"})
            return
        conn = entry[1]
        log.info("cancel request", extra={"session": conn.id, "event": "cancel"})
        conn.cancel(peer)

    def forward_cancel(self, target_name: str, pid: int, secret: int) -> None:
        target = self.config.targets[target_name]
        self.spawn(send_cancel(target, pid, secret), "cancel-forward")

    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ---------------------------------------------------------------- serving

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        if self.audit_writer is not None:
            # Fail closed: no audit trail, no gateway.
            await self.audit_writer.start()
            retention = self.config.audit.retention
            if retention.max_age_seconds is not None:
                from ..store import store_for

                self.audit_writer.start_retention(
                    retention.max_age_seconds, retention.check_every_seconds, lambda: store_for(self.config),
                    f"audit.retention.max_age={retention.max_age}",
                )
        else:
            log.warning(
                "session recording is off (no data_dir and no audit store configured, or audit.enabled: false): "
                "statements are forwarded unrecorded",
                extra={"event": "audit_disabled"},
            )
        if self.alerts is not None:
            await self.alerts.start()  # after the writer: every alert is recorded
        if self.approvals is not None:
            # Fail closed: review statements need somewhere to keep their requests.
            await self.approvals.start()
        if self.config.api.enabled:
            await self._start_api()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), listen.host, listen.port, reuse_address=True, backlog=1024
        )
        sockets = self._server.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else listen.port
        if self.control_plane is not None:
            await self.control_plane.start()
        log.info(
            "listening on %s:%s (TLS %s), targets: %s",
            listen.host,
            self.port,
            listen.tls.mode,
            ", ".join(sorted(self.config.targets)),
            extra={"event": "listening", "port": self.port},
        )

    async def _start_api(self) -> None:
        """Serve the HTTP API: approvals (when on), /metrics, /health. Before the listener, so a
        port that cannot be bound stops the start like any other configuration error."""
        from ..web.api import build_app
        from ..web.health import HealthChecker
        from ..web.server import ApiServer

        api = self.config.api
        service = self.approvals.service if self.approvals is not None else None
        app = build_app(service, metrics=self.metrics, health=HealthChecker(self))
        self.api = ApiServer(app, api.host, api.port,
                             ssl_certfile=str(api.tls.cert) if api.tls else None,
                             ssl_keyfile=str(api.tls.key) if api.tls else None)
        await self.api.start()
        if self.approvals is not None:
            self.approvals.api_started(self.api)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, drain sessions, then close whatever is left after ``grace`` seconds."""
        if self._stopping:
            await self.stopped.wait()
            return
        self._stopping = True
        grace = self.config.listen.shutdown_grace if grace is None else grace
        if self._server is not None:
            self._server.close()
        log.info("shutting down: %d session(s) draining, grace %gs", len(self.sessions), grace, extra={"event": "shutdown"})
        for conn in list(self.sessions):
            conn.start_draining()
        if not self.sessions:
            self.stopped.set()
        try:
            await asyncio.wait_for(self.stopped.wait(), timeout=grace)
        except asyncio.TimeoutError:
            log.warning("grace period over: closing %d session(s)", len(self.sessions))
            for conn in list(self.sessions):
                conn._close_for_shutdown()
        if self._server is not None:
            await self._server.wait_closed()
        if self.control_plane is not None:
            await self.control_plane.stop()
        if self.api is not None:  # after the drain: reviewers could still release held statements
            try:
                await self.api.stop()
            except Exception:
                log.exception("stopping the HTTP API failed")
        if self.approvals is not None:
            await self.approvals.stop()
        if self.alerts is not None:
            await self.alerts.stop()  # before the writer: its last alerts are recorded
        if self.audit_writer is not None:
            await self.audit_writer.stop()
        for task in list(self._background):
            task.cancel()
        self.stopped.set()
        log.info("stopped", extra={"event": "stopped"})


async def run(config: Config, stages: Sequence[Stage] | None = None, ready=None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. ``ready(gateway)`` is called once listening."""
    gateway = Gateway(config, stages)
    loop = asyncio.get_running_loop()
    # A file size limit reached while writing the audit trail must be an error the
    # writer refuses statements on, not a signal that kills the gateway.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    await gateway.start()
    # Everything imported and built so far lives as long as the process: move it out of the
    # garbage collector's generations, so the collections the data path triggers do not
    # walk the libraries (pglast, starlette, uvicorn, prometheus_client ...) every time.
    gc.collect()
    gc.freeze()
    if ready is not None:
        ready(gateway)  # after the handlers: a signal right after "ready" still drains
    await stop.wait()
    await gateway.shutdown()
