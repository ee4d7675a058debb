"""MySQL/MariaDB wire protocol: the gateway's front (server) side and upstream (client) side.

Layers, as for PostgreSQL (DESIGN §8, h11/asyncpg style):

* ``packets``  -- framing: 3-byte length + sequence id, 16 MiB splitting, length-encoded values.
* ``flags``    -- capability and status flags; the capability sets the gateway offers and passes on.
* ``handshake`` -- login packets: HandshakeV10, SSLRequest, HandshakeResponse41, COM_CHANGE_USER.
* ``auth_packets`` -- auth plugin names and the auth round trips' packets (AuthSwitchRequest, ...).
* ``ok_err_eof`` -- the OK, ERR and EOF packets. (``messages`` re-exports these four for the tests.)
* ``auth_plugins`` -- the auth plugins' math: scrambles and the RSA-encrypted password.
* ``auth_exchange`` -- the upstream auth plugin exchange as a table (``UpstreamAuth``).
* ``auth``     -- the table-driven upstream login (``UpstreamLogin``).
* ``commands`` -- client command classification and the prepared-statement id -> SQL map.
* ``response_control`` -- response kinds, the scanner's phases, the packets it parses whole.
* ``responses`` -- the response scanner: follows a command's answer without decoding rows.
* ``kill``     -- ``KILL [QUERY|CONNECTION] <id>`` recognition (gateway ids -> upstream threads).
* ``machine``  -- the front connection's phases as a table-driven, sans-I/O state machine.
* ``tlsbio``   -- server-side TLS over MemoryBIO (clients pipeline their ClientHello).

Those are pure (no sockets, no asyncio). The asyncio glue on top: ``channel`` (the two transports),
``upstream`` (the gateway's own login to the database), ``session`` (one per client connection; one
mixin module per phase: ``session_login``, ``session_commands``, ``session_kill``, ``session_policy``,
``session_audit``, ``session_close``), ``registry`` (gateway connection ids for KILL) and ``server`` (the listener).
"""

from .server import MysqlListener, start_mysql_listener

__all__ = ["MysqlListener", "start_mysql_listener"]
