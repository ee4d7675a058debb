"""The encryption context of a credential's sealed secret (vault/envelope.py): its names and
version, and where the secret is sent. Shared by the catalog (sealing) and the unlock (opening)."""

from __future__ import annotations

from ..vault.envelope import EncryptionContext, destination_text


def credential_context(ds, credential: str, version: int, db_user: str) -> EncryptionContext:
    """``ds``: a ``Datasource`` model or an ``unlock_facts.DatasourceRow`` (the same attribute names)."""
    return EncryptionContext(datasource=ds.name, credential=credential, version=version,
                             destination=destination_text(type=ds.type, host=ds.host, port=ds.port,
                                                          database=ds.database, tls=ds.tls_mode,
                                                          ca_file=ds.ca_file, db_user=db_user))
