"""The production key provider: AWS KMS wraps each data key.

``GenerateDataKey`` and ``Decrypt`` both carry the credential's encryption context, so KMS itself
refuses to unwrap a data key for another row, and CloudTrail records which credential was opened.
The key id stored in the envelope is the key ARN KMS reports, so changing the configured key (or
alias) later does not orphan secrets sealed under the old key.
"""

from __future__ import annotations

import logging
from typing import Any

from ...errors import VaultError
from .._aws import AWS_ERRORS, aws_client, aws_error_code, describe_aws_failure
from ..envelope import DATA_KEY_BYTES, EncryptionContext, mismatch_error

from . import AWS_KMS_PROVIDER_NAME  # one spelling, defined where boto3 is not needed

log = logging.getLogger("sdm.vault")

# KMS codes that mean "this ciphertext does not belong to this key/context": report as a mismatch.
_MISMATCH_CODES = {"InvalidCiphertextException", "IncorrectKeyException"}
_KEY_STATE_CODES = {"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"}


def _arn_account(key_id: str) -> str | None:
    parts = key_id.split(":")
    if key_id.startswith("arn:") and len(parts) >= 6:
        return parts[4] or None
    return None


def _arn_region(key_id: str) -> str | None:
    parts = key_id.split(":")
    if key_id.startswith("arn:") and len(parts) >= 6:
        return parts[3] or None
    return None


class AwsKmsKeyProvider:
    """Data keys from ``kms:GenerateDataKey`` (AES_256), unwrapped by ``kms:Decrypt``."""

    name = AWS_KMS_PROVIDER_NAME

    def __init__(
        self,
        key_id: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        client: Any | None = None,
    ):
        if not isinstance(key_id, str) or not key_id.strip():
            raise VaultError("the aws-kms key provider needs a key_id (key id, key ARN, or alias/NAME)")
        self.key_id = key_id
        # A key ARN names its region; use it so `--kms-key-id ARN` works without AWS_REGION.
        self.region = region or _arn_region(key_id)
        self.endpoint_url = endpoint_url
        self._client = client
        self._account: str | None = _arn_account(key_id)  # whose keys may have sealed what this opens
        self._account_known = self._account is not None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("kms", region=self.region, endpoint_url=self.endpoint_url)
        return self._client

    def _client_for(self, key_id: str) -> Any:
        # An envelope sealed under a key in another region (before a move) is opened in that region.
        region = _arn_region(key_id)
        if self._client is not None or region is None or region == self.region:
            return self.client
        return aws_client("kms", region=region, endpoint_url=self.endpoint_url)

    def _failure(self, exc: BaseException, operation: str, key_id: str, ctx: EncryptionContext) -> VaultError:
        # Only our own phrases and the AWS error code: the AWS message is not needed to act on it.
        reason = describe_aws_failure(exc, "AWS KMS", self.endpoint_url)
        if reason is not None:
            return VaultError(f"{reason} while {operation} for {ctx.describe()}")
        code = aws_error_code(exc)
        if code in _MISMATCH_CODES:
            return mismatch_error(ctx)
        if code == "NotFoundException":
            return VaultError(f"KMS key {key_id!r} was not found (check key_id and region) while {operation}")
        if code in _KEY_STATE_CODES:
            return VaultError(f"KMS key {key_id!r} is disabled or pending deletion ({code}) while {operation}")
        if code in {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"}:
            return VaultError(f"KMS refused the gateway's AWS identity ({code}) while {operation} for {ctx.describe()}")
        return VaultError(f"KMS failed ({code}) while {operation} for {ctx.describe()}")

    def generate_data_key(self, ctx: EncryptionContext) -> tuple[bytearray, str, bytes]:
        error: VaultError | None = None
        try:
            resp = self.client.generate_data_key(
                KeyId=self.key_id, KeySpec="AES_256", EncryptionContext=ctx.as_dict()
            )
        except AWS_ERRORS as exc:
            error = self._failure(exc, "generating a data key", self.key_id, ctx)
        if error is not None:  # raised outside the except block: nothing of botocore's rides along
            raise error
        plaintext, wrapped, key_arn = resp.get("Plaintext"), resp.get("CiphertextBlob"), resp.get("KeyId")
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_BYTES or not wrapped:
            raise VaultError("KMS returned an unexpected GenerateDataKey response")
        return bytearray(plaintext), str(key_arn or self.key_id), bytes(wrapped)

    def _own_account(self) -> str | None:
        """The AWS account of the configured key (from its ARN, else asked once with DescribeKey)."""
        if not self._account_known:
            self._account_known = True
            try:
                arn = self.client.describe_key(KeyId=self.key_id)["KeyMetadata"]["Arn"]
                self._account = _arn_account(str(arn))
            except (*AWS_ERRORS, KeyError, TypeError):
                log.warning("cannot tell the AWS account of KMS key %s (give key_id as a key ARN, or allow "
                            "kms:DescribeKey): envelopes naming another account's key are not refused", self.key_id)
        return self._account

    def decrypt_data_key(self, key_id: str, wrapped: bytes, ctx: EncryptionContext) -> bytearray:
        # The envelope names the key, and the state database holds the envelope: one written by
        # someone with a KMS key of their own (and a Decrypt policy on "*") must not open. Keys of
        # this installation's account still do (an alias moved to a new key orphans nothing).
        own = self._own_account()
        if own is not None and _arn_account(key_id) not in (own, None):
            raise VaultError(f"sealed secret for {ctx.describe()} names KMS key {key_id[:200]!r} of another AWS "
                             f"account than this gateway's key ({own}): refused")
        error: VaultError | None = None
        try:
            # KeyId pins the key: KMS refuses a blob made under any other key.
            resp = self._client_for(key_id).decrypt(
                CiphertextBlob=wrapped, EncryptionContext=ctx.as_dict(), KeyId=key_id
            )
        except AWS_ERRORS as exc:
            error = self._failure(exc, "unwrapping a data key", key_id, ctx)
        if error is not None:
            raise error
        plaintext = resp.get("Plaintext")
        if not isinstance(plaintext, bytes) or len(plaintext) != DATA_KEY_BYTES:
            raise VaultError("KMS returned an unexpected Decrypt response")
        return bytearray(plaintext)

    def __repr__(self) -> str:
        return f"AwsKmsKeyProvider(key_id={self.key_id!r}, region={self.region!r})"
