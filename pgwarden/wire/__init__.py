"""Sans-IO PostgreSQL protocol 3.0 codec: frame splitting, message views, encoders.

No sockets and no asyncio here: bytes in, messages out; messages in, bytes out.
"""

from . import encode, messages
from .constants import B, F, SQLState
from .frames import FrameBuffer, ProtocolViolation, StartupBuffer

__all__ = ["B", "F", "FrameBuffer", "ProtocolViolation", "SQLState", "StartupBuffer", "encode", "messages"]
