"""Envelope encryption: round trips, context binding, tampering, and no plaintext/data key at rest."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdm_proxy.errors import UsageError, VaultError
from sdm_proxy.vault.envelope import EncryptionContext, SealedSecretMismatch, open_, parse_envelope, reseal, seal
from sdm_proxy.vault.providers.local import LocalKeyProvider, create_master_key_file
from sdm_proxy.vault.secret import SecretValue

PLAIN = b"correct horse battery staple"
CTX = EncryptionContext("prod-db", "read-only", 3)


@pytest.fixture
def provider(tmp_path):
    path = tmp_path / "keys" / "master.keys"
    create_master_key_file(path)
    return LocalKeyProvider(path)


@pytest.fixture
def envelope(provider):
    return seal(provider, SecretValue(PLAIN), CTX)


class SpyProvider:
    """Wraps a real provider and keeps a copy of every plaintext data key it hands out."""

    def __init__(self, inner):
        self.inner, self.name, self.keys, self.handed_out = inner, inner.name, [], []

    def generate_data_key(self, ctx):
        key, key_id, wrapped = self.inner.generate_data_key(ctx)
        self.keys.append(bytes(key))
        self.handed_out.append(key)
        return key, key_id, wrapped

    def decrypt_data_key(self, key_id, wrapped, ctx):
        key = self.inner.decrypt_data_key(key_id, wrapped, ctx)
        self.handed_out.append(key)
        return key


def test_context_dict_and_canonical_aad():
    assert CTX.as_dict() == {"datasource": "prod-db", "credential": "read-only", "version": "3"}
    assert CTX.aad() == b'{"credential":"read-only","datasource":"prod-db","version":"3"}'
    assert EncryptionContext("d", "c", 1).aad() == EncryptionContext("d", "c", 1).aad()


@pytest.mark.parametrize("args", [("", "c", 1), ("d", "", 1), ("d", "c", 0), ("d", "c", True), ("d", "c", "1")])
def test_context_validation(args):
    with pytest.raises(UsageError):
        EncryptionContext(*args)


def test_round_trip(provider, envelope):
    opened = open_(provider, envelope, CTX)
    assert isinstance(opened, SecretValue) and opened.reveal() == PLAIN
    assert open_({"local": provider}, envelope, CTX) == opened
    assert open_([provider], envelope, CTX) == opened


def test_envelope_shape(provider, envelope):
    body = json.loads(envelope)
    assert set(body) == {"v", "provider", "key_id", "wrapped_key", "nonce", "ciphertext"}
    assert body["v"] == 1 and body["provider"] == "local" and body["key_id"] == provider.current_key_id
    assert len(base64.b64decode(body["nonce"])) == 12
    assert len(base64.b64decode(body["ciphertext"])) == len(PLAIN) + 16


def test_fresh_data_key_and_nonce_per_seal(provider):
    spy = SpyProvider(provider)
    a, b = seal(spy, SecretValue(PLAIN), CTX), seal(spy, SecretValue(PLAIN), CTX)
    assert spy.keys[0] != spy.keys[1] and len(spy.keys[0]) == 32
    ja, jb = json.loads(a), json.loads(b)
    for field in ("nonce", "ciphertext", "wrapped_key"):
        assert ja[field] != jb[field]


def test_envelope_contains_neither_plaintext_nor_data_key(provider):
    spy = SpyProvider(provider)
    env = seal(spy, SecretValue(PLAIN), CTX)
    (key,) = spy.keys
    for needle in (PLAIN, key):
        for form in (needle.decode("latin-1"), base64.b64encode(needle).decode(), needle.hex(),
                     base64.urlsafe_b64encode(needle).decode()):
            assert form not in env
    body = json.loads(env)
    raw_fields = b"".join(base64.b64decode(body[k]) for k in ("nonce", "ciphertext", "wrapped_key"))
    assert PLAIN not in raw_fields and key not in raw_fields


def test_data_key_buffers_are_wiped_after_use(provider):
    spy = SpyProvider(provider)
    env = seal(spy, SecretValue(PLAIN), CTX)
    open_(spy, env, CTX)
    assert len(spy.handed_out) == 2
    assert all(buf == bytearray(32) for buf in spy.handed_out)


@pytest.mark.parametrize(
    "moved_to",
    [EncryptionContext("other-db", "read-only", 3), EncryptionContext("prod-db", "superuser", 3),
     EncryptionContext("prod-db", "read-only", 2), EncryptionContext("prod-db", "read-only", 4)],
    ids=["other-datasource", "other-credential", "older-version", "newer-version"],
)
def test_envelope_moved_to_another_row_fails(provider, envelope, moved_to):
    expected = r"sealed secret does not match its credential \(datasource/credential/version\)"
    with pytest.raises(SealedSecretMismatch, match=expected) as info:
        open_(provider, envelope, moved_to)
    assert isinstance(info.value, VaultError)
    assert info.value.__context__ is None  # nothing from cryptography hangs off the error


def _flip(b64: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("field", ["nonce", "ciphertext", "wrapped_key"])
@pytest.mark.parametrize("index", [0, 5, -1])
def test_tampered_field_fails(provider, envelope, field, index):
    body = json.loads(envelope)
    body[field] = _flip(body[field], index)
    with pytest.raises(SealedSecretMismatch, match="does not match its credential"):
        open_(provider, json.dumps(body), CTX)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["nonce", "ciphertext", "wrapped_key"]), index=st.integers(0, 200), bit=st.integers(0, 7))
def test_any_single_bit_flip_fails(provider, envelope, field, index, bit):
    body = json.loads(envelope)
    raw = bytearray(base64.b64decode(body[field]))
    raw[index % len(raw)] ^= 1 << bit
    body[field] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VaultError):
        open_(provider, json.dumps(body), CTX)


def test_swapped_ciphertexts_between_rows_fail(provider):
    a = json.loads(seal(provider, SecretValue(b"a-secret"), CTX))
    other = EncryptionContext("prod-db", "superuser", 1)
    b = json.loads(seal(provider, SecretValue(b"b-secret"), other))
    a["ciphertext"], a["nonce"] = b["ciphertext"], b["nonce"]  # keep a's wrapped key, take b's data
    with pytest.raises(SealedSecretMismatch):
        open_(provider, json.dumps(a), CTX)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: "not json at all", "not a JSON object"),
        (lambda b: "[1, 2]", "not a JSON object"),
        (lambda b: json.dumps({**b, "v": 3}), "unsupported version"),
        (lambda b: json.dumps({**b, "v": True}), "unsupported version"),
        (lambda b: json.dumps({k: v for k, v in b.items() if k != "nonce"}), "missing fields"),
        (lambda b: json.dumps({**b, "extra": 1}), "unexpected fields"),
        (lambda b: json.dumps({**b, "nonce": "!!!"}), "not valid base64"),
        (lambda b: json.dumps({**b, "nonce": base64.b64encode(b"short").decode()}), "nonce must be 12 bytes"),
        (lambda b: json.dumps({**b, "ciphertext": ""}), "shorter than its tag"),
        (lambda b: json.dumps({**b, "wrapped_key": 5}), "base64 string"),
        (lambda b: json.dumps({**b, "provider": ""}), "non-empty string"),
        (lambda b: "x" * 70000, "too large"),
    ],
)
def test_malformed_envelope_is_a_vault_error(provider, envelope, mutate, message):
    with pytest.raises(VaultError, match=message):
        open_(provider, mutate(json.loads(envelope)), CTX)


def test_unknown_provider_and_unknown_key_id(provider, envelope):
    body = json.loads(envelope)
    with pytest.raises(VaultError, match="key provider 'aws-kms'"):
        open_(provider, json.dumps({**body, "provider": "aws-kms"}), CTX)
    with pytest.raises(VaultError, match="not in"):
        open_(provider, json.dumps({**body, "key_id": "mk_0000"}), CTX)


def test_seal_requires_secret_value(provider):
    with pytest.raises(TypeError):
        seal(provider, PLAIN, CTX)  # type: ignore[arg-type]


def test_parse_envelope_repr_and_reseal(provider, envelope, tmp_path):
    parsed = parse_envelope(envelope)
    assert parsed.provider == "local" and "wrapped" not in repr(parsed)
    renamed = EncryptionContext("prod-db", "read-only-v2", 1)
    moved = reseal(provider, provider, envelope, CTX, renamed)
    assert open_(provider, moved, renamed).reveal() == PLAIN
    with pytest.raises(SealedSecretMismatch):
        open_(provider, moved, CTX)


def test_error_messages_never_contain_the_secret(provider, envelope):
    for ctx in (EncryptionContext("x", "y", 1), CTX):
        body = json.loads(envelope)
        body["ciphertext"] = _flip(body["ciphertext"])
        try:
            open_(provider, json.dumps(body), ctx)
        except VaultError as exc:
            assert PLAIN.decode() not in str(exc) + repr(exc)


DEST = EncryptionContext("prod-db", "read-only", 3, destination='{"host":"db.internal","port":5432}')


def test_the_destination_is_bound_and_cannot_be_dropped(provider):
    """Version 2 envelopes bind where the secret goes: a row pointed at another host (written to
    the state database by someone without the key) no longer opens, and relabelling the envelope
    as version 1 (which opens without a destination) does not help."""
    sealed = seal(provider, SecretValue(PLAIN), DEST)
    assert json.loads(sealed)["v"] == 2
    assert open_(provider, sealed, DEST).reveal() == PLAIN
    moved = EncryptionContext("prod-db", "read-only", 3, destination='{"host":"attacker.example","port":5432}')
    with pytest.raises(SealedSecretMismatch, match="address or TLS settings"):
        open_(provider, sealed, moved)
    with pytest.raises(SealedSecretMismatch):
        open_(provider, sealed, CTX)  # a context without a destination
    relabelled = json.dumps({**json.loads(sealed), "v": 1})
    with pytest.raises(SealedSecretMismatch):
        open_(provider, relabelled, DEST)


def test_version_1_envelopes_still_open_and_are_upgraded_when_sealed_again(provider, envelope):
    assert json.loads(envelope)["v"] == 1  # sealed for a context without a destination
    assert open_(provider, envelope, DEST).reveal() == PLAIN
    again = reseal(provider, provider, envelope, DEST)
    assert json.loads(again)["v"] == 2 and open_(provider, again, DEST).reveal() == PLAIN
