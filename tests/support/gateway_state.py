"""A real, initialised $SDM_HOME with a datasource, credentials, roles and users (no mocks).

``GatewayState`` is what control-plane tests need: the ``ControlPlane``, the admin ``Actor`` and
helpers to make users, sessions and enrolled proxies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from sdm_proxy.control import catalog, grants, roles, sessions, users
from sdm_proxy.control.bootstrap import init_home
from sdm_proxy.control.context import Actor, ControlPlane
from sdm_proxy.control.proxies import enroll_proxy
from sdm_proxy.home import SdmHome
from sdm_proxy.unlock.client import ProxyIdentity
from sdm_proxy.unlock.message import UnlockRequest
from sdm_proxy.vault.secret import SecretValue


@dataclass
class GatewayState:
    home: SdmHome
    cp: ControlPlane
    admin: Actor

    @classmethod
    def create(cls, root: Path, **init_kwargs) -> "GatewayState":
        home = SdmHome(root)
        init_home(home, **init_kwargs)
        cp = ControlPlane.open(home)
        admin = users.authenticate_api_key(cp, home.admin_key_path.read_text().strip())
        return cls(home, cp, admin)

    def add_datasource(self, name: str, *, type: str = "postgres", host: str = "127.0.0.1",
                       port: int = 5432, database: str | None = "sdm_test",
                       credentials: dict[str, tuple[str, str]] | None = None, tls: str = "disable") -> None:
        """``credentials``: name → (db username, password)."""
        catalog.add_datasource(self.cp, self.admin, name, type=type, host=host, port=port, database=database,
                               tls=tls)
        for cred, (username, password) in (credentials or {}).items():
            catalog.add_credential(self.cp, self.admin, name, cred, username=username,
                                   secret=SecretValue(password.encode()))

    def allow_secret_files(self, *directories) -> None:
        """config.json's ``secret_stores.file_roots``: where ``file:`` references may read."""
        self.home.set_config_value("secret_stores", {"file_roots": [str(d) for d in directories]})

    def add_user(self, name: str, *, roles_: tuple[str, ...] = ()) -> Actor:
        users.add_user(self.cp, self.admin, name)
        for role in roles_:
            roles.assign_role(self.cp, self.admin, role, name)
        return users.authenticate_api_key(self.cp, users.create_api_key(self.cp, self.admin, name))

    def role_leasing(self, role: str, datasource: str, *credentials: str) -> None:
        roles.create_role(self.cp, self.admin, role)
        for cred in credentials:
            roles.lease(self.cp, self.admin, role, datasource, cred)

    def grant(self, user: str, datasource: str, credential: str, duration: timedelta) -> None:
        grants.create_grant(self.cp, self.admin, user, datasource, credential, duration)

    def session_token(self, actor: Actor, ttl: timedelta = timedelta(hours=1)) -> str:
        return sessions.create_session(self.cp, actor, ttl)["token"]

    def enrolled_proxy(self) -> ProxyIdentity:
        identity = ProxyIdentity.generate()
        enroll_proxy(self.cp, self.admin, identity.public_key_bytes)
        return identity

    def events(self, type_: str | None = None) -> list[dict]:
        return [e.to_dict() for e in self.cp.audit.tail(10_000, types=[type_] if type_ else None)]

    def close(self) -> None:
        self.cp.close()


def signed(identity: ProxyIdentity, token: str, credential: str | None = "read-only",
           datasource: str = "prod", now: datetime | None = None):
    ephemeral = X25519PrivateKey.generate()
    request = UnlockRequest.new(
        session_token=token, datasource=datasource, credential=credential, proxy_id=identity.proxy_id,
        ephemeral_public_key=ephemeral.public_key().public_bytes(serialization.Encoding.Raw,
                                                                 serialization.PublicFormat.Raw),
        now=now or datetime.now(timezone.utc), protocol="postgres", client_addr="127.0.0.1")
    return identity.sign(request), request, ephemeral
