"""AWS code paths of the vault, run with boto3 against moto's STANDALONE server (real HTTP).

moto is a stand-in for AWS: it proves our requests, encryption contexts and error mapping work
through botocore's real HTTP stack, not that AWS IAM/KMS policies are right. Every test name says
``against_moto_server`` so nobody mistakes these for tests against AWS.
"""
from __future__ import annotations

import base64
import json
import sys
import uuid
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:  # tests/conftest.py does this too; keep working under --noconftest
    sys.path.insert(0, _ROOT)

import boto3  # noqa: E402

from sdm_proxy.errors import VaultError  # noqa: E402
from sdm_proxy.home import SdmHome  # noqa: E402
from sdm_proxy.vault.envelope import EncryptionContext, SealedSecretMismatch, open_, seal  # noqa: E402
from sdm_proxy.vault.providers import AwsKmsKeyProvider, load_key_provider, providers_for_open  # noqa: E402
from sdm_proxy.vault.secret import SecretValue  # noqa: E402
from sdm_proxy.vault.secret_refs import resolve_secret_ref  # noqa: E402
from tests.support.moto_server import dummy_aws_environment  # noqa: E402

pytestmark = pytest.mark.moto

REGION = "us-east-1"
PLAIN = b"kms-sealed-db-password"
CTX = EncryptionContext("prod-db", "read-only", 1)


@pytest.fixture(autouse=True)
def _dummy_aws_env(moto_server, tmp_path):
    # Per test as well, so another fixture's monkeypatching cannot hand boto3 real credentials.
    with dummy_aws_environment(tmp_path):
        yield


@pytest.fixture
def kms(moto_server):
    return boto3.client("kms", region_name=REGION, endpoint_url=moto_server.endpoint_url)


@pytest.fixture
def kms_key(kms):
    return kms.create_key(Description=f"sdm test {uuid.uuid4()}")["KeyMetadata"]["Arn"]


@pytest.fixture
def sm(moto_server):
    return boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_server.endpoint_url)


def _provider(moto_server, key_id):
    return AwsKmsKeyProvider(key_id, region=REGION, endpoint_url=moto_server.endpoint_url)


# KMS key provider ---------------------------------------------------------------------------------
def test_kms_provider_against_moto_server_round_trip_with_encryption_context(moto_server, kms_key):
    provider = _provider(moto_server, kms_key)
    envelope = seal(provider, SecretValue(PLAIN), CTX)
    body = json.loads(envelope)
    assert body["provider"] == "aws-kms" and body["key_id"] == kms_key
    assert PLAIN.decode() not in envelope and base64.b64encode(PLAIN).decode() not in envelope
    assert open_(provider, envelope, CTX).reveal() == PLAIN
    # a fresh provider (another gateway process) opens it too
    assert open_(_provider(moto_server, kms_key), envelope, CTX).reveal() == PLAIN


def test_kms_provider_against_moto_server_wraps_with_the_context(moto_server, kms, kms_key):
    provider = _provider(moto_server, kms_key)
    key, key_id, wrapped = provider.generate_data_key(CTX)
    assert len(key) == 32
    # KMS itself refuses the wrapped key without the exact context, and accepts it with it.
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(CiphertextBlob=wrapped)
    assert kms.decrypt(CiphertextBlob=wrapped, EncryptionContext=CTX.as_dict())["Plaintext"] == bytes(key)


@pytest.mark.parametrize(
    "moved_to",
    [EncryptionContext("other-db", "read-only", 1), EncryptionContext("prod-db", "superuser", 1),
     EncryptionContext("prod-db", "read-only", 2)],
    ids=["other-datasource", "other-credential", "other-version"],
)
def test_kms_provider_against_moto_server_wrong_context_fails(moto_server, kms_key, moved_to):
    provider = _provider(moto_server, kms_key)
    envelope = seal(provider, SecretValue(PLAIN), CTX)
    with pytest.raises(SealedSecretMismatch, match="does not match its credential") as info:
        open_(provider, envelope, moved_to)
    assert info.value.__context__ is None and PLAIN.decode() not in str(info.value)


