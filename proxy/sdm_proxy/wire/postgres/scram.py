"""SCRAM-SHA-256 client (RFC 5802 / 7677) for the gateway's upstream login, plus a derived-key cache.

Why a cache: PBKDF2 with 4096+ iterations costs milliseconds per login, which is most of a connect.
What is cached is only ``ClientKey`` and ``ServerKey``, keyed by (datasource, credential, version,
salt, iterations): the plain password is never kept (DESIGN §2.1), and a password changed on the
server side comes with a new salt, so a stale entry is simply never hit.

The server signature is always verified: an upstream that cannot prove it knows the verifier is
refused even if it then says AuthenticationOk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import stringprep
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from .errors import UpstreamLoginError

MECHANISM = "SCRAM-SHA-256"
MAX_ITERATIONS = 100_000  # bound the work a hostile upstream can make us do (PostgreSQL uses 4096)
MAX_SALT_BYTES = 256  # PostgreSQL's salt is 16 bytes
GS2_HEADER = b"n,,"  # no channel binding (we offer none, so a PLUS-capable server cannot claim a downgrade)


@dataclass(frozen=True)
class DerivedKeys:
    client_key: bytes
    server_key: bytes

    def __repr__(self) -> str:
        return "DerivedKeys(***)"


class ScramKeyCache:
    """LRU of derived keys. Thread-safe; holds no password."""

    def __init__(self, maxsize: int = 1024):
        self._maxsize = maxsize
        self._data: OrderedDict[tuple, DerivedKeys] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple) -> DerivedKeys | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: DerivedKeys) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)

    def discard(self, key: tuple) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def derive_keys(password: bytes, salt: bytes, iterations: int) -> DerivedKeys:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    return DerivedKeys(_hmac(salted, b"Client Key"), _hmac(salted, b"Server Key"))


def saslprep(password: bytes) -> bytes:
    """SASLprep (RFC 4013) as PostgreSQL applies it: on any failure the raw bytes are used."""
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        return password
    if text.isascii():
        # ASCII control characters are prohibited by SASLprep -> PostgreSQL falls back to raw bytes,
        # which is the same thing. Printable ASCII maps to itself.
        return password
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c))
    normal = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normal:
        return password
    prohibited = (stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
                  stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6,
                  stringprep.in_table_c7, stringprep.in_table_c8, stringprep.in_table_c9,
                  stringprep.in_table_a1)
    for c in normal:
        if any(check(c) for check in prohibited):
            return password
    r_and_al = [stringprep.in_table_d1(c) for c in normal]
    if any(r_and_al):
        if any(stringprep.in_table_d2(c) for c in normal) or not (r_and_al[0] and r_and_al[-1]):
            return password
    return normal.encode("utf-8")


def _attrs(message: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for part in message.split(b","):
        if len(part) < 2 or part[1:2] != b"=":
            raise UpstreamLoginError("upstream sent a malformed SCRAM message")
        out.setdefault(part[:1].decode("ascii", "replace"), part[2:])
    return out


class ScramClient:
    """One SCRAM-SHA-256 exchange. ``password`` is read once (in ``final``) and not stored."""

    def __init__(self, *, cache: ScramKeyCache | None = None, cache_scope: tuple = (),
                 nonce: str | None = None, username: str = ""):
        # PostgreSQL ignores the SCRAM user name (the startup packet's user counts): libpq sends "".
        self._cache = cache
        self._scope = cache_scope
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        name = username.replace("=", "=3D").replace(",", "=2C").encode("utf-8")
        self._first_bare = b"n=" + name + b",r=" + self._nonce.encode("ascii")
        self._auth_message: bytes | None = None
        self._server_key: bytes | None = None
        self._cache_key: tuple | None = None
        self._derived: DerivedKeys | None = None  # derived on a cache miss, cached once the server proved itself
        self.done = False

    def initial(self) -> bytes:
        return GS2_HEADER + self._first_bare

    def final(self, server_first: bytes, password_fn) -> bytes:
        """Answer the server-first message. ``password_fn()`` is called only on a cache miss."""
        nonce, salt, iterations, keys = self._first(server_first)
        if keys is None:
            keys = self._derived = derive_keys(password_fn(), salt, iterations)
        return self._answer(server_first, nonce, keys)

    async def final_async(self, server_first: bytes, password_fn) -> bytes:
        """``final`` with the key derivation (PBKDF2) in a worker thread, off the event loop."""
        nonce, salt, iterations, keys = self._first(server_first)
        if keys is None:
            keys = self._derived = await asyncio.to_thread(derive_keys, password_fn(), salt, iterations)
        return self._answer(server_first, nonce, keys)

    def _first(self, server_first: bytes) -> tuple[str, bytes, int, DerivedKeys | None]:
        attrs = _attrs(server_first)
        if "m" in attrs:
            raise UpstreamLoginError("upstream asked for an unsupported SCRAM extension")
        try:
            nonce = attrs["r"].decode("ascii")
            salt = base64.b64decode(attrs["s"], validate=True)
            iterations = int(attrs["i"])
        except (KeyError, ValueError, UnicodeDecodeError):
            raise UpstreamLoginError("upstream sent a malformed SCRAM server-first message") from None
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce):
            raise UpstreamLoginError("upstream SCRAM nonce does not extend ours")
        if not 1 <= len(salt) <= MAX_SALT_BYTES:  # PostgreSQL's is 16 bytes; the cache keeps it
            raise UpstreamLoginError(f"upstream SCRAM salt of {len(salt)} bytes (the gateway accepts at most "
                                     f"{MAX_SALT_BYTES})")
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise UpstreamLoginError(f"upstream SCRAM iteration count {iterations} out of range "
                                     f"(the gateway accepts at most {MAX_ITERATIONS})")
        keys = None
        if self._cache is not None:
            self._cache_key = self._scope + (hashlib.sha256(salt).digest(), iterations)
            keys = self._cache.get(self._cache_key)
        return nonce, salt, iterations, keys


    def _answer(self, server_first: bytes, nonce: str, keys: DerivedKeys) -> bytes:
        without_proof = b"c=" + base64.b64encode(GS2_HEADER) + b",r=" + nonce.encode("ascii")
        self._auth_message = self._first_bare + b"," + server_first + b"," + without_proof
        stored_key = hashlib.sha256(keys.client_key).digest()
        signature = _hmac(stored_key, self._auth_message)
        proof = bytes(a ^ b for a, b in zip(keys.client_key, signature))
        self._server_key = keys.server_key
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server's signature; raises UpstreamLoginError when it does not match."""
        if self._auth_message is None or self._server_key is None:
            raise UpstreamLoginError("upstream sent SCRAM final before server-first")
        attrs = _attrs(server_final)
        if "e" in attrs:
            raise UpstreamLoginError(f"upstream SCRAM error: {attrs['e'].decode('ascii', 'replace')}")
        try:
            signature = base64.b64decode(attrs["v"], validate=True)
        except (KeyError, ValueError):
            raise UpstreamLoginError("upstream sent a malformed SCRAM server-final message") from None
        expected = _hmac(self._server_key, self._auth_message)
        if not hmac.compare_digest(signature, expected):
            if self._cache is not None and self._cache_key is not None:
                self._cache.discard(self._cache_key)
            raise UpstreamLoginError("upstream SCRAM server signature is invalid (not the real server?)")
        self.done = True
        # Cached only now: a server that never proved it knows the verifier leaves nothing behind.
        if self._derived is not None and self._cache is not None:
            self._cache.put(self._cache_key, self._derived)
        self._derived = None


def md5_password(password: bytes, user: str, salt: bytes) -> bytes:
    """PostgreSQL md5: 'md5' + md5hex(md5hex(password + user) + salt)."""
    inner = hashlib.md5(password + user.encode("utf-8")).hexdigest().encode("ascii")
    return b"md5" + hashlib.md5(inner + salt).hexdigest().encode("ascii")
