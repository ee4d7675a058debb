"""docs/ carries a copy of the audit event JSON Schema for readers; it must match the one the code uses."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_docs_schema_is_the_packaged_schema():
    packaged = ROOT / "proxy" / "sdm_proxy" / "audit" / "event.schema.json"
    assert (ROOT / "docs" / "audit-event.schema.json").read_bytes() == packaged.read_bytes()
