"""Downgrading the newest migrations on SQLite state keeps every row: 0003 and 0004 drop their
columns in place. (Batch mode rebuilt `credentials` instead, and dropping the old table cascaded to
every lease and grant.)"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from sdm_proxy.control.db import alembic_config, make_engine
from tests.support.gateway_state import GatewayState


def _counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("credentials", "leases", "grants", "sessions", "api_keys")}


def test_downgrade_to_0002_and_back_keeps_every_row(tmp_path):
    st = GatewayState.create(tmp_path / "home")
    st.add_datasource("prod", credentials={"read-only": ("app_ro", "pw")})
    st.role_leasing("analysts", "prod", "read-only")
    st.add_user("ann", roles_=("analysts",))
    st.grant("ann", "prod", "read-only", timedelta(hours=1))
    url = st.home.load_config()["database_url"]
    st.close()
    engine = make_engine(url)
    try:
        before = _counts(engine)
        assert before["leases"] == 1 and before["grants"] == 1
        command.downgrade(alembic_config(engine), "0002")
        assert _counts(engine) == before
        assert "ref_binding" not in {c["name"] for c in sa.inspect(engine).get_columns("credentials")}
        command.upgrade(alembic_config(engine), "head")
        assert _counts(engine) == before
    finally:
        engine.dispose()
