"""The control-plane half of the dual key (DESIGN.md §2.2).

A secret is opened only when all of these hold, checked in this order:
1. the request is well formed and signed by an enrolled, unrevoked proxy key;
2. its timestamp is inside the clock window and its nonce was never seen (no replay);
3. the session token it carries is valid (signature, expiry, revocation);
4. the session's user holds a lease or a live grant on the credential.
A ``credential.unlock`` event is committed before the secret is opened; every refusal is an
``access.denied`` event. The secret leaves sealed to the proxy's one-time X25519 key.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy.orm import Session as DBSession

from ..audit.events import denied_event, unlock_event
from ..errors import AccessDenied, ProxyRejected, SdmError
from ..unlock.message import UnlockRequest, answer_info, parse_signed_request
from ..vault.envelope import ENVELOPE_VERSION, SealedSecretMismatch, mismatch_error, open_
from ..vault.secret import SecretValue
from ..vault.secret_refs import resolve_secret_ref
from ..vault.transport import seal_to_proxy
from .catalog import check_ref_outside_home, reference_context, secret_file_guard
from .context import Actor, ControlPlane
from .nonces import burn_nonce
from .policy import UNLOCK_CLOCK_WINDOW, Decision, access_decision, freshness_decision
from .proxies import verify_proxy_signature
from .sessions import authenticate_session
from .unverified_denials import claims
from .unlock_facts import (
    CredentialRow,
    credential_access_facts,
    datasource_access_facts,
    datasource_credentials,
    named_credential,
)


@dataclass
class _Attempt:
    """What is known so far about a request, so a refusal can be audited with it."""

    request: UnlockRequest | None = None
    actor: Actor | None = None
    proxy_verified: bool = False  # signed by an enrolled proxy: its claims are the proxy's
    nonce_burnable: bool = False  # ... fresh and not yet used


def unlock(cp: ControlPlane, body: object, *, peer: str | None = None) -> dict:
    """``peer``: the HTTP client's address (None in process), recorded for requests that no
    enrolled proxy signed (unverified_denials.py)."""
    attempt = _Attempt()
    try:
        return _unlock(cp, body, attempt)
    except SdmError as exc:
        if attempt.proxy_verified:
            _record_denial(cp, attempt, exc)
        else:
            _record_unverified_denial(cp, attempt.request, exc, peer)
        raise


def _unlock(cp: ControlPlane, body: object, attempt: _Attempt) -> dict:
    request, signature = parse_signed_request(body)
    attempt.request = request
    now = cp.now()
    # One transaction (one commit on the connect path): proxy half, nonce, session half, lease,
    # audit record. A refusal rolls it all back; ``_record_denial`` then burns the nonce of a
    # correctly signed, fresh request together with the access.denied event, so it cannot be replayed.
    # The reads are lean Core selects (``unlock_facts``): every one reads live state, none is cached.
    with cp.db.transaction() as s:
        verify_proxy_signature(s, request.proxy_id, signature, request.signed_bytes())
        attempt.proxy_verified = True
        decision = freshness_decision(request.issued_at(), now)
        if not decision.allowed:
            raise ProxyRejected(decision.reason)
        _burn_nonce(s, request, now)
        attempt.nonce_burnable = True
        actor = authenticate_session(cp, s, request.session_token, now)
        attempt.actor = actor
        cred, decision = _resolve_credential(cp, s, actor, request)
        ds = cred.datasource
        ctx = cred.encryption_context()
        sealed, secret_ref, ref_binding = cred.sealed, cred.secret_ref, cred.ref_binding
        answer = {
            "user": actor.name, "session_id": actor.session_id,
            "datasource": {"name": ds.name, "type": ds.type, "host": ds.host, "port": ds.port,
                           "database": ds.database, "tls": ds.tls_mode, "ca_file": ds.ca_file},
            "credential": cred.name, "db_user": cred.db_username, "version": cred.version,
            "via": decision.via,
            "access_expires_at": decision.expires_at.isoformat() if decision.expires_at else None,
        }
        cp.record(s, unlock_event(
            user=actor.name, session_id=actor.session_id, proxy_id=request.proxy_id,
            datasource=ds.name, credential=cred.name, db_user=cred.db_username,
            protocol=request.protocol, client={"addr": request.client_addr}))
    # The off-box copy must hold the unlock too before the secret is opened (fail closed).
    cp.audit.sync_sink(strict=True)
    secret = _open_secret(cp, sealed, secret_ref, ref_binding, ctx)
    answer["sealed_secret"] = seal_to_proxy(secret, request.ephemeral_key_bytes(), answer_info(request, answer))
    return answer


def _burn_nonce(s: DBSession, request: UnlockRequest, now) -> None:
    if not burn_nonce(s.connection(), request.nonce, request.proxy_id,
                      request.issued_at() + 2 * UNLOCK_CLOCK_WINDOW, now):
        raise ProxyRejected("unlock request replayed (nonce already used)")


def _resolve_credential(cp: ControlPlane, s: DBSession, actor: Actor,
                        request: UnlockRequest) -> tuple[CredentialRow, Decision]:
    """The named credential, or (when none is named) the caller's only one on the datasource."""
    now = cp.now()
    conn = s.connection()
    if request.credential is not None:
        cred = named_credential(conn, request.datasource, request.credential)
        decision = access_decision(credential_access_facts(
            conn, actor.user_id, actor.name, cred.datasource.name, cred.id, cred.name), now)
        if not decision.allowed:
            raise AccessDenied(decision.reason)
        return cred, decision
    creds = datasource_credentials(conn, request.datasource)
    facts = datasource_access_facts(conn, actor.user_id, actor.name, creds)
    usable = [(c, d) for c, d in zip(creds, (access_decision(f, now) for f in facts)) if d.allowed]
    if not usable:
        raise AccessDenied(f"user {actor.name} has no lease or grant on datasource {request.datasource}")
    if len(usable) > 1:
        names = ", ".join(c.name for c, _ in usable)
        raise AccessDenied(f"user {actor.name} holds several credentials on {request.datasource}; "
                           f"name one as the user: {names}")
    return usable[0]


