"""docs/ carries a copy of the audit event JSON Schema for readers; it must match the one the code uses."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_schema_is_the_packaged_schema():
    packaged = ROOT / "proxy" / "sdm_proxy" / "audit" / "event.schema.json"
    assert (ROOT / "docs" / "audit-event.schema.json").read_bytes() == packaged.read_bytes()


def test_schema_head_constant_matches_the_migrations():
    from alembic.script import ScriptDirectory

    from sdm_proxy.control.db import SCHEMA_HEAD, alembic_config, make_engine

    engine = make_engine("sqlite://")
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == SCHEMA_HEAD
