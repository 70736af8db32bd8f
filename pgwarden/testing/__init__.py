"""Test helpers shipped with the package: a real PostgreSQL, an in-process gateway, test stages."""
