"""Datasources and their credentials (sealed secrets or secret-store references)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session as DBSession

from ..audit.events import admin_event
from ..errors import Conflict, NotFound, UsageError
from ..validation import (
    DATASOURCE_TYPES,
    TLS_MODES,
    check_choice,
    check_name,
    check_port,
    check_text,
)
from ..vault.envelope import EncryptionContext, seal
from ..vault.providers import local_key_files
from ..vault.secret import SecretValue
from ..vault.secret_refs import validate_secret_ref
from .context import Actor, ControlPlane
from .models import Credential, Datasource
from .secret_context import credential_context

MAX_SECRET_BYTES = 4096


def datasource_not_found(name: str) -> NotFound:
    return NotFound(f"no datasource named {name!r} (see `sdm datasource list`)")


def credential_not_found(datasource: str, name: str) -> NotFound:
    return NotFound(f"datasource {datasource!r} has no credential named {name!r} (see `sdm credential list`)")


def get_datasource(s: DBSession, name: str) -> Datasource:
    ds = s.scalar(select(Datasource).where(Datasource.name == name))
    if ds is None:
        raise datasource_not_found(name)
    return ds


def get_credential(s: DBSession, datasource: str, name: str) -> Credential:
    ds = get_datasource(s, datasource)
    cred = s.scalar(select(Credential).where(Credential.datasource_id == ds.id, Credential.name == name))
    if cred is None:
        raise credential_not_found(datasource, name)
    return cred


def encryption_context(cred: Credential) -> EncryptionContext:
    return credential_context(cred.datasource, cred.name, cred.version, cred.db_username)


def bind_reference(provider, cred: Credential) -> str:
    """The credential's secret reference sealed for its encryption context (unlock checks it)."""
    return seal(provider, SecretValue(cred.secret_ref.encode("utf-8")), reference_context(encryption_context(cred)))


def reference_context(ctx: EncryptionContext) -> EncryptionContext:
    """A reference binding's context: the credential's, marked as a binding."""
    return dataclasses.replace(ctx, purpose="reference")


def datasource_view(ds: Datasource) -> dict:
    return {
        "name": ds.name, "type": ds.type, "host": ds.host, "port": ds.port, "database": ds.database,
        "tls": ds.tls_mode, "ca_file": ds.ca_file, "credentials": sorted(c.name for c in ds.credentials),
    }


def credential_view(cred: Credential) -> dict:
    # Only metadata: where the secret lives, never the envelope or the secret.
    return {
        "datasource": cred.datasource.name, "name": cred.name, "username": cred.db_username,
        "version": cred.version, "storage": "secret-ref" if cred.secret_ref else "sealed",
        "secret_ref": cred.secret_ref, "created_at": cred.created_at.isoformat(),
        "rotated_at": cred.rotated_at.isoformat() if cred.rotated_at else None,
    }


def add_datasource(cp: ControlPlane, actor: Actor, name: str, *, type: str, host: str, port: int,
                   database: str | None = None, tls: str = "disable", ca_file: str | None = None) -> dict:
    actor.require_admin("adding a datasource")
    check_name("datasource", name)
    check_choice("datasource type", type, DATASOURCE_TYPES)
    check_choice("TLS mode", tls, TLS_MODES)
    check_port(port)
    check_text("host", host)
    if database is not None:
        check_text("database name", database)
    if ca_file is not None:
        check_text("CA file path", ca_file, 4096)
    if tls == "verify-full" and not ca_file:
        raise UsageError("--tls verify-full needs --ca-file with the database server's CA")
    if ca_file and not os.path.isfile(ca_file):
        raise UsageError(f"CA file {ca_file} does not exist")
    with cp.db.transaction() as s:
        if s.scalar(select(Datasource.id).where(Datasource.name == name)) is not None:
            raise Conflict(f"datasource {name!r} already exists")
        ds = Datasource(name=name, type=type, host=host, port=port, database=database,
                        tls_mode=tls, ca_file=ca_file)
        s.add(ds)
        s.flush()
        cp.record(s, admin_event(actor.name, "datasource.add", datasource=name, type=type,
                                 host=host, port=port, database=database, tls=tls))
        return datasource_view(ds)


