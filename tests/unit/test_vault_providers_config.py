"""Building key providers from the config section."""
from __future__ import annotations

import pytest

from sdm_proxy.errors import UsageError, VaultError
from sdm_proxy.home import SdmHome
from sdm_proxy.vault.envelope import EncryptionContext, SealedSecretMismatch, open_, seal
from sdm_proxy.vault.providers import (
    AwsKmsKeyProvider,
    KeyProvider,
    LocalKeyProvider,
    create_master_key_file,
    load_key_provider,
    providers_for_open,
)
from sdm_proxy.vault.secret import SecretValue


@pytest.fixture
def home(tmp_path):
    home = SdmHome(tmp_path / "sdm")
    create_master_key_file(home.master_key_path)
    return home


@pytest.mark.parametrize("config", [None, {}, {"type": "local"}])
def test_default_is_local_key_file_in_home(home, config):
    provider = load_key_provider(config, home)
    assert isinstance(provider, LocalKeyProvider) and isinstance(provider, KeyProvider)
    assert provider.path == home.master_key_path


def test_local_relative_and_absolute_paths(home, tmp_path):
    create_master_key_file(home.root / "elsewhere.keys")
    assert load_key_provider({"type": "local", "path": "elsewhere.keys"}, home).path == home.root / "elsewhere.keys"
    absolute = tmp_path / "abs.keys"
    create_master_key_file(absolute)
    assert load_key_provider({"type": "local", "path": str(absolute)}, home).path == absolute


def test_local_missing_file_is_a_vault_error(tmp_path):
    with pytest.raises(VaultError, match="is missing"):
        load_key_provider({"type": "local"}, SdmHome(tmp_path / "empty"))


def test_aws_kms_config_builds_without_calling_aws(home):
    provider = load_key_provider(
        {"type": "aws-kms", "key_id": "arn:aws:kms:eu-west-1:123456789012:key/abc",
         "endpoint_url": "http://127.0.0.1:1"},
        home,
    )
    assert isinstance(provider, AwsKmsKeyProvider) and isinstance(provider, KeyProvider)
    assert provider.region == "eu-west-1"  # taken from the ARN
    assert provider.name == "aws-kms"
    explicit = load_key_provider({"type": "aws-kms", "key_id": "alias/sdm", "region": "us-east-2"}, home)
    assert explicit.region == "us-east-2" and explicit.key_id == "alias/sdm"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"type": "gcp-kms"}, "unknown key provider type"),
        ({"type": "aws-kms"}, "needs key_id"),
        ({"type": "aws-kms", "key_id": ""}, "non-empty string"),
        ({"type": "local", "key_id": "x"}, "does not take key_id"),
        ({"type": "local", "path": 5}, "non-empty string"),
        ("local", "must be an object"),
        ({"type": "aws-kms", "key_id": "k", "previous": {"type": "local"}}, "must be a list"),
    ],
)
def test_bad_config_is_a_usage_error(home, config, message):
    with pytest.raises(UsageError, match=message):
        providers_for_open(config, home) if "previous" in str(config) else load_key_provider(config, home)


def test_providers_for_open_includes_previous(home):
    local = load_key_provider({"type": "local"}, home)
    ctx = EncryptionContext("d", "c", 1)
    env = seal(local, SecretValue(b"before-the-move"), ctx)
    config = {"type": "aws-kms", "key_id": "alias/sdm", "region": "us-east-1", "previous": [{"type": "local"}]}
    providers = providers_for_open(config, home)
    assert list(providers) == ["aws-kms", "local"]
    assert open_(providers, env, ctx).reveal() == b"before-the-move"
    assert list(providers_for_open({"type": "local"}, home)) == ["local"]
    with pytest.raises(UsageError, match="cannot have previous"):
        providers_for_open({"type": "local", "previous": [{"type": "local", "previous": []}]}, home)


def test_a_previous_provider_of_the_same_type_still_opens_its_secrets(home, tmp_path):
    """The master key file moved: {"type": "local", "path": NEW, "previous": [{"type": "local"}]}.
    Both files are asked (before, the second of one type was dropped, and every secret sealed
    under the old file failed with "wrapped by master key ... not in NEW")."""
    ctx = EncryptionContext("d", "c", 1)
    before = seal(load_key_provider({"type": "local"}, home), SecretValue(b"sealed-before-the-move"), ctx)
    new_file = tmp_path / "etc" / "master.keys"
    new_file.parent.mkdir()
    create_master_key_file(new_file)
    providers = providers_for_open({"type": "local", "path": str(new_file), "previous": [{"type": "local"}]}, home)
    assert open_(providers, before, ctx).reveal() == b"sealed-before-the-move"
    after = seal(load_key_provider({"type": "local", "path": str(new_file)}, home), SecretValue(b"new"), ctx)
    assert open_(providers, after, ctx).reveal() == b"new"
    alone = providers_for_open({"type": "local", "path": str(new_file)}, home)
    with pytest.raises(VaultError, match="master key"):
        open_(alone, before, ctx)
    # Moved onto another row: the provider that holds the key says so, not the one that lacks it.
    with pytest.raises(SealedSecretMismatch):
        open_(providers, before, EncryptionContext("d", "other", 1))
