#!/usr/bin/env python3
"""Micro-benchmark of DataRow masking: rows/s of ``RowMasker.data_rows`` alone.

    python bench/masking_rows.py              # 100k rows, best of 7 runs
    python bench/masking_rows.py -n 200000 --masked 0,1,3 --repeat 5

Why it exists: masked results must stream at >= 250,000 rows/s through the
whole relay (8 columns, 2 masked), which leaves the row loop about 1.5 µs per
row. This measures that loop without sockets or a relay, on one buffer of
realistic rows (an id, an email, a name, an SSN, a timestamp, a price that is
sometimes NULL, a boolean, a note), with trivial maskers, so the number is the
cost of the rewriting itself. ``--noop`` makes the maskers return their input
(as content detectors do when they find nothing): the unchanged-row path.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgwarden.policy.masking.rows import RowMasker  # noqa: E402

_I32 = struct.Struct("!i")


def data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values)) + b"".join(
        b"\xff\xff\xff\xff" if v is None else _I32.pack(len(v)) + v for v in values
    )
    return b"D" + _I32.pack(len(body) + 4) + body


def make_rows(n: int) -> bytes:
    rows = []
    for i in range(n):
        rows.append(
            data_row(
                [
                    str(i + 1).encode(),
                    b"customer%d@example.com" % i,
                    b"Alice Liddell",
                    b"%03d-%02d-%04d" % (i % 1000, i % 100, i % 10000),
                    b"2024-03-01 12:34:56.789+00",
                    None if i % 7 == 0 else b"%d.%02d" % (i % 500, i % 100),
                    b"t" if i % 2 else b"f",
                    b"note about order %d, shipped" % i,
                ]
            )
        )
    return b"".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="rows in the buffer")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is reported")
    parser.add_argument("--masked", default="1,3", help="0-based masked columns (default 1,3)")
    parser.add_argument("--noop", action="store_true", help="maskers return their input unchanged")
    args = parser.parse_args()

    buf = make_rows(args.n)
    masked = [int(c) for c in args.masked.split(",") if c]
    if args.noop:
        maskers = [(c, lambda v: v) for c in masked]
    else:
        maskers = [(c, lambda v: b"****") for c in masked]
    best = float("inf")
    for _ in range(args.repeat):
        rm = RowMasker(maskers, 8)
        out: list[bytes] = []
        t0 = time.perf_counter()
        stop = rm.data_rows(buf, 0, len(buf), out)
        best = min(best, time.perf_counter() - t0)
        assert stop == len(buf) and rm.rows == args.n
    rate = args.n / best
    print(
        f"data_rows: {args.n} rows x 8 columns, {len(masked)} masked"
        f"{' (no-op maskers)' if args.noop else ''}, {len(buf) / args.n:.0f} bytes/row"
    )
    print(f"best of {args.repeat}: {best * 1e3:.1f} ms, {best / args.n * 1e6:.2f} µs/row, {rate:,.0f} rows/s")
    print(f"Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
