"""One incremental verification of the audit chain, in its own process (``python -m pgwarden.alerts.verifier``).

Why a process and not a thread: verification hashes and decodes every new
record; in a thread of the gateway it would hold the GIL against the event
loop and slow the data path. A separate process (at a lower CPU priority)
costs the gateway nothing but a pipe. It opens the store read-only like
``pgwarden audit verify`` does, so it also sees records a live writer has
only in its journal.

Input (stdin, JSON, so a DSN never appears in ``ps``): ``{"type": "sqlite" |
"postgres", "path", "dsn", "key_file", "start"}``. Output (stdout): the
report as ``VerifyReport.as_dict()``. Exit 0 when it ran (whatever it found),
2 when it could not.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "spec_for", "run_verification"]


def spec_for(config: Any, start: int) -> dict[str, Any]:
    """What the child needs of the config (the store and the key file), from ``start``."""
    store = config.audit.store
    return {"type": store.type, "path": str(store.path), "dsn": store.dsn,
            "key_file": str(config.audit.checkpoints.key_file), "start": start}


async def _verify(spec: dict[str, Any]) -> dict[str, Any]:
    from ..store.verify import verify_store

    if spec["type"] == "postgres":
        from ..store.postgres import PostgresAuditStore

        store: Any = PostgresAuditStore(spec["dsn"] or "")
    else:
        from ..store.sqlite import SqliteAuditStore

        store = SqliteAuditStore(Path(spec["path"]))
    await store.open(create=False)
    try:
        report = await verify_store(store, start=int(spec["start"]), key_file=Path(spec["key_file"]))
    finally:
        await store.close()
    return report.as_dict()


async def run_verification(spec: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    """Run the child from the gateway's loop; raises RuntimeError when it could not verify."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pgwarden.alerts.verifier",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(spec).encode()), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(text[-1] if text else f"the verifier exited with {proc.returncode}")
    return json.loads(out)


def main() -> int:
    try:
        os.nice(10)  # verification may wait; the gateway's sessions may not
    except OSError:
        pass
    try:
        spec = json.loads(sys.stdin.read())
        report = asyncio.run(_verify(spec))
    except Exception as exc:  # noqa: BLE001 - reported to the gateway, which logs it
        print(f"verification could not run: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