def test_kms_provider_against_moto_server_tampered_wrapped_key_fails(moto_server, kms_key):
    provider = _provider(moto_server, kms_key)
    body = json.loads(seal(provider, SecretValue(PLAIN), CTX))
    raw = bytearray(base64.b64decode(body["wrapped_key"]))
    raw[-5] ^= 0x01
    body["wrapped_key"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VaultError):
        open_(provider, json.dumps(body), CTX)


def test_kms_provider_against_moto_server_alias_and_config(moto_server, kms, kms_key, tmp_path):
    alias = f"alias/sdm-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms_key)
    provider = load_key_provider(
        {"type": "aws-kms", "key_id": alias, "region": REGION, "endpoint_url": moto_server.endpoint_url},
        SdmHome(tmp_path),
    )
    envelope = seal(provider, SecretValue(PLAIN), CTX)
    assert json.loads(envelope)["key_id"] == kms_key  # the ARN, so re-pointing the alias orphans nothing
    assert open_(providers_for_open({"type": "aws-kms", "key_id": alias, "region": REGION,
                                     "endpoint_url": moto_server.endpoint_url}, SdmHome(tmp_path)),
                 envelope, CTX).reveal() == PLAIN


def test_kms_provider_against_moto_server_unknown_key(moto_server):
    missing = f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}"
    with pytest.raises(VaultError, match="not found") as info:
        seal(_provider(moto_server, missing), SecretValue(PLAIN), CTX)
    assert info.value.__context__ is None


def test_kms_provider_against_moto_server_envelope_pointed_at_another_key_fails(moto_server, kms, kms_key):
    provider = _provider(moto_server, kms_key)
    body = json.loads(seal(provider, SecretValue(PLAIN), CTX))
    body["key_id"] = kms.create_key()["KeyMetadata"]["Arn"]  # Decrypt pins KeyId: the blob's key must match
    with pytest.raises(VaultError) as info:
        open_(provider, json.dumps(body), CTX)
    assert PLAIN.decode() not in str(info.value)


