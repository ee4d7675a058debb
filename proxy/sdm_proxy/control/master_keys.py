"""Rotating the local master key: add a new key that wraps from now on, and optionally re-wrap
every sealed credential with it so the old key can be retired."""

from __future__ import annotations

from sqlalchemy import select

from ..audit.events import admin_event
from ..errors import UsageError
from ..vault.envelope import ENVELOPE_VERSION, parse_envelope, reseal
from ..vault.providers import LocalKeyProvider, add_master_key
from .catalog import bind_reference, encryption_context, reference_context
from .context import Actor, ControlPlane
from .models import Credential


def _local_provider(cp: ControlPlane) -> LocalKeyProvider:
    if not isinstance(cp.key_provider, LocalKeyProvider):
        raise UsageError(f"the key provider is {cp.key_provider.name}; rotate its keys there (e.g. KMS key rotation)")
    return cp.key_provider


def list_master_keys(cp: ControlPlane, actor: Actor) -> list[dict]:
    actor.require_admin("listing master keys")
    provider = _local_provider(cp)
    usage: dict[str, int] = {}
    with cp.db.transaction() as s:
        for sealed, binding in s.execute(select(Credential.sealed, Credential.ref_binding)):
            for envelope in (sealed, binding):  # a bound reference is wrapped by a master key too
                if envelope is not None:
                    key_id = parse_envelope(envelope).key_id
                    usage[key_id] = usage.get(key_id, 0) + 1
    ids = provider.key_ids
    return [{"id": k, "wraps_new_secrets": i == 0, "sealed_credentials": usage.get(k, 0)}
            for i, k in enumerate(ids)]


def rotate_master_key(cp: ControlPlane, actor: Actor, *, reseal_all: bool) -> dict:
    actor.require_admin("rotating the master key")
    provider = _local_provider(cp)
    with cp.db.transaction() as s:
        new_id = add_master_key(provider.path)
        resealed = 0
        if reseal_all:
            for cred in s.scalars(select(Credential)):
                ctx = encryption_context(cred)
                if cred.sealed is not None:
                    cred.sealed = reseal(cp.open_providers, provider, cred.sealed, ctx,
                                         min_version=cp.envelope_floor())
                elif cred.ref_binding is not None:
                    cred.ref_binding = reseal(cp.open_providers, provider, cred.ref_binding, reference_context(ctx),
                                              min_version=cp.envelope_floor())
                elif cred.secret_ref is not None:  # a reference stored before they were bound
                    if cp.envelope_floor() >= ENVELOPE_VERSION:
                        # Once every reference was bound, an unbound one was written into the state
                        # database by someone without the key: binding it would bless whatever it says.
                        raise UsageError(f"the secret reference of {cred.datasource.name}/{cred.name} is not "
                                         "bound to its destination although this installation binds every one: "
                                         "it was changed in the state database; check the credential and its "
                                         "datasource, then add it again")
                    cred.ref_binding = bind_reference(provider, cred)
                else:
                    continue
                resealed += 1
        cp.record(s, admin_event(actor.name, "master_key.rotate", key_id=new_id, resealed=resealed))
    if reseal_all and cp.min_envelope_version < ENVELOPE_VERSION:
        # Every secret is now a version 2 envelope: from here on an older one is refused, so one put
        # back from an old copy cannot open without its destination binding.
        cp.home.set_config_value("min_envelope_version", ENVELOPE_VERSION)
        cp.min_envelope_version = ENVELOPE_VERSION
    return {"new_key_id": new_id, "resealed": resealed, "min_envelope_version": cp.min_envelope_version}
