"""The statement pipeline: an ordered list of stages, each returning a verdict.

A stage is any object with a ``name`` and a ``check(statement) -> Verdict | None``
method (``None`` means allow); it may also have ``completed(statement)``, called
once the upstream's reply to the statement is complete (or it was refused or
skipped), ``session_started(info)`` / ``session_ended(info, reason)``, and
``authenticated(event)`` for every login outcome (an :class:`AuthEvent`).

Evaluation stops at the first Deny or Hold. A Rewrite changes the statement text
and evaluation continues with the next stage, which sees the new text; the final
verdict is then a Rewrite carrying the last text. On a Hold the pipeline notes in
``statement.next_stage`` where to continue once the hold resolves to ALLOW.

Later issues add identity, guardrails, approvals, masking and recording as stages;
this one ships :class:`~pgwarden.policy.stages.log.StatementLogStage`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..observe import Observer, overridden
from ..session.statement import AuthEvent, SessionInfo, Statement
from ..session.verdict import ALLOW, Allow, Deny, Hold, Rewrite, Verdict
from ..wire.constants import SQLState

__all__ = ["Pipeline", "Stage"]

log = logging.getLogger("pgwarden.policy")


@runtime_checkable
class Stage(Protocol):
    name: str

    def check(self, statement: Statement) -> Verdict | None: ...


class Pipeline:
    def __init__(self, stages: Sequence[Stage], recorder: Any = None, observers: Sequence[Any] = ()) -> None:
        self.stages: tuple[Stage, ...] = tuple(stages)
        self._checkers = tuple(s.check for s in self.stages)
        # The recorder sees every statement's final verdict (and may change it to a
        # refusal while the audit trail is down), then its completion, last.
        # Observers (pgwarden/observe.py: metrics, alerts) come after it: they see
        # the verdict the client gets and the records already submitted.
        self.recorder = recorder
        self.observers = tuple(observers)
        watchers = list(self.observers)
        hooks: list[Any] = list(self.stages) + ([recorder] if recorder is not None else [])

        def implemented(obj: Any, hook: str) -> bool:
            return overridden(obj, hook) if isinstance(obj, Observer) else callable(getattr(obj, hook, None))

        self._deciders = tuple(o.decided for o in watchers if implemented(o, "decided"))
        if recorder is not None or self._deciders:
            self._plain_evaluate = self.evaluate
            self.evaluate = self._evaluate_recorded  # type: ignore[method-assign]
        hooks += watchers
        self._completers = tuple(s.completed for s in hooks if implemented(s, "completed"))
        # The recorder's connect record comes first, its disconnect record last.
        starters = ([recorder] if recorder is not None else []) + list(self.stages) + watchers
        self._starters = tuple(s.session_started for s in starters if implemented(s, "session_started"))
        self._enders = tuple(s.session_ended for s in hooks if implemented(s, "session_ended"))
        self._auth_hooks = tuple(s.authenticated for s in hooks if implemented(s, "authenticated"))

    def evaluate(self, statement: Statement, first_stage: int = 0) -> Verdict:
        # Hot path: every statement passes here, and nearly every verdict is None.
        index = first_stage
        checkers = self._checkers
        for check in checkers[first_stage:] if first_stage else checkers:
            verdict = check(statement)
            if verdict is None or verdict.__class__ is Allow:
                index += 1
                continue
            return self._resolve(statement, verdict, index)
        return ALLOW

    def _evaluate_recorded(self, statement: Statement, first_stage: int = 0) -> Verdict:
        verdict = self._plain_evaluate(statement, first_stage)
        if verdict.__class__ is Hold:
            return verdict  # recorded once it resolves
        return self.finish(statement, verdict)

    def finish(self, statement: Statement, verdict: Verdict) -> Verdict:
        """The final verdict of ``statement``, told to the recorder (which may refuse it while the
        trail is down) and then to the observers. Also called directly for a held statement that
        resolved to a refusal (denied, timed out, withdrawn): the relay applies it without
        evaluating again, so the recorder and the observers hear of it here."""
        if self.recorder is not None:
            verdict = self.recorder.decided(statement, verdict)
        for decided in self._deciders:
            try:
                decided(statement, verdict)
            except Exception:
                log.exception("decided hook failed", extra={"session": statement.session.id})
        return verdict

    def _resolve(self, statement: Statement, verdict: Verdict, index: int) -> Verdict:
        """A stage said something other than allow: apply it, continuing after a Rewrite."""
        if isinstance(verdict, Rewrite):
            statement.text = verdict.text
            rest = Pipeline.evaluate(self, statement, index + 1)
            return verdict if rest.__class__ is Allow else rest
        if isinstance(verdict, Hold):
            statement.next_stage = index + 1
            return verdict
        if isinstance(verdict, Deny):
            return verdict
        return Deny(
            f"pgwarden: stage {self.stages[index].name!r} returned an invalid verdict",
            SQLState.INTERNAL_ERROR,
            rule="pipeline.invalid_verdict",
        )

    @property
    def wants_completion(self) -> bool:
        return bool(self._completers)

    def completed(self, statement: Statement) -> None:
        for hook in self._completers:
            try:
                hook(statement)
            except Exception:
                log.exception("completed hook failed", extra={"session": statement.session.id})

    def session_started(self, info: SessionInfo) -> None:
        for hook in self._starters:
            try:
                hook(info)
            except Exception:
                log.exception("session_started hook failed", extra={"session": info.id})

    def authenticated(self, event: AuthEvent) -> None:
        for hook in self._auth_hooks:
            try:
                hook(event)
            except Exception:
                log.exception("authenticated hook failed", extra={"session": event.session_id})

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        for hook in self._enders:
            try:
                hook(info, reason)
            except Exception:
                log.exception("session_ended hook failed", extra={"session": info.id})