def test_kms_provider_unreachable_endpoint_is_a_vault_error(moto_server):
    from tests.support.moto_server import free_port

    provider = AwsKmsKeyProvider("alias/x", region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(VaultError, match="could not reach AWS KMS"):
        seal(provider, SecretValue(PLAIN), CTX)


# Secrets Manager references -------------------------------------------------------------------------
def test_secrets_manager_ref_against_moto_server_plain_string(moto_server, sm):
    name = f"sdm/{uuid.uuid4().hex[:8]}/plain"
    sm.create_secret(Name=name, SecretString="plain-sm-password")
    value = resolve_secret_ref(f"aws-sm:{name}", aws_endpoint_url=moto_server.endpoint_url, region=REGION)
    assert isinstance(value, SecretValue) and value.reveal() == b"plain-sm-password"


def test_secrets_manager_ref_against_moto_server_json_key_and_arn(moto_server, sm):
    name = f"sdm/{uuid.uuid4().hex[:8]}/rds"
    arn = sm.create_secret(
        Name=name, SecretString=json.dumps({"username": "app", "password": "json-sm-p\u00e4ss", "port": 5432})
    )["ARN"]
    for ref in (f"aws-sm:{name}#password", f"aws-sm:{arn}#password"):
        value = resolve_secret_ref(ref, aws_endpoint_url=moto_server.endpoint_url, region=REGION)
        assert value.reveal() == "json-sm-p\u00e4ss".encode()
    # region may come from the ARN alone
    assert resolve_secret_ref(f"aws-sm:{arn}#username", aws_endpoint_url=moto_server.endpoint_url).reveal() == b"app"


def test_secrets_manager_ref_against_moto_server_binary_secret(moto_server, sm):
    name = f"sdm/{uuid.uuid4().hex[:8]}/bin"
    sm.create_secret(Name=name, SecretBinary=b"\x00binary\xffpw")
    value = resolve_secret_ref(f"aws-sm:{name}", aws_endpoint_url=moto_server.endpoint_url, region=REGION)
    assert value.reveal() == b"\x00binary\xffpw"


def test_secrets_manager_ref_against_moto_server_missing_secret(moto_server):
    ref = f"aws-sm:sdm/{uuid.uuid4().hex[:8]}/absent"
    with pytest.raises(VaultError, match="was not found") as info:
        resolve_secret_ref(ref, aws_endpoint_url=moto_server.endpoint_url, region=REGION)
    assert info.value.__context__ is None


@pytest.mark.parametrize(
    "secret_string, key, message",
    [
        ('{"username": "app", "password": "s3cr3t-in-json"}', "pass", "has no field 'pass'"),
        ("s3cr3t-not-json", "password", "is not a JSON object"),
        ('{"password": 12345678}', "password", "is not a non-empty string"),
        ('["s3cr3t-in-list"]', "password", "is not a JSON object"),
    ],
)
def test_secrets_manager_ref_against_moto_server_bad_json_key_never_echoes(
    moto_server, sm, secret_string, key, message
):
    name = f"sdm/{uuid.uuid4().hex[:8]}/json"
    sm.create_secret(Name=name, SecretString=secret_string)
    with pytest.raises(VaultError, match=message) as info:
        resolve_secret_ref(f"aws-sm:{name}#{key}", aws_endpoint_url=moto_server.endpoint_url, region=REGION)
    text = str(info.value) + repr(info.value)
    assert "s3cr3t" not in text and "12345678" not in text
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_secrets_manager_ref_against_moto_server_deleted_secret(moto_server, sm):
    name = f"sdm/{uuid.uuid4().hex[:8]}/deleted"
    sm.create_secret(Name=name, SecretString="gone")
    sm.delete_secret(SecretId=name, RecoveryWindowInDays=7)
    with pytest.raises(VaultError, match="deleted or scheduled for deletion"):
        resolve_secret_ref(f"aws-sm:{name}", aws_endpoint_url=moto_server.endpoint_url, region=REGION)


def test_botocore_debug_logging_does_not_write_secrets_against_moto_server(moto_server, sm, kms_key, caplog):
    import logging

    name = f"sdm/{uuid.uuid4().hex[:8]}/logged"
    sm.create_secret(Name=name, SecretString="never-in-a-log-line")
    with caplog.at_level(logging.DEBUG):
        resolve_secret_ref(f"aws-sm:{name}", aws_endpoint_url=moto_server.endpoint_url, region=REGION)
        provider = _provider(moto_server, kms_key)
        envelope = seal(provider, SecretValue(PLAIN), CTX)
        open_(provider, envelope, CTX)
    assert caplog.records  # botocore did log at DEBUG...
    assert "never-in-a-log-line" not in caplog.text  # ...but not the response bodies
    assert PLAIN.decode() not in caplog.text
    for field in ("SecretString", "Plaintext", "CiphertextBlob"):  # no body of any call was written out
        assert field not in caplog.text


def test_kms_provider_against_moto_server_refuses_a_key_of_another_account(moto_server, kms, kms_key, tmp_path):
    """Whoever can write the state database could seal an envelope under a KMS key of their own
    account (with a key policy that lets the gateway Decrypt): it names another account's key and
    is refused before KMS is asked. With an alias configured, the account is learned by DescribeKey."""
    alias = f"alias/sdm-{uuid.uuid4().hex[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=kms_key)
    body = json.loads(seal(_provider(moto_server, kms_key), SecretValue(PLAIN), CTX))
    body["key_id"] = body["key_id"].replace(":123456789012:", ":999999999999:")
    for configured in (kms_key, alias):
        with pytest.raises(VaultError, match="another AWS account"):
            open_(_provider(moto_server, configured), json.dumps(body), CTX)
    # A key of the same account (an alias moved to a new key) still opens what the old one sealed.
    other = kms.create_key()["KeyMetadata"]["Arn"]
    sealed_under_other = seal(_provider(moto_server, other), SecretValue(PLAIN), CTX)
    assert open_(_provider(moto_server, alias), sealed_under_other, CTX).reveal() == PLAIN
