"""The vault: sealing credential secrets, key providers, secret stores, and unlock transport.

Modules, one job each:

- ``secret``       ``SecretValue``, the only type a plain secret travels in
- ``envelope``     per-secret data key + AES-256-GCM, bound to ``{datasource, credential, version}``
- ``providers``    key providers that wrap data keys: ``local`` (0600 key file) and ``aws-kms``
- ``secret_refs``  references to secrets held elsewhere: ``aws-sm:`` and ``file:`` (HashiCorp Vault later)
- ``transport``    an unlocked secret encrypted to the requesting proxy's ephemeral X25519 key

The AWS-backed names are imported lazily, so code that only needs ``SecretValue`` or the unlock
transport (the proxy side) does not pay for importing boto3.
"""

from __future__ import annotations

import importlib
from typing import Any

from .envelope import EncryptionContext, SealedSecretMismatch, open_, parse_envelope, reseal, seal
from .secret import SecretValue
from .transport import generate_proxy_ephemeral_key, open_from_gateway, seal_to_proxy

_LAZY = {
    "KeyProvider": "providers",
    "LocalKeyProvider": "providers",
    "AwsKmsKeyProvider": "providers",
    "create_master_key_file": "providers",
    "add_master_key": "providers",
    "load_key_provider": "providers",
    "providers_for_open": "providers",
    "SecretRef": "secret_refs",
    "validate_secret_ref": "secret_refs",
    "resolve_secret_ref": "secret_refs",
}

__all__ = [
    "EncryptionContext",
    "SealedSecretMismatch",
    "SecretValue",
    "generate_proxy_ephemeral_key",
    "open_",
    "open_from_gateway",
    "parse_envelope",
    "reseal",
    "seal",
    "seal_to_proxy",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