def list_datasources(cp: ControlPlane, actor: Actor) -> list[dict]:
    actor.require_admin("listing all datasources")
    with cp.db.transaction() as s:
        return [datasource_view(ds) for ds in s.scalars(select(Datasource).order_by(Datasource.name))]


def remove_datasource(cp: ControlPlane, actor: Actor, name: str) -> dict:
    actor.require_admin("removing a datasource")
    with cp.db.transaction() as s:
        ds = get_datasource(s, name)
        s.delete(ds)
        cp.record(s, admin_event(actor.name, "datasource.remove", datasource=name))
    return {"removed": name}


def _check_secret(secret: SecretValue) -> None:
    if len(secret) == 0:
        raise UsageError("empty password on stdin: pipe the password in, e.g. `... --password-stdin < file`")
    if len(secret) > MAX_SECRET_BYTES:
        raise UsageError(f"password longer than {MAX_SECRET_BYTES} bytes")


def add_credential(cp: ControlPlane, actor: Actor, datasource: str, name: str, *, username: str,
                   secret: SecretValue | None = None, secret_ref: str | None = None) -> dict:
    actor.require_admin("adding a credential")
    check_name("credential", name)
    if (secret is None) == (secret_ref is None):
        raise UsageError("give exactly one of a password (--password-stdin) or a secret reference (--secret-ref)")
    check_text("--username (the database login name)", username)
    if secret is not None:
        _check_secret(secret)
    else:
        check_ref_outside_home(cp, secret_ref)
    with cp.db.transaction() as s:
        ds = get_datasource(s, datasource)
        if s.scalar(select(Credential.id).where(Credential.datasource_id == ds.id, Credential.name == name)):
            raise Conflict(f"datasource {datasource!r} already has a credential named {name!r}")
        cred = Credential(datasource=ds, name=name, db_username=username, version=1, secret_ref=secret_ref)
        if secret is not None:
            cred.sealed = seal(cp.key_provider, secret, encryption_context(cred))
        else:
            cred.ref_binding = bind_reference(cp.key_provider, cred)
        s.add(cred)
        s.flush()
        cp.record(s, admin_event(actor.name, "credential.add", datasource=datasource, credential=name,
                                 username=username, storage=credential_view(cred)["storage"]))
        return credential_view(cred)


def rotate_credential(cp: ControlPlane, actor: Actor, datasource: str, name: str, *,
                      secret: SecretValue) -> dict:
    """Store a new secret as the next version; the old envelope is replaced (it no longer opens
    for the new version's context anyway)."""
    actor.require_admin("rotating a credential")
    _check_secret(secret)
    with cp.db.transaction() as s:
        cred = get_credential(s, datasource, name)
        refuse_rotating_a_reference(cred)
        cred.version += 1
        cred.sealed = seal(cp.key_provider, secret, encryption_context(cred))
        cred.rotated_at = cp.now()
        cp.record(s, admin_event(actor.name, "credential.rotate", datasource=datasource,
                                 credential=name, version=cred.version))
        return credential_view(cred)


# The process's own state: /proc/self/environ resolves to the gateway's pid at unlock time, /dev and
# /sys hold devices and kernel state. None of it is a stored secret.
_SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def check_ref_outside_home(cp: ControlPlane, secret_ref: str) -> None:
    """A ``file:`` reference may not point into $SDM_HOME, nor into /proc, /sys or /dev: the
    gateway's own keys (or its environment: API keys, cloud credentials) would otherwise be sent
    upstream as a "password" to a host an admin chooses. Checked when stored; at every unlock the
    file actually opened is checked too (``secret_file_guard``), so a symlink swapped between the
    check and the read gets nowhere."""
    ref = validate_secret_ref(secret_ref)
    if ref.scheme == "file":
        _refuse_secret_file(cp, Path(ref.target).resolve(), None)


