"""Frame splitting: find message boundaries by reading only the 5-byte headers.

Theory of operation
-------------------
A protocol 3.0 stream after startup is a sequence of ``type(1) length(4) body``
frames, where ``length`` counts itself but not the type byte. The splitter never
looks inside a body: it hands out ``(type, start, end)`` offsets into an immutable
``bytes`` object, so callers can forward the exact bytes they received (slicing
only when they must) and decode a body lazily, only when a policy needs it.

A frame that spans reads is kept as a list of chunks and joined once, when its
declared length has arrived (asyncpg's ReadBuffer keeps a queue of chunks for
the same reason), so a large message costs one copy however it is split. A declared length below 4 or above ``max_size`` is a
:class:`ProtocolViolation`, raised before any memory is reserved for it, so a
hostile peer announcing a 1 GiB message costs nothing.

Startup-phase packets have no type byte; :class:`StartupBuffer` splits those.
"""

from __future__ import annotations

import struct

from .constants import MAX_STARTUP_PACKET

__all__ = ["FrameBuffer", "ProtocolViolation", "StartupBuffer", "invalid_length", "unpack_int32", "unpack_int16", "unpack_uint32"]

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")

#: ``unpack_int32(buf, offset) -> (value,)`` without building an intermediate slice.
unpack_int32 = _I32.unpack_from
unpack_uint32 = _U32.unpack_from
unpack_int16 = _I16.unpack_from


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol stream."""


class FrameBuffer:
    """Split a typed message stream; see the module docstring."""

    __slots__ = ("_chunks", "_have", "_need", "max_size")

    def __init__(self, max_size: int) -> None:
        # An unfinished message is kept as a list of chunks and joined once,
        # when ``_need`` bytes have arrived: a 64 MiB message read 64 KiB at a
        # time costs one copy, not a thousand.
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self.max_size = max_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return self._have

    @property
    def partial(self) -> bool:
        """True while an unfinished message is buffered."""
        return bool(self._chunks)

    def feed(self, data: bytes, start: int = 0) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Add received bytes; return the buffer and the complete frames in it.

        Each frame is ``(type, start, end)``: ``buf[start:end]`` is the whole
        message including its header, ``buf[start + 5:end]`` its body.
        ``start`` skips bytes at the front of ``data`` that the caller already
        handled (only when nothing is buffered): the relay's fast path splits
        frames itself and hands over the rest of a chunk this way, without a copy.
        """
        if self._chunks:
            if start:
                data = data[start:]
                start = 0
            self._chunks.append(bytes(data))
            self._have += len(data)
            if self._have < self._need:
                return b"", []
            buf = b"".join(self._chunks)
            self._chunks = []
            self._have = 0
        else:
            buf = data if isinstance(data, bytes) else bytes(data)
        frames: list[tuple[int, int, int]] = []
        pos = start
        end = len(buf)
        unpack = unpack_uint32
        limit = self.max_size
        need = 0
        while end - pos >= 5:
            length = unpack(buf, pos + 1)[0]
            if length < 4 or length > limit:
                raise invalid_length(buf[pos], length, limit)
            stop = pos + 1 + length
            if stop > end:
                need = 1 + length
                break
            frames.append((buf[pos], pos, stop))
            pos = stop
        if pos < end:
            tail = buf[pos:]
            self._chunks = [tail]
            self._have = len(tail)
            self._need = need or 5
        return buf, frames

    def take_tail(self) -> bytes:
        """Remove and return the unfinished tail (used when the stream changes hands)."""
        tail = b"".join(self._chunks)
        self._chunks = []
        self._have = 0
        self._need = 0
        return tail


class StartupBuffer:
    """Split untyped startup packets: ``length(4) payload``.

    Returns each complete packet's payload (without the length word). Any bytes
    that follow are kept; :attr:`buffered` tells the caller whether a client sent
    data after an SSLRequest before TLS was set up (which must be refused).
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > 2 * MAX_STARTUP_PACKET:
            raise ProtocolViolation("startup data exceeds the startup packet limit")

    def next_packet(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 4:
            return None
        length = unpack_uint32(buf, 0)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolViolation(f"invalid startup packet length {length}")
        if len(buf) < length:
            return None
        self._buf = buf[length:]
        return buf[4:length]

    def take_rest(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


def invalid_length(t: int, length: int, limit: int) -> ProtocolViolation:
    """The error for a frame header announcing an impossible length (shared with the relay's fast path)."""
    return ProtocolViolation(
        f"invalid message length {length} for message type {_show_type(t)}"
        + (f" (limit {limit})" if length > limit else "")
    )


def _show_type(t: int) -> str:
    return repr(chr(t)) if 32 <= t < 127 else f"0x{t:02x}"
