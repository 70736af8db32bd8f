"""Policy: the ordered pipeline of stages that decides about every statement."""

from ..session.statement import AuthEvent, Kind, Protocol, SessionInfo, Statement
from ..session.verdict import ALLOW, Allow, Deny, Hold, Rewrite, Verdict
from .pipeline import Pipeline, Stage

__all__ = [
    "ALLOW",
    "Allow",
    "AuthEvent",
    "Deny",
    "Hold",
    "Kind",
    "Pipeline",
    "Protocol",
    "Rewrite",
    "SessionInfo",
    "Stage",
    "Statement",
    "Verdict",
]
