"""pgwarden: an identity-aware Layer-7 gateway for PostgreSQL."""

__version__ = "0.1.0"
