"""Verdicts: what a policy stage decides about one statement. A small closed type.

The session state machine understands exactly these four shapes; the policy
package produces them (and re-exports them as ``pgwarden.policy``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..wire.constants import SQLState

__all__ = ["ALLOW", "Allow", "Deny", "Hold", "Rewrite", "Verdict"]


@dataclass(frozen=True, slots=True)
class Allow:
    """Forward the statement (to the next stage, then upstream)."""


ALLOW = Allow()


@dataclass(frozen=True, slots=True)
class Deny:
    """Refuse the statement with an ErrorResponse; the session stays usable."""

    message: str
    sqlstate: str = SQLState.INSUFFICIENT_PRIVILEGE
    rule: str | None = None
    detail: str | None = None
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """Pause this session (only this one) until ``wait()`` resolves to a verdict.

    ``wait`` returns ALLOW to continue with the next stage, or a Deny. The
    driver awaits it; the state machine stays free of asyncio. ``cancel`` is
    called when the client withdraws (CancelRequest or disconnect). ``notice``,
    if set, is sent to the client as a NoticeResponse as soon as the hold
    starts (psql prints it at once), so a person knows why nothing happens.
    """

    wait: Callable[[], Awaitable["Verdict"]]
    reason: str = ""
    rule: str | None = None
    cancel: Callable[[], None] | None = None
    notice: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Replace the statement text and continue with the next stage."""

    text: str
    rule: str | None = None


Verdict = Allow | Deny | Hold | Rewrite