def _open_secret(cp: ControlPlane, sealed: str | None, secret_ref: str | None, ref_binding: str | None,
                 ctx) -> SecretValue:
    if secret_ref is not None:
        _check_reference_binding(cp, secret_ref, ref_binding, ctx)
        check_ref_outside_home(cp, secret_ref)
        return resolve_secret_ref(secret_ref, file_guard=secret_file_guard(cp), **cp.secret_store_options)
    return open_(cp.open_providers, sealed, ctx, min_version=cp.envelope_floor())


def _check_reference_binding(cp: ControlPlane, secret_ref: str, ref_binding: str | None, ctx) -> None:
    """A secret reference is followed only as it was bound to this row and destination: changed in
    the state database (the reference, or where the secret goes), it no longer matches."""
    floor = cp.envelope_floor()
    if ref_binding is None:
        if floor >= ENVELOPE_VERSION:
            raise SealedSecretMismatch(f"the secret reference of {ctx.describe()} is not bound to its "
                                       "destination, although this installation binds every one: it was changed "
                                       "in the state database; check the credential and its datasource, then "
                                       "add it again")
        return  # stored before references were bound: followed until min_envelope_version says no
    bound = open_(cp.open_providers, ref_binding, reference_context(ctx), min_version=floor)
    if not hmac.compare_digest(bound.reveal(), secret_ref.encode("utf-8")):
        raise mismatch_error(ctx)


def _record_denial(cp: ControlPlane, attempt: _Attempt, exc: SdmError) -> None:
    req, actor = attempt.request, attempt.actor
    try:
        with cp.db.transaction() as s:
            if attempt.nonce_burnable:
                try:
                    with s.begin_nested():  # a failed insert must not take the denial record with it
                        _burn_nonce(s, req, cp.now())
                except ProxyRejected:
                    pass  # a concurrent twin burnt it: fine, it is burnt
            cp.record(s, denied_event(
                reason=exc.message, user=actor.name if actor else None,
                session_id=actor.session_id if actor else None,
                proxy_id=req.proxy_id if req else None, datasource=req.datasource if req else None,
                credential=req.credential if req else None, protocol=req.protocol if req else None,
                client={"addr": req.client_addr} if req else None))
    except SdmError:
        pass  # the request is refused either way; the audit failure is the caller's next error


def _record_unverified_denial(cp: ControlPlane, req: UnlockRequest | None, exc: SdmError,
                              peer: str | None) -> None:
    """A refusal before any enrolled proxy vouched for the request: from whoever can reach the API.
    Its claims are recorded as claims, and only so many per peer (unverified_denials.py)."""
    suppressed = cp.unverified_denials.admit(peer)
    if suppressed is None:
        return
    details: dict = {"unverified": True}
    if req is not None:
        details["claimed"] = claims(proxy_id=req.proxy_id, datasource=req.datasource, credential=req.credential,
                                    protocol=req.protocol, client_addr=req.client_addr)
    if suppressed:
        details["suppressed"] = suppressed
    try:
        with cp.db.transaction() as s:
            cp.record(s, denied_event(reason=exc.message, user=None, client={"addr": peer}, details=details))
    except SdmError:
        pass  # the request is refused either way
