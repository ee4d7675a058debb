"""The packet vocabulary under its old name: re-exports only, no code of its own.

The packets the gateway builds and parses used to live here. They are now split by protocol phase,
and the gateway's code imports them from there:

* ``flags``        -- capability and status flags, the capability sets the gateway offers.
* ``handshake``    -- HandshakeV10, SSLRequest, HandshakeResponse41, COM_CHANGE_USER.
* ``auth_packets`` -- auth plugin names, AuthSwitchRequest / AuthMoreData, the clear-password token.
* ``ok_err_eof``   -- the OK, ERR and EOF packets.

What is left here keeps the tests' ``from sdm_proxy.wire.mysql.messages import ...`` working.
"""

# re-exported: used by tests/wire/mysql/ (mysql_raw, test_mysql_auth, test_mysql_fuzz,
# test_mysql_listener_fuzz, test_mysql_machine, test_mysql_messages, test_mysql_real_server)
from .auth_packets import (
    CACHING_SHA2,
    CLEAR_PASSWORD,
    MAX_TOKEN_LENGTH,
    NATIVE_PASSWORD,
    SHA256_PASSWORD,
    AuthMoreData,
    AuthSwitch,
    build_auth_switch,
    build_clear_password_switch,
    parse_auth_reply,
    parse_clear_password,
)

# re-exported: used by tests/wire/mysql/ (mysql_raw, test_mysql_auth, test_mysql_commands, test_mysql_fuzz,
# test_mysql_machine, test_mysql_messages, test_mysql_real_server, mysql_wire_builders)
from .flags import Cap, Status, front_capabilities

# re-exported: used by tests/wire/mysql/ (mysql_raw, test_mysql_auth, test_mysql_fuzz, test_mysql_listener_fuzz,
# test_mysql_machine, test_mysql_messages, test_mysql_real_server)
from .handshake import (
    HandshakeResponse,
    SSLRequest,
    build_handshake,
    build_handshake_response,
    build_ssl_request,
    new_scramble,
    parse_change_user,
    parse_client_hello,
    parse_handshake,
)

# re-exported: used by tests/wire/mysql/ (mysql_wire_builders, test_mysql_auth, test_mysql_commands,
# test_mysql_machine, test_mysql_messages, test_mysql_real_server)
from .ok_err_eof import (
    ErrPacket,
    OkPacket,
    build_eof,
    build_err,
    build_err_for,
    build_ok,
    parse_eof,
    parse_err,
    parse_ok,
)

__all__ = [
    "CACHING_SHA2", "CLEAR_PASSWORD", "MAX_TOKEN_LENGTH", "NATIVE_PASSWORD", "SHA256_PASSWORD", "AuthMoreData",
    "AuthSwitch", "Cap", "ErrPacket", "HandshakeResponse", "OkPacket", "SSLRequest", "Status", "build_auth_switch",
    "build_clear_password_switch", "build_eof", "build_err", "build_err_for", "build_handshake",
    "build_handshake_response", "build_ok", "build_ssl_request", "front_capabilities", "new_scramble",
    "parse_auth_reply", "parse_change_user", "parse_clear_password", "parse_client_hello", "parse_eof",
    "parse_err", "parse_handshake", "parse_ok",
]
