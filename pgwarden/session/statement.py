"""The one ``Statement`` shape every policy stage sees, for both query protocols.

A simple Query becomes one Statement (kind ``query``); in the extended protocol a
Parse becomes a Statement of kind ``parse`` (the text is being prepared) and each
Execute one of kind ``execute`` (the text and the Bind parameters that run). A
FunctionCall becomes kind ``function_call`` and is always refused.

Statements are mutable, long-lived only while in flight: the relay fills in the
outcome (command tag, error, timing) when the upstream's reply completes, then
hands it to the pipeline's ``completed`` hooks. Bind parameters are decoded only
when someone reads ``params`` (the fast path never does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..wire import messages
from .verdict import Verdict

__all__ = ["AuthEvent", "Statement", "SessionInfo", "Protocol", "Kind"]


class Protocol:
    SIMPLE = "simple"
    EXTENDED = "extended"


class Kind:
    QUERY = "query"
    PARSE = "parse"
    EXECUTE = "execute"
    FUNCTION_CALL = "function_call"


@dataclass(slots=True)
class SessionInfo:
    """What stages may know about the session a statement belongs to."""

    id: str
    user: str
    target: str
    client_addr: str
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"
    application_name: str = ""
    startup_params: dict[str, str] = field(default_factory=dict)
    server_params: dict[str, str] = field(default_factory=dict)
    txn_status: str = "I"
    extra: dict[str, Any] = field(default_factory=dict)
    # The audit writer's ticket of this session's latest write-ahead record: its
    # output to PostgreSQL waits until the writer has made that ticket durable.
    audit_ticket: int = 0
    # Bytes received from the client and from the upstream (metrics, exfiltration alerts).
    bytes_from_client: int = 0
    bytes_from_server: int = 0


@dataclass(frozen=True, slots=True)
class AuthEvent:
    """One authentication outcome, handed to stages' ``authenticated`` hooks (for the recorder).

    ``reason`` is the exact reason a login was refused; the client was only told
    that authentication failed.
    """

    session_id: str
    outcome: str  # "ok" | "refused"
    user: str
    client_addr: str
    tls: str | None
    target: str | None = None
    method: str | None = None  # scram-sha-256 | password (token or API key)
    subject: str | None = None
    issuer: str | None = None
    roles: tuple[str, ...] = ()
    access: str | None = None
    reason: str = ""
    at: float = field(default_factory=time.time)


class Statement:
    __slots__ = (
        "kind",
        "protocol",
        "text",
        "session",
        "request",
        "statement_name",
        "portal_name",
        "param_types",
        "_bind_body",
        "_params",
        "verdict",
        "started_ns",
        "duration_ns",
        "tags",
        "error",
        "status",
        "next_stage",
        "decision",
        "capture",
        "number",
        "mask",
        "approval",
    )

    def __init__(
        self,
        kind: str,
        protocol: str,
        text: str | None,
        session: SessionInfo,
        request: int,
        statement_name: str | None = None,
        portal_name: str | None = None,
        param_types: tuple[int, ...] = (),
        bind_body: tuple[bytes, int, int] | None = None,
    ) -> None:
        # One is built for every Query, Parse and Execute: the relay passes all
        # arguments by position (cheaper than keywords), and the defaults below
        # are constants, so construction is a run of slot stores.
        self.kind = kind
        self.protocol = protocol
        self.text = text
        self.session = session
        self.request = request
        self.statement_name = statement_name
        self.portal_name = portal_name
        self.param_types = param_types
        self._bind_body = bind_body
        self._params: tuple[bytes | None, ...] | None = None
        self.verdict: Verdict | None = None
        self.started_ns = 0
        self.duration_ns = 0
        self.tags: list[str] = []
        self.error: messages.ErrorFields | None = None
        # pending -> ok | error | denied | skipped (discarded after an earlier error)
        self.status = "pending"
        # Index of the first policy stage still to run (set by the pipeline on a hold).
        self.next_stage = 0
        # What the guardrails decided and why (a pgwarden.policy.rules.Decision), for the recorder.
        self.decision = None
        # The recorder's ResultCapture (rows, notices, COPY volumes) and the
        # statement's number within its session (pairs its statement and result records).
        self.capture = None
        self.number = 0
        # The masking stage's plan source for this statement's results (a
        # pgwarden.policy.masking StatementMask), or None: results pass untouched.
        self.mask = None
        # The approval that let this statement run or refused it (a dict the
        # recorder writes into the statement record), or None.
        self.approval = None

    def _bind(self) -> messages.Bind | None:
        if self._bind_body is None:
            return None
        buf, start, stop = self._bind_body
        return messages.decode_bind(buf[start:stop])

    @property
    def params(self) -> tuple[bytes | None, ...]:
        """Bind parameters as raw bytes (decoded on first use; None for SQL NULL)."""
        if self._params is None:
            bind = self._bind()
            self._params = bind.params if bind is not None else ()
        return self._params

    @property
    def param_formats(self) -> tuple[int, ...]:
        bind = self._bind()
        return bind.param_formats if bind is not None else ()

    @property
    def tag(self) -> str | None:
        return self.tags[-1] if self.tags else None

    def mark_started(self) -> None:
        self.started_ns = time.perf_counter_ns()

    def finish(self, status: str) -> None:
        self.status = status
        if self.started_ns:
            self.duration_ns = time.perf_counter_ns() - self.started_ns

    def __repr__(self) -> str:
        text = self.text if self.text is None or len(self.text) < 60 else self.text[:57] + "..."
        return f"<Statement {self.kind} {self.protocol} {text!r} {self.status}>"
