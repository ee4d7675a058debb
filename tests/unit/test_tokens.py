"""API keys and signed session tokens."""

import base64
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sdm_proxy.control.tokens import (SessionSigner, api_key_matches, api_key_prefix, b64d, b64e,
                                      new_api_key)
from sdm_proxy.errors import AuthenticationFailed

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_api_key_is_stored_as_prefix_and_hash_only():
    key = new_api_key()
    assert key.plain.startswith("sdmk_") and api_key_prefix(key.plain) == key.prefix
    assert key.key_hash != key.plain and key.plain not in repr(key)
    assert api_key_matches(key.plain, key.key_hash)
    assert not api_key_matches(key.plain + "x", key.key_hash)


@pytest.mark.parametrize("bad", ["", "nope", "sdmk_", "sdmk_short_x", "sdmk_" + "a" * 200])
def test_malformed_api_keys_are_refused(bad):
    with pytest.raises(AuthenticationFailed):
        api_key_prefix(bad)


def test_session_token_round_trip_and_expiry():
    signer = SessionSigner(Ed25519PrivateKey.generate())
    token = signer.issue("abc", "ann", NOW + timedelta(hours=1))
    claims = signer.verify(token, NOW)
    assert (claims.session_id, claims.user) == ("abc", "ann")
    with pytest.raises(AuthenticationFailed, match="expired"):
        signer.verify(token, NOW + timedelta(hours=2))


def test_token_from_another_key_or_edited_is_refused():
    signer, other = SessionSigner(Ed25519PrivateKey.generate()), SessionSigner(Ed25519PrivateKey.generate())
    token = other.issue("abc", "ann", NOW + timedelta(hours=1))
    with pytest.raises(AuthenticationFailed, match="invalid session token"):
        signer.verify(token, NOW)
    good = signer.issue("abc", "ann", NOW + timedelta(hours=1))
    payload, sig = good[len("sdms."):].split(".")
    forged_payload = b64e(b64d(payload).replace(b'"ann"', b'"adm"'))
    with pytest.raises(AuthenticationFailed):
        signer.verify(f"sdms.{forged_payload}.{sig}", NOW)


@pytest.mark.parametrize("garbage", ["", "sdms.", "sdms.a.b.c", "sdms.!!!.???", "x" * 5000, "sdms." + "A" * 2000])
def test_garbage_tokens_are_refused(garbage):
    with pytest.raises(AuthenticationFailed):
        SessionSigner(Ed25519PrivateKey.generate()).verify(garbage, NOW)


def test_a_token_has_one_spelling():
    """Lenient base64 dropped stray characters, so an edited token still verified: each spelling
    missed the verification cache and anything else keyed on the token."""
    signer = SessionSigner(Ed25519PrivateKey.generate())
    token = signer.issue("abc", "ann", NOW + timedelta(hours=1))
    payload, sig = token[len("sdms."):].split(".")
    # 64 bytes are 86 characters; the last one's 4 low bits are unused, so it has 15 twins.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other_last = alphabet[alphabet.index(sig[-1]) + 1]
    assert base64.urlsafe_b64decode(sig[:-1] + other_last + "==") == base64.urlsafe_b64decode(sig + "==")
    for spelling in (f"sdms.{payload[:5]}!!*~{payload[5:]}.{sig}", f"sdms.{payload}.{sig[:9]}@@@@{sig[9:]}",
                     f"sdms.{payload}.{sig}=", f"sdms.{payload}.{sig.replace('-', '+').replace('_', '/')}",
                     f"sdms.{payload}.{sig[:-1]}{other_last}", f"sdms.{payload}.{sig[:4]}\u00e9{sig[4:]}"):
        if spelling == token:
            continue
        with pytest.raises(AuthenticationFailed, match="invalid session token"):
            signer.verify(spelling, NOW)
    assert signer.verify(token, NOW).session_id == "abc"
