"""Server-side TLS as a sans-I/O layer (``ssl.MemoryBIO``) for the front leg.

Why not ``loop.start_tls``: a MySQL client sends its TLS ClientHello right behind the SSLRequest
without waiting for an answer (the server sends none), so those bytes are often already read into
the gateway's buffer when the SSLRequest is parsed. ``start_tls`` cannot be handed bytes already
read; a MemoryBIO session can (``pending``). Ciphertext in, plaintext out, and the other way round.
"""

from __future__ import annotations

import ssl

from .errors import ER_HANDSHAKE_ERROR, ClientProtocolError

_READ_CHUNK = 1 << 16


class TLSServerSession:
    def __init__(self, context: ssl.SSLContext, pending: bytes = b""):
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self.handshake_done = False
        self.closed = False  # the client sent close_notify or the stream ended
        if pending:
            self._incoming.write(pending)

    def receive(self, ciphertext: bytes) -> bytes:
        """Feed bytes from the socket (b"" = EOF); returns the plaintext they complete (maybe b"")."""
        if ciphertext:
            self._incoming.write(ciphertext)
        else:
            self._incoming.write_eof()
        return self._pump()

    def start(self) -> bytes:
        """Process ``pending`` (if any); returns plaintext already available (normally b"")."""
        return self._pump()

    def send(self, plaintext: bytes) -> None:
        if plaintext:
            try:
                self._tls.write(plaintext)
            except ssl.SSLError as exc:
                raise ClientProtocolError(f"TLS error: {exc.reason or exc}", code=ER_HANDSHAKE_ERROR) from None

    def data_to_send(self) -> bytes:
        """Ciphertext for the socket (handshake records, encrypted data, alerts)."""
        return self._outgoing.read()

    def _pump(self) -> bytes:
        try:
            if not self.handshake_done:
                try:
                    self._tls.do_handshake()
                except ssl.SSLWantReadError:
                    return b""
                self.handshake_done = True
            out = []
            while True:
                try:
                    chunk = self._tls.read(_READ_CHUNK)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self.closed = True
                    break
                if not chunk:
                    self.closed = True
                    break
                out.append(chunk)
            return b"".join(out)
        except ssl.SSLEOFError:
            self.closed = True
            return b""
        except ssl.SSLError as exc:
            raise ClientProtocolError(f"TLS handshake with the client failed: {exc.reason or exc}",
                                      code=ER_HANDSHAKE_ERROR) from None

    @property
    def version(self) -> str | None:
        return self._tls.version() if self.handshake_done else None
