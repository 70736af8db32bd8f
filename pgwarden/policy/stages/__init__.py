"""Built-in policy stages."""

from .log import StatementLogStage

__all__ = ["StatementLogStage"]
