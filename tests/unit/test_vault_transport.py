"""The unlock response: a secret sealed to the requesting proxy's ephemeral X25519 key."""
from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sdm_proxy.errors import UsageError, VaultError
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.vault.transport import generate_proxy_ephemeral_key, open_from_gateway, seal_to_proxy

PLAIN = b"upstream-db-password"
INFO = b"request-nonce-5f1c"


@pytest.fixture
def proxy_key():
    return generate_proxy_ephemeral_key()


def test_round_trip(proxy_key):
    private, public = proxy_key
    assert len(public) == 32
    sealed = seal_to_proxy(SecretValue(PLAIN), public, INFO)
    assert set(sealed) == {"epk", "nonce", "ciphertext"}
    assert all(isinstance(v, str) for v in sealed.values())
    opened = open_from_gateway(sealed, private, INFO)
    assert isinstance(opened, SecretValue) and opened.reveal() == PLAIN


def test_sealed_response_has_no_plaintext_and_is_fresh_each_time(proxy_key):
    _, public = proxy_key
    a, b = seal_to_proxy(SecretValue(PLAIN), public, INFO), seal_to_proxy(SecretValue(PLAIN), public, INFO)
    assert a["epk"] != b["epk"] and a["ciphertext"] != b["ciphertext"]
    text = repr(a)
    assert PLAIN.decode() not in text and base64.b64encode(PLAIN).decode() not in text
    assert PLAIN not in base64.b64decode(a["ciphertext"])


def test_wrong_private_key_fails(proxy_key):
    _, public = proxy_key
    sealed = seal_to_proxy(SecretValue(PLAIN), public, INFO)
    with pytest.raises(VaultError, match="could not be opened") as info:
        open_from_gateway(sealed, X25519PrivateKey.generate(), INFO)
    assert info.value.__context__ is None


def test_wrong_info_fails_so_responses_cannot_be_replayed_to_another_request(proxy_key):
    private, public = proxy_key
    sealed = seal_to_proxy(SecretValue(PLAIN), public, INFO)
    with pytest.raises(VaultError, match="could not be opened"):
        open_from_gateway(sealed, private, b"request-nonce-other")


@pytest.mark.parametrize("field", ["epk", "nonce", "ciphertext"])
def test_tampered_field_fails(proxy_key, field):
    private, public = proxy_key
    sealed = seal_to_proxy(SecretValue(PLAIN), public, INFO)
    raw = bytearray(base64.b64decode(sealed[field]))
    raw[-1] ^= 0x80
    with pytest.raises(VaultError):
        open_from_gateway({**sealed, field: base64.b64encode(bytes(raw)).decode()}, private, INFO)


@pytest.mark.parametrize(
    "sealed",
    [
        {},
        {"epk": "", "nonce": "", "ciphertext": ""},
        {"epk": "!!", "nonce": "AAAA", "ciphertext": "AAAA"},
        {"epk": 1, "nonce": "AAAA", "ciphertext": "AAAA"},
        "not a dict",
        None,
    ],
)
def test_malformed_input_is_a_vault_error(proxy_key, sealed):
    with pytest.raises(VaultError):
        open_from_gateway(sealed, proxy_key[0], INFO)  # type: ignore[arg-type]


def test_extra_fields_and_bad_lengths_refused(proxy_key):
    private, public = proxy_key
    sealed = seal_to_proxy(SecretValue(PLAIN), public, INFO)
    with pytest.raises(VaultError, match="malformed"):
        open_from_gateway({**sealed, "extra": "x"}, private, INFO)
    with pytest.raises(VaultError, match="32-byte"):
        open_from_gateway({**sealed, "epk": base64.b64encode(b"short").decode()}, private, INFO)


def test_bad_proxy_public_keys_refused():
    with pytest.raises(VaultError, match="32-byte"):
        seal_to_proxy(SecretValue(PLAIN), b"\x01" * 31, INFO)
    with pytest.raises(VaultError, match="not a usable"):
        seal_to_proxy(SecretValue(PLAIN), b"\x00" * 32, INFO)  # low-order point: all-zero shared secret
    with pytest.raises(VaultError):
        seal_to_proxy(SecretValue(PLAIN), "not-bytes", INFO)  # type: ignore[arg-type]


def test_info_must_bind_something(proxy_key):
    with pytest.raises(UsageError):
        seal_to_proxy(SecretValue(PLAIN), proxy_key[1], b"")
    with pytest.raises(TypeError):
        seal_to_proxy(PLAIN, proxy_key[1], INFO)  # type: ignore[arg-type]