def secret_file_guard(cp: ControlPlane):
    """For ``resolve_secret_ref``: called with the real path and stat of the file it opened."""
    return lambda real_path, st: _refuse_secret_file(cp, Path(real_path), st)


def _refuse_secret_file(cp: ControlPlane, target: Path, st: os.stat_result | None) -> None:
    home = cp.home.root.resolve()
    if target == home or home in target.parents:
        raise UsageError("a file: secret reference may not point inside $SDM_HOME")
    if any(target == tree or tree in target.parents for tree in _SYSTEM_TREES):
        raise UsageError("a file: secret reference may not point into /proc, /sys or /dev "
                         "(the gateway's own process and devices)")
    # A master key file may live outside $SDM_HOME (`{"type": "local", "path": "/etc/sdm/..."}`).
    key_files = local_key_files(cp.home.load_config().get("key_provider"), cp.home)
    if target in key_files or (st is not None and (st.st_dev, st.st_ino) in _identities(key_files)):
        raise UsageError("a file: secret reference may not point at the gateway's master key file")
    if st is not None and (st.st_dev, st.st_ino) in _identities(_files_under(home)):
        raise UsageError("a file: secret reference may not point inside $SDM_HOME (this file is one of "
                         "its files under another name)")
    # Outside the places above the gateway can still read cloud credentials, service-account
    # tokens and the like (review): only directories the host's operator listed are read.
    roots = secret_file_roots(cp.home.load_config())
    if not any(target == root or root in target.parents for root in roots):
        where = ", ".join(map(str, roots)) if roots else "none is listed"
        raise UsageError(f"a file: secret reference must lie in a directory listed in config.json's "
                         f"secret_stores.file_roots ({where})")


def secret_file_roots(config: dict) -> tuple[Path, ...]:
    """The directories ``file:`` references may read from (``secret_stores.file_roots``), resolved."""
    stores = config.get("secret_stores") or {}
    roots = stores.get("file_roots") if isinstance(stores, dict) else None
    if roots is None:
        return ()
    if not isinstance(roots, list) or not all(isinstance(r, str) and r.startswith("/") for r in roots):
        raise UsageError("config.json: secret_stores.file_roots must be a list of absolute directory paths")
    return tuple(Path(r).resolve() for r in roots)


_HOME_FILES_MAX = 10_000  # $SDM_HOME holds a few dozen files


def _files_under(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, _, names in os.walk(root):
        found += (Path(folder) / name for name in names)
        if len(found) > _HOME_FILES_MAX:  # refuse rather than check only some of them
            raise UsageError(f"$SDM_HOME holds more than {_HOME_FILES_MAX} files: a file: secret reference "
                             "cannot be checked against them all; move what does not belong there")
    return found


def _identities(paths) -> set[tuple[int, int]]:
    """(device, inode) of the files that exist: the same file under another name (a hard link)."""
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def refuse_rotating_a_reference(cred: Credential) -> None:
    """The secret lives in an outside store; changing it here would leave that store wrong."""
    if cred.secret_ref is not None:
        raise UsageError(f"{cred.datasource.name}/{cred.name} reads its secret from {cred.secret_ref}: "
                         "rotate it in that store (the gateway reads the new value at the next login)")


def list_credentials(cp: ControlPlane, actor: Actor, datasource: str | None = None) -> list[dict]:
    actor.require_admin("listing credentials")
    with cp.db.transaction() as s:
        query = select(Credential).join(Datasource).order_by(Datasource.name, Credential.name)
        if datasource is not None:
            query = query.where(Datasource.id == get_datasource(s, datasource).id)
        return [credential_view(c) for c in s.scalars(query)]


def remove_credential(cp: ControlPlane, actor: Actor, datasource: str, name: str) -> dict:
    actor.require_admin("removing a credential")
    with cp.db.transaction() as s:
        s.delete(get_credential(s, datasource, name))
        cp.record(s, admin_event(actor.name, "credential.remove", datasource=datasource, credential=name))
    return {"removed": f"{datasource}/{name}"}
