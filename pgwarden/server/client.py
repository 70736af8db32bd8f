"""One client connection: drives the sans-IO handshake and relay with asyncio.

Phases: HANDSHAKE (startup, TLS, SCRAM) -> CONNECTING (upstream login) -> RELAY
-> CLOSED. In RELAY, each ``data_received`` from either side calls the relay once
and sends what it produced with one write per direction. Client reads pause
while a statement is held, while the upstream cannot keep up, or while the
relay has too much queued; each pause has a named reason so the reasons never
cancel each other out.

Two error families (see DEVELOPERS.md): the peer's fault is answered on the wire
(FATAL ErrorResponse with a SQLSTATE) and logged at warning level; our own bug is
logged with a traceback and closes only this session.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING

from ..logs import SessionLogger
from ..session.relay import CloseRequested, HoldRequested, Relay, StageFailed
from ..session.startup import Authenticated, CancelRequested, CheckPassword, ClientHandshake, Refused, StartTLS
from ..session.statement import AuthEvent, SessionInfo
from ..session.upstream import UpstreamError
from ..session.verdict import Deny
from ..wire import encode
from ..wire.constants import SQLState
from ..wire.frames import ProtocolViolation
from .tls import describe_tls
from .upstream import UpstreamProtocol, open_upstream

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["ClientConnection"]

log = logging.getLogger("pgwarden.session")

_MAX_QUEUED = 16 * 1024 * 1024  # client bytes queued behind a hold before reads pause


class ClientConnection(asyncio.Protocol):
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        # 64 bits: ids must stay unique across gateways sharing one audit trail.
        self.id = secrets.token_hex(8)
        self.transport: asyncio.Transport | None = None
        self.phase = "HANDSHAKE"
        self.peer: str | None = None
        self.tls: str | None = None
        self.handshake: ClientHandshake | None = None
        self.relay: Relay | None = None
        self.upstream: UpstreamProtocol | None = None
        self.info: SessionInfo | None = None
        self.target_name: str | None = None
        self.backend_key: tuple[int, int] | None = None  # pgwarden's own, handed to the client
        self.upstream_key: tuple[int, int] | None = None
        self.draining = False
        self.close_reason = ""
        self._pending_client = b""
        self._pauses: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self._hold_cancel = None
        self._hold_notice: bytes | None = None  # a hold's NoticeResponse waiting for a message boundary
        self._log = SessionLogger(log, {"session": self.id})
        # Write-ahead audit: output to PostgreSQL parked until its records are durable.
        self._audit = gateway.audit_writer
        self._parked: list[bytes] = []
        self._parked_entries = 0  # relay pending entries behind the parked bytes

    # ------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        settings = self.gateway.startup_settings
        self.handshake = ClientHandshake(settings, self.peer)
        if not self.gateway.register(self):
            self._fatal(SQLState.TOO_MANY_CONNECTIONS, "sorry, too many clients already", "too many connections")
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.gateway.config.listen.startup_timeout, self._startup_timeout
        )
        self._log.debug("connection from %s", self._peer_text())

    def _peer_text(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple):
            return f"{peer[0]}:{peer[1]}"
        return "local socket"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == "CLOSED":
            return
        reason = self.close_reason or ("client disconnected" if exc is None else f"client connection lost: {exc}")
        self._teardown(reason)

    def _teardown(self, reason: str) -> None:
        previous = self.phase
        if previous == "CLOSED":
            return
        self.phase = "CLOSED"
        self.close_reason = self.close_reason or reason
        if self._timer is not None:
            self._timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        if self._hold_cancel is not None:
            try:
                self._hold_cancel()
            except Exception:
                self._log.exception("hold cancel hook failed")
            self._hold_cancel = None
        for task in list(self._tasks):
            task.cancel()
        if self.upstream is not None:
            self.upstream.stop_relaying()  # no more server data into a closed session
            if not self.upstream.closed and self.relay is not None and not self.relay.closed:
                self.upstream.write(encode.terminate())
            self.upstream.close()
        if self.transport is not None:
            self.transport.close()
        self.gateway.unregister(self)
        if self._audit is not None:
            self._audit.ungate(self)
            self._parked.clear()
        if previous in ("RELAY",) and self.info is not None:
            self.gateway.session_ended(self)
            self.gateway.pipeline.session_ended(self.info, self.close_reason)
            self._log.info(
                "session ended: %s",
                self.close_reason,
                extra={"event": "disconnect", "reason": self.close_reason, "user": self.info.user},
            )

    def close(self, reason: str, error: bytes | None = None) -> None:
        if self.phase == "CLOSED":
            return
        self.close_reason = reason
        if error is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(error)
        self._teardown(reason)

    def _fatal(self, sqlstate: str, message: str, reason: str) -> None:
        self._log.warning("closing: %s", reason, extra={"event": "refused", "reason": reason})
        self.close(reason, encode.error_response(sqlstate, message, severity="FATAL"))

    def terminate(self, sqlstate: str, message: str, reason: str) -> None:
        """End this session with a FATAL error (revocation, administrator kill)."""
        self._fatal(sqlstate, message, reason)

    def _startup_timeout(self) -> None:
        if self.phase in ("HANDSHAKE", "CONNECTING"):
            self._fatal(SQLState.CONNECTION_FAILURE, "canceling authentication due to timeout", "startup timeout")

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"{name}[{self.id}]")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.error("internal error in %s", task.get_name(), exc_info=exc)
            self._fatal(SQLState.INTERNAL_ERROR, "pgwarden internal error; the session was closed", f"bug: {exc!r}")

    # ------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None and self.phase == "RELAY":
            # The hot path: one relay call, one write upstream.
            self.info.bytes_from_client += len(data)  # type: ignore[union-attr]
            audit = self._audit
            before = len(relay._pending) if audit is not None else 0
            try:
                relay.client_data(data)
            except Exception as exc:
                self._client_input_failed(exc)
                return
            out = relay.to_server
            if out:
                chunk = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                if audit is not None and (self._parked or self.info.audit_ticket > audit.durable):
                    self._audited_write(chunk, len(relay._pending) - before)
                else:
                    self._upstream_write(chunk)
            if relay.commands or relay.held or self._pauses or self.draining:
                self._flush()
            return
        try:
            if self.phase == "HANDSHAKE":
                self._handshake_data(data)
            elif self.phase == "CONNECTING":
                self._pending_client += data
                if len(self._pending_client) > 1024 * 1024:
                    self._fatal(SQLState.PROTOCOL_VIOLATION, "too much data before the session was ready", "early data")
        except Exception as exc:
            self._client_input_failed(exc)

    def _client_input_failed(self, exc: Exception) -> None:
        """The client's fault is answered on the wire; our bug is logged with its traceback."""
        if isinstance(exc, ProtocolViolation):
            self._fatal(SQLState.PROTOCOL_VIOLATION, f"invalid frontend message: {exc}", f"protocol violation: {exc}")
        else:
            self._log.error("internal error handling client data", exc_info=exc)
            self._fatal(SQLState.INTERNAL_ERROR, "pgwarden internal error; the session was closed", f"bug: {exc!r}")

    def _handshake_data(self, data: bytes) -> None:
        hs = self.handshake
        hs.data(data)  # type: ignore[union-attr]
        self._handshake_output()

    def _handshake_output(self) -> None:
        hs = self.handshake
        assert hs is not None
        events, hs.events = hs.events, []
        delay = 0.0
        for event in events:
            if isinstance(event, Refused):
                # Log the reason (and tell the stages) before the client can read the answer.
                self._log.warning(
                    "login refused: %s",
                    event.reason,
                    extra={"event": "auth_failed", "reason": event.reason, "client": self._peer_text()},
                )
                self._auth_event("refused", hs.user, reason=event.reason)
                if event.credential_rejected:
                    delay = self.gateway.throttle.failed(self.peer)
        if delay > 0:
            # Repeated failures from this address: hold the answer back.
            answer = b"".join(hs.to_client)
            hs.to_client.clear()
            self.pause_client_reading("throttle")
            reason = next(e.reason for e in events if isinstance(e, Refused))
            asyncio.get_running_loop().call_later(delay, self._send_refusal, answer, reason)
            return
        if hs.to_client:
            self.transport.write(b"".join(hs.to_client))  # type: ignore[union-attr]
            hs.to_client.clear()
        for event in events:
            if isinstance(event, StartTLS):
                self._spawn(self._start_tls(), "client-tls")
            elif isinstance(event, CancelRequested):
                self.gateway.cancel(event.pid, event.secret, self.peer)
                self.close("cancel request handled")
            elif isinstance(event, Refused):
                self.close(event.reason)
            elif isinstance(event, CheckPassword):
                self._spawn(self._check_password(event), "password-check")
            elif isinstance(event, Authenticated):
                self._on_authenticated(event)

    def _send_refusal(self, answer: bytes, reason: str) -> None:
        if self.phase == "CLOSED":
            return
        self.close(reason, answer)

    def _auth_event(self, outcome: str, user: str, *, target: str | None = None, method: str | None = None,
                    identity: object | None = None, access: str | None = None, reason: str = "") -> None:
        self.gateway.pipeline.authenticated(
            AuthEvent(
                session_id=self.id,
                outcome=outcome,
                user=user,
                client_addr=self._peer_text(),
                tls=self.tls,
                target=target,
                method=method,
                subject=getattr(identity, "subject", None),
                issuer=getattr(identity, "issuer", None),
                roles=tuple(getattr(identity, "roles", ())),
                access=access,
                reason=reason,
            )
        )

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                self.transport, self, self.gateway.client_tls_context, server_side=True  # type: ignore[arg-type]
            )
        except (OSError, asyncio.CancelledError, ConnectionError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.close(f"TLS handshake failed: {exc}")
            return
        except Exception as exc:  # ssl.SSLError and friends
            self.close(f"TLS handshake failed: {exc}")
            return
        if new_transport is None or self.phase == "CLOSED":
            return
        self.transport = new_transport  # type: ignore[assignment]
        self.tls = describe_tls(new_transport.get_extra_info("ssl_object"))
        self.handshake.tls_established()  # type: ignore[union-attr]

    async def _check_password(self, event: CheckPassword) -> None:
        """Run the gateway's (asynchronous) password check off the handshake's back."""
        checker = self.gateway.password_checker
        try:
            identity, reason = await checker(event) if checker is not None else (None, "password login is not enabled")
        except Exception as exc:  # a checker bug fails closed
            self._log.error("password check failed", exc_info=exc)
            identity, reason = None, f"password check failed: {exc!r}"
        if self.phase != "HANDSHAKE" or self.handshake is None:
            return
        self.handshake.password_checked(identity, reason)
        self._handshake_output()

    def _on_authenticated(self, event: Authenticated) -> None:
        config = self.gateway.config
        user = config.user(event.user)
        target = config.targets.get(event.database)
        self.gateway.throttle.succeeded(self.peer)  # the credential was right
        if target is None:
            self._auth_event("refused", event.user, target=event.database, method=event.method,
                             identity=event.identity, reason="unknown target")
            self._fatal(SQLState.INVALID_CATALOG_NAME, f'pgwarden: target "{event.database}" does not exist', "unknown target")
            return
        if event.identity is not None:
            # A checked password (a token): the identity says which targets it may use; none means no access.
            allowed = getattr(event.identity, "targets", None) or ()
            if event.database not in allowed:
                self._auth_event("refused", event.user, target=event.database, method=event.method,
                                 identity=event.identity, reason="target not granted to identity")
                self._fatal(
                    SQLState.INSUFFICIENT_PRIVILEGE,
                    f'pgwarden: user "{event.user}" may not connect to target "{event.database}"',
                    "target not granted to identity",
                )
                return
        elif user is not None and user.targets and event.database not in user.targets:
            self._auth_event("refused", event.user, target=event.database, method=event.method,
                             reason="target not granted")
            self._fatal(
                SQLState.INSUFFICIENT_PRIVILEGE,
                f'pgwarden: user "{event.user}" may not connect to target "{event.database}"',
                "target not granted",
            )
            return
        self.phase = "CONNECTING"
        self.target_name = event.database
        self._spawn(self._connect_upstream(event), "upstream-connect")

    async def _connect_upstream(self, event: Authenticated) -> None:
        target = self.gateway.config.targets[event.database]
        params = dict(event.forward_params)
        access = getattr(event.identity, "access", {}).get(event.database) if event.identity is not None else None
        if access == "read":
            # Enforced at the database too: the upstream session starts read-only.
            params["default_transaction_read_only"] = "on"
        set_role = self._set_role_for(event, access)
        if set_role is not None:
            params["role"] = set_role
        began = time.perf_counter()
        observer = self.gateway.observers
        try:
            upstream, hs = await open_upstream(target, params, self)
        except UpstreamError as exc:
            observer.upstream_connected(event.database, time.perf_counter() - began, str(exc))
            self._log.warning("upstream login failed for target %s: %s", event.database, exc, extra={"event": "upstream_failed"})
            self.close(
                f"upstream unavailable: {exc}",
                encode.error_response(
                    SQLState.CONNECTION_FAILURE,
                    f'pgwarden: could not connect to target "{event.database}"',
                    severity="FATAL",
                    hint="The gateway log has the reason.",
                ),
            )
            return
        observer.upstream_connected(event.database, time.perf_counter() - began, None)
        if self.phase == "CLOSED":
            upstream.close()
            return
        if hs.server_params.get("standard_conforming_strings", "on") != "on":
            # pgwarden's parser reads SQL as PostgreSQL does only with standard strings.
            upstream.close()
            self._log.error("target %s has standard_conforming_strings off; sessions are refused", event.database,
                            extra={"event": "upstream_failed"})
            self.close(
                "upstream has standard_conforming_strings off",
                encode.error_response(
                    SQLState.FEATURE_NOT_SUPPORTED,
                    f'pgwarden: target "{event.database}" reads SQL with standard_conforming_strings off, '
                    "which pgwarden cannot inspect safely",
                    severity="FATAL",
                ),
            )
            return
        self.upstream = upstream
        self.upstream_key = hs.backend_key
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        info = SessionInfo(
            id=self.id,
            user=event.user,
            target=event.database,
            client_addr=self._peer_text(),
            tls=self.tls,
            application_name=event.startup_params.get("application_name", ""),
            startup_params=dict(event.startup_params),
            server_params=dict(hs.server_params),
            txn_status=hs.txn_status,
        )
        if event.identity is not None:
            info.extra["identity"] = event.identity
        info.extra["auth_method"] = event.method
        if access is not None:
            info.extra["access"] = access
        self.info = info
        pipeline = self.gateway.pipeline
        self.relay = Relay(
            info,
            pipeline.evaluate,
            pipeline.completed if pipeline.wants_completion else None,
            max_message_size=self.gateway.config.listen.max_message_size,
            rewrite_parameter=self._rewrite_parameter,
            capturing=self.gateway.recorder is not None and self.gateway.recorder.results,
        )
        if self.gateway.recorder is not None:
            recorder, session_id = self.gateway.recorder, self.id
            self.relay.notice_hook = lambda body: recorder.notice(session_id, body)
        self.backend_key = self.gateway.issue_backend_key(self)
        out = [encode.auth_ok()]
        for name, value in hs.server_params.items():
            value = self._rewrite_parameter(name, value) or value
            out.append(encode.parameter_status(name, value))
        out.append(encode.backend_key_data(*self.backend_key))
        out.append(encode.ready_for_query(hs.txn_status.encode("ascii")))
        self.transport.write(b"".join(out))  # type: ignore[union-attr]
        self.phase = "RELAY"
        self._auth_event("ok", event.user, target=event.database, method=event.method,
                         identity=event.identity, access=access)
        pipeline.session_started(info)
        self.gateway.session_started(self)
        self._log.info(
            "session started: user %s, target %s, from %s%s",
            info.user,
            info.target,
            info.client_addr,
            f", {info.tls}" if info.tls else ", no TLS",
            extra={"event": "connect", "user": info.user, "target": info.target, "client": info.client_addr,
                   "tls": info.tls, "application_name": info.application_name, "upstream_auth": hs.auth_method},
        )
        self._client_write = self.transport.write  # type: ignore[union-attr]
        # The transports' own write methods, not UpstreamProtocol.write: one
        # Python call less per request. Safe because nothing reaches the relay
        # path once the upstream is gone (upstream_lost tears the session down
        # first), and the transports are not replaced after TLS setup.
        self._upstream_write = upstream.transport.write  # type: ignore[union-attr]
        upstream.start_relaying(self.relay, self._client_write)
        self._arm_expiry(event)
        leftover = (self.handshake.leftover if self.handshake else b"") + self._pending_client
        self._pending_client = b""
        self.handshake = None
        if hs.leftover:
            self.server_data(hs.leftover)
        if leftover:
            self.data_received(leftover)

    def _set_role_for(self, event: Authenticated, access: str | None) -> str | None:
        """The set_role of the role that gives this identity its access to the target."""
        if event.identity is None or access is None:
            return None
        roles = self.gateway.config.roles
        for name in getattr(event.identity, "roles", ()):
            role = roles.get(name)
            if role is not None and event.database in role.targets and role.access == access and role.set_role:
                return role.set_role
        return None

    def _arm_expiry(self, event: Authenticated) -> None:
        """End the session when its token expires or its role's max_session is reached."""
        identity = event.identity
        if identity is None:
            return
        config = self.gateway.config
        now = time.time()
        deadlines: list[tuple[float, str]] = []
        expires_at = getattr(identity, "expires_at", None)
        if expires_at is not None:
            deadlines.append((expires_at + config.identity.expiry_grace, "the access token expired"))
        limits = [
            config.roles[r].max_session
            for r in getattr(identity, "roles", ())
            if r in config.roles and event.database in config.roles[r].targets and config.roles[r].max_session
        ]
        if limits:
            deadlines.append((now + min(limits), "the role's maximum session length was reached"))  # type: ignore[type-var]
        if not deadlines:
            return
        deadline, why = min(deadlines)
        self._expiry = asyncio.get_running_loop().call_later(max(0.0, deadline - now), self._expire, why)

    def _expire(self, why: str) -> None:
        self._expiry = None
        self._fatal(
            SQLState.INVALID_AUTHORIZATION,
            f"pgwarden: session ended because {why}; reconnect with a fresh token",
            f"session expired: {why}",
        )

    def _rewrite_parameter(self, name: str, value: str) -> str | None:
        # Clients see who *they* are, not the upstream login role.
        if name == "session_authorization" and self.info is not None:
            return self.info.user
        return None

    # ------------------------------------------------------------ relay output

    def server_data(self, data: bytes) -> None:
        """Server bytes during RELAY. The hot path does the same inline in
        UpstreamProtocol.data_received (one Python call less per reply); this
        method serves the bytes that arrived with the upstream login."""
        relay = self.relay
        if relay is None or self.phase != "RELAY":
            return
        try:
            relay.server_data(data)
        except Exception as exc:
            self.server_data_failed(exc)
            return
        if self._hold_notice is not None and relay.notice_to_client(self._hold_notice):
            self._hold_notice = None
        out = relay.to_client
        if out:
            self._client_write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        if self.draining:
            self._flush()

    def server_data_failed(self, exc: Exception) -> None:
        if isinstance(exc, ProtocolViolation):
            self._log.error("upstream protocol violation: %s", exc)
            self.close(
                f"upstream protocol violation: {exc}",
                encode.error_response(SQLState.PROTOCOL_VIOLATION, "pgwarden: the upstream broke the protocol", severity="FATAL"),
            )
            return
        self._log.error("internal error handling upstream data", exc_info=exc)
        self._fatal(SQLState.INTERNAL_ERROR, "pgwarden internal error; the session was closed", f"bug: {exc!r}")

    def _flush(self, entries: int = 0) -> None:
        relay = self.relay
        assert relay is not None
        to_server, to_client, commands = relay.to_server, relay.to_client, relay.commands
        if to_server:
            chunk = to_server[0] if len(to_server) == 1 else b"".join(to_server)
            to_server.clear()
            audit = self._audit
            if audit is not None and (self._parked or self.info.audit_ticket > audit.durable):  # type: ignore[union-attr]
                self._audited_write(chunk, entries)
            else:
                self.upstream.write(chunk)  # type: ignore[union-attr]
        if to_client:
            self.transport.write(to_client[0] if len(to_client) == 1 else b"".join(to_client))  # type: ignore[union-attr]
            to_client.clear()
        if commands:
            relay.commands = []
            for command in commands:
                self._command(command)
        if relay.queued_bytes > _MAX_QUEUED:
            self.pause_client_reading("queue")
        elif "queue" in self._pauses:
            self.resume_client_reading("queue")
        if self.draining and relay.idle and self.phase == "RELAY":
            self._close_for_shutdown()

    def _command(self, command: object) -> None:
        if isinstance(command, HoldRequested):
            # Reading goes on while held (the relay queues what arrives, up to
            # _MAX_QUEUED): a client that disconnects during a long hold (an
            # approval) is noticed at once and its request withdrawn.
            self._hold_cancel = command.hold.cancel
            if command.hold.notice:
                notice = encode.notice_response(command.hold.notice)
                relay = self.relay
                if relay is not None and relay.notice_to_client(notice) and self.transport is not None:
                    self.transport.write(b"".join(relay.to_client))
                    relay.to_client.clear()
                else:
                    self._hold_notice = notice
            self._spawn(self._await_hold(command), "hold")
        elif isinstance(command, CloseRequested):
            self.close(command.reason, command.error)
        elif isinstance(command, StageFailed):
            self._log.error("policy stage failed on %r", command.statement, exc_info=command.error)

    async def _await_hold(self, command: HoldRequested) -> None:
        self._log.info("statement held: %s", command.hold.reason, extra={"event": "hold", "rule": command.hold.rule})
        try:
            verdict = await command.hold.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.error("hold failed", exc_info=exc)
            verdict = Deny("pgwarden: the held statement could not be resolved", SQLState.INTERNAL_ERROR, rule=command.hold.rule)
        self.resume_from_hold(verdict)

    def resume_from_hold(self, verdict) -> None:
        if self.phase != "RELAY" or self.relay is None or not self.relay.held:
            return
        self._hold_cancel = None
        before = len(self.relay._pending)
        held = self.relay._held
        if isinstance(verdict, Deny) and held is not None:
            verdict = self.gateway.pipeline.finish(held[0], verdict)
        self.relay.resume(verdict)
        if not self.relay.held:
            self.resume_client_reading("hold")
        self._flush(len(self.relay._pending) - before)

    # ------------------------------------------------------------ write-ahead audit

    def _audited_write(self, chunk: bytes, entries: int) -> None:
        """``chunk`` carries statements whose records are not durable yet.

        With a store that can commit synchronously (the SQLite journal: one
        ``write()``), commit now, one group commit for everything this chunk and
        every other session queued, and send at once; otherwise park the chunk
        until the writer's batch is durable."""
        audit = self._audit
        if not self._parked and audit.inline:  # type: ignore[union-attr]
            audit.flush_now()  # type: ignore[union-attr]
            if self.info.audit_ticket <= audit.durable:  # type: ignore[union-attr]
                self.upstream.write(chunk)  # type: ignore[union-attr]
                return
        self._park(chunk, entries)
        if audit.failed is not None and audit.inline:  # type: ignore[union-attr]
            self.audit_failed()

    def _park(self, chunk: bytes, entries: int) -> None:
        """Hold output to PostgreSQL until the audit writer has made its records durable."""
        if not self._parked:
            self._audit.gate(self)  # type: ignore[union-attr]
        self._parked.append(chunk)
        self._parked_entries += entries
        if sum(map(len, self._parked)) > _MAX_QUEUED:
            self.pause_client_reading("audit")

    def audit_released(self) -> None:
        """The writer made this session's records durable: send what was parked."""
        if not self._parked:
            return
        data = b"".join(self._parked)
        self._parked.clear()
        self._parked_entries = 0
        if self.phase == "RELAY" and self.upstream is not None and not self.upstream.closed:
            self._upstream_write(data)
        self.resume_client_reading("audit")

    def audit_failed(self) -> None:
        """The audit store failed with output parked: refuse it (or, if so configured, send it)."""
        if not self._parked or self.phase != "RELAY" or self.relay is None:
            return
        if not self.gateway.recorder.refuse:  # type: ignore[union-attr]
            self._log.error("audit trail unavailable: forwarding unrecorded statements (on_audit_failure: allow_and_alert)",
                            extra={"event": "audit_bypassed"})
            self.audit_released()
            return
        from ..policy.stages.recorder import AUDIT_DENY

        self._parked.clear()
        entries, self._parked_entries = self._parked_entries, 0
        replacement = self.relay.refuse_unsent(entries, AUDIT_DENY)
        self._log.warning("audit trail unavailable: refused %d parked message(s)", entries,
                          extra={"event": "refused", "rule": "audit.unavailable"})
        if replacement and self.upstream is not None and not self.upstream.closed:
            self._upstream_write(replacement)
        self.resume_client_reading("audit")
        self._flush()

    # ------------------------------------------------------------ cancel & shutdown

    def cancel(self, client: str | None = None) -> None:
        """A valid CancelRequest for this session arrived."""
        if self.gateway.recorder is not None and self.phase == "RELAY":
            self.gateway.recorder.cancelled(self.id, client, bool(self.relay is not None and self.relay.held))
        if self.relay is not None and self.relay.held:
            for task in list(self._tasks):
                if task.get_name().startswith("hold["):
                    task.cancel()
            if self._hold_cancel is not None:
                self._hold_cancel()
            self.resume_from_hold(Deny("canceling statement due to user request", SQLState.QUERY_CANCELED, rule="client.cancel"))
            return
        if self.upstream_key is not None and self.target_name is not None:
            self.gateway.forward_cancel(self.target_name, *self.upstream_key)

    def start_draining(self) -> None:
        self.draining = True
        if self.phase != "RELAY":
            self._fatal(SQLState.ADMIN_SHUTDOWN, "terminating connection due to administrator command", "gateway shutting down")
        elif self.relay is not None and self.relay.idle:
            self._close_for_shutdown()

    def _close_for_shutdown(self) -> None:
        self._fatal(SQLState.ADMIN_SHUTDOWN, "terminating connection due to administrator command", "gateway shutting down")

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.phase == "CLOSED":
            return
        if self.relay is not None and self.relay.closed:
            self.close("client terminated")
            return
        self._fatal(
            SQLState.ADMIN_SHUTDOWN if exc is None else SQLState.CONNECTION_FAILURE,
            "pgwarden: the upstream server closed the connection",
            "upstream closed the connection",
        )

    # ------------------------------------------------------------ flow control

    def pause_client_reading(self, reason: str) -> None:
        if not self._pauses and self.transport is not None:
            try:
                self.transport.pause_reading()
            except (AttributeError, RuntimeError):
                pass
        self._pauses.add(reason)

    def resume_client_reading(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            try:
                self.transport.resume_reading()
            except (AttributeError, RuntimeError):
                pass

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None and not self.upstream.closed:
            self.upstream.transport.resume_reading()
