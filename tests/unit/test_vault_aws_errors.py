"""AWS provider construction that needs no AWS endpoint at all.

Error mapping against a live API is tested in tests/integration/test_vault_aws_moto.py, against
moto's standalone server (the only AWS stand-in this project uses).
"""

import pytest

from sdm_proxy.errors import VaultError
from sdm_proxy.vault.providers import AwsKmsKeyProvider


def test_arn_region_is_used_when_no_region_is_configured():
    assert AwsKmsKeyProvider("arn:aws:kms:ap-south-1:123456789012:key/k").region == "ap-south-1"
    assert AwsKmsKeyProvider("alias/sdm").region is None
    with pytest.raises(VaultError):
        AwsKmsKeyProvider("")
