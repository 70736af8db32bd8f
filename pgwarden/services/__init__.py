"""Operations shared by the CLI, the HTTP API and the MCP endpoint (no I/O framework here)."""
