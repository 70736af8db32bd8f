"""Protocol 3.0 constants: message type bytes, special request codes, SQLSTATEs.

Type bytes are kept as ints because indexing ``bytes`` yields ints, and the frame
loops compare ``buf[pos]`` against these constants directly.
"""

from __future__ import annotations

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Largest startup packet PostgreSQL accepts (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
# Largest message a client may send before it is authenticated.
MAX_PREAUTH_MESSAGE = 65536


class F:
    """Frontend (client -> server) message types."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    PASSWORD = ord("p")  # also SASLInitialResponse / SASLResponse / GSSResponse
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class B:
    """Backend (server -> client) message types."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_BOTH_RESPONSE = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


class Auth:
    """Authentication request codes carried by 'R' messages."""

    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


class SQLState:
    """The SQLSTATEs pgwarden answers with."""

    SUCCESSFUL = "00000"
    CONNECTION_EXCEPTION = "08000"
    CONNECTION_FAILURE = "08006"
    SQLCLIENT_UNABLE_TO_ESTABLISH = "08001"
    PROTOCOL_VIOLATION = "08P01"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_AUTHORIZATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CATALOG_NAME = "3D000"
    INSUFFICIENT_PRIVILEGE = "42501"
    SYNTAX_ERROR = "42601"
    UNDEFINED_OBJECT = "42704"
    TOO_MANY_CONNECTIONS = "53300"
    OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
    QUERY_CANCELED = "57014"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    INTERNAL_ERROR = "XX000"
