"""The demo's gateway state: a fresh $SDM_HOME with datasource ``prod-db`` (the sample shop), its three
credentials, roles ``analysts`` (leases read-only) and ``admins`` (leases superuser), users
``analyst`` and ``admin``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .dataset import DATABASE
from .postgres import Login

DATASOURCE = "prod-db"


@dataclass
class World:
    home: Path
    analyst_key: str = field(repr=False)
    admin_key: str = field(repr=False)


def build(home: Path, db_port: int, accounts: dict[str, Login]) -> World:
    from sdm_proxy.control import catalog, roles, users
    from sdm_proxy.control.bootstrap import init_home
    from sdm_proxy.control.context import ControlPlane
    from sdm_proxy.home import SdmHome
    from sdm_proxy.vault.secret import SecretValue

    sdm_home = SdmHome(home)
    init_home(sdm_home, admin_name="admin")
    cp = ControlPlane.open(sdm_home)
    try:
        admin_key = sdm_home.admin_key_path.read_text().strip()
        admin = users.authenticate_api_key(cp, admin_key)
        catalog.add_datasource(cp, admin, DATASOURCE, type="postgres", host="127.0.0.1", port=db_port,
                               database=DATABASE)
        for cred, login in accounts.items():
            catalog.add_credential(cp, admin, DATASOURCE, cred, username=login.username,
                                   secret=SecretValue(login.password.encode()))
        roles.create_role(cp, admin, "analysts")
        roles.lease(cp, admin, "analysts", DATASOURCE, "read-only")
        roles.create_role(cp, admin, "admins")
        roles.lease(cp, admin, "admins", DATASOURCE, "superuser")
        roles.assign_role(cp, admin, "admins", "admin")
        users.add_user(cp, admin, "analyst")
        roles.assign_role(cp, admin, "analysts", "analyst")
        analyst_key = users.create_api_key(cp, admin, "analyst")
    finally:
        cp.close()
    return World(home=home, analyst_key=analyst_key, admin_key=admin_key)
