"""Key providers: who wraps the per-secret data keys.

``local`` (a 0600 master key file, the embedded default) and ``aws-kms`` (production). Build them
from the ``key_provider`` config section with :func:`load_key_provider`; build the set that can
open existing envelopes (the configured provider plus any ``previous`` ones kept for a migration)
with :func:`providers_for_open`.

Config examples::

    {"type": "local"}                                  # $SDM_HOME/keys/master.keys
    {"type": "local", "path": "/etc/sdm/master.keys"}  # relative paths are inside $SDM_HOME
    {"type": "aws-kms", "key_id": "arn:aws:kms:...", "region": "eu-west-1", "endpoint_url": null,
     "previous": [{"type": "local"}]}                  # still opens secrets sealed before the move
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import UsageError, VaultError
from ..envelope import SealedSecretMismatch
from ...home import SdmHome
from .base import KeyProvider

AWS_KMS_PROVIDER_NAME = "aws-kms"  # the provider module (and boto3) load only when it is used
from .local import LOCAL_PROVIDER_NAME, LocalKeyProvider, add_master_key, create_master_key_file

__all__ = [
    "AwsKmsKeyProvider",
    "KeyProvider",
    "LocalKeyProvider",
    "add_master_key",
    "create_master_key_file",
    "load_key_provider",
    "providers_for_open",
]

_ALLOWED = {
    LOCAL_PROVIDER_NAME: {"type", "path", "previous"},
    AWS_KMS_PROVIDER_NAME: {"type", "key_id", "region", "endpoint_url", "previous"},
}


def _check(config: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any]]:
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise UsageError("key provider config must be an object like {\"type\": \"local\"}")
    kind = config.get("type", LOCAL_PROVIDER_NAME)
    if kind not in _ALLOWED:
        raise UsageError(
            f"unknown key provider type {str(kind)[:32]!r}: use one of {', '.join(sorted(_ALLOWED))}"
        )
    unknown = sorted(set(config) - _ALLOWED[kind])
    if unknown:
        raise UsageError(f"key provider {kind!r} does not take {', '.join(unknown)}")
    for field in ("path", "key_id", "region", "endpoint_url"):
        value = config.get(field)
        if value is not None and (not isinstance(value, str) or not value):
            raise UsageError(f"key provider {kind!r}: {field} must be a non-empty string")
    return kind, config


def _local_key_path(config: Mapping[str, Any], home: SdmHome) -> Path:
    path = Path(config["path"]).expanduser() if config.get("path") else home.master_key_path
    return path if path.is_absolute() else home.root / path


def local_key_files(config: Mapping[str, Any] | None, home: SdmHome) -> set[Path]:
    """Every local master key file the config names, the current one and ``previous`` ones (resolved)."""
    _, checked = _check(config)
    previous = checked.get("previous") or []
    sections = [checked, *(previous if isinstance(previous, list) else [])]
    return {_local_key_path(section, home).resolve() for section in sections
            if isinstance(section, Mapping) and section.get("type", LOCAL_PROVIDER_NAME) == LOCAL_PROVIDER_NAME}


def load_key_provider(config: Mapping[str, Any] | None, home: SdmHome) -> KeyProvider:
    """The provider that seals new secrets, from a config section (``None``/``{}`` means local)."""
    kind, config = _check(config)
    if kind == LOCAL_PROVIDER_NAME:
        return LocalKeyProvider(_local_key_path(config, home))
    if not config.get("key_id"):
        raise UsageError("key provider 'aws-kms' needs key_id (a key id, key ARN, or alias/NAME)")
    from .aws_kms import AwsKmsKeyProvider

    return AwsKmsKeyProvider(config["key_id"], region=config.get("region"), endpoint_url=config.get("endpoint_url"))


def providers_for_open(config: Mapping[str, Any] | None, home: SdmHome) -> dict[str, KeyProvider]:
    """Providers by name that may open stored envelopes: the configured one first, then ``previous``."""
    _, checked = _check(config)
    found: dict[str, KeyProvider] = {}
    previous = checked.get("previous") or []
    if not isinstance(previous, list):
        raise UsageError("key provider config: previous must be a list of provider configs")
    for section in [checked, *previous]:
        if isinstance(section, Mapping) and section is not checked and "previous" in section:
            raise UsageError("key provider config: previous providers cannot have previous providers")
        provider = load_key_provider(section, home)
        # Envelopes name only the provider type. Two of one type (a master key file that moved, a
        # KMS endpoint that changed) are both asked, the configured one first.
        held = found.get(provider.name)
        found[provider.name] = provider if held is None else _EitherProvider(held, provider)
    return found


class _EitherProvider:
    """Providers of one type: data keys are unwrapped by the first that can; new ones come from
    the first (the configured provider)."""

    def __init__(self, first: KeyProvider, then: KeyProvider):
        self.name = first.name
        self._providers = [*(first._providers if isinstance(first, _EitherProvider) else [first]), then]

    def generate_data_key(self, ctx):
        return self._providers[0].generate_data_key(ctx)

    def decrypt_data_key(self, key_id: str, wrapped: bytes, ctx):
        errors: list[VaultError] = []
        for provider in self._providers:
            try:
                return provider.decrypt_data_key(key_id, wrapped, ctx)
            except VaultError as exc:  # this one does not hold the key: ask the next
                errors.append(exc)
        # A provider that held the key but found the envelope tampered with (or repointed) says
        # more than one that never had the key: that error wins.
        raise next((e for e in errors if isinstance(e, SealedSecretMismatch)), errors[0])


def __getattr__(name: str):
    if name == "AwsKmsKeyProvider":
        from .aws_kms import AwsKmsKeyProvider

        return AwsKmsKeyProvider
    raise AttributeError(name)
