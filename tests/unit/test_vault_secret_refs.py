"""Secret references: syntax checks and file: resolution (aws-sm: runs against moto in integration/)."""
from __future__ import annotations

import os

import pytest

from sdm_proxy.errors import UsageError, VaultError
from sdm_proxy.vault.secret import SecretValue
from sdm_proxy.vault.secret_refs import SecretRef, resolve_secret_ref, validate_secret_ref

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-AbCdEf"


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("aws-sm:prod/db", SecretRef("aws-sm", "prod/db")),
        ("aws-sm:prod/db#password", SecretRef("aws-sm", "prod/db", "password")),
        (f"aws-sm:{ARN}", SecretRef("aws-sm", ARN)),
        (f"aws-sm:{ARN}#pass word", SecretRef("aws-sm", ARN, "pass word")),
        ("aws-sm:a_b+c=d.e@f-g", SecretRef("aws-sm", "a_b+c=d.e@f-g")),
        ("file:/run/secrets/db-password", SecretRef("file", "/run/secrets/db-password")),
        ("file:/var/run/secrets/..data/pw", SecretRef("file", "/var/run/secrets/..data/pw")),
    ],
)
def test_valid_refs_parse_and_round_trip(ref, expected):
    parsed = validate_secret_ref(ref)
    assert parsed == expected
    assert str(parsed) == ref


@pytest.mark.parametrize(
    "ref, message",
    [
        ("", "non-empty"),
        (None, "non-empty"),
        ("hunter2", "no SCHEME"),
        ("s3://bucket/key", "unknown secret reference scheme"),
        ("env:DB_PASSWORD", "unknown secret reference scheme"),
        ("vault:secret/data/db#password", "HashiCorp Vault .* not supported yet"),
        ("aws-sm:", "malformed secret id"),
        ("aws-sm:has space", "malformed secret id"),
        ("aws-sm:prod/db#", "json_key"),
        ("aws-sm:arn:aws:kms:eu-west-1:123456789012:key/abc", "malformed secret id"),
        ("aws-sm:" + "a" * 513, "malformed secret id"),
        ("file:relative/path", "absolute path"),
        ("file://host/etc/pw", "not a file:// URL"),
        ("file:/run/secrets/../../etc/shadow", r"'\.\.'"),
        ("file:/run/secrets/pw\x00", "control characters"),
        ("aws-sm:" + "x" * 5000, "too long"),
    ],
)
def test_invalid_refs_are_usage_errors(ref, message):
    with pytest.raises(UsageError, match=message):
        validate_secret_ref(ref)


def test_a_password_pasted_as_a_ref_is_not_echoed():
    for pasted in ("Tr0ub4dor&3", "p@ss:word with spaces", "aws-sm:p@ss word!", "file:s3cr3t-pw"):
        with pytest.raises(UsageError) as info:
            validate_secret_ref(pasted)
        body = pasted.split(":", 1)[-1]
        assert body not in str(info.value)
    # Review: nor the part before the ':' (up to 16 characters pass as a scheme).
    with pytest.raises(UsageError) as info:
        validate_secret_ref("hunter2:Summer2024!")
    assert "hunter2" not in str(info.value) and "Summer2024" not in str(info.value)


def test_file_ref_strips_one_trailing_newline(tmp_path):
    path = tmp_path / "pw"
    for content, expected in [(b"s3cret\n", b"s3cret"), (b"s3cret", b"s3cret"), (b"s3cret\n\n", b"s3cret\n"),
                              (b"s3cret\r\n", b"s3cret"), (b" spaced \n", b" spaced ")]:
        path.write_bytes(content)
        value = resolve_secret_ref(f"file:{path}")
        assert isinstance(value, SecretValue) and value.reveal() == expected


def test_file_ref_follows_symlinks_like_kubernetes_mounts(tmp_path):
    data = tmp_path / "..2024_01_01" / "password"
    data.parent.mkdir()
    data.write_bytes(b"k8s-secret\n")
    (tmp_path / "..data").symlink_to(data.parent.name)
    (tmp_path / "password").symlink_to("..data/password")
    assert resolve_secret_ref(SecretRef("file", str(tmp_path / "password"))).reveal() == b"k8s-secret"


def test_file_ref_failures_are_vault_errors_without_the_secret(tmp_path):
    with pytest.raises(VaultError, match="is missing"):
        resolve_secret_ref(f"file:{tmp_path}/nope")
    with pytest.raises(VaultError, match="not a regular file"):
        resolve_secret_ref(f"file:{tmp_path}")
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(VaultError, match="is empty"):
        resolve_secret_ref(f"file:{empty}")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(VaultError, match="larger than") as info:
        resolve_secret_ref(f"file:{big}")
    assert "xxxx" not in str(info.value)


def test_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(VaultError, match="not a regular file"):
        resolve_secret_ref(f"file:{fifo}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file regardless of mode")
def test_unreadable_file_is_a_vault_error(tmp_path):
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret")
    path.chmod(0)
    with pytest.raises(VaultError, match="not readable"):
        resolve_secret_ref(f"file:{path}")


def test_resolve_rejects_invalid_refs_before_touching_anything():
    with pytest.raises(UsageError):
        resolve_secret_ref("vault:secret/db")
