"""Rotating the local master key keeps every secret readable, and --reseal moves them all to it."""

from __future__ import annotations

import pytest

from sdm_proxy.control.master_keys import list_master_keys, rotate_master_key
from sdm_proxy.control.unlock import unlock
from sdm_proxy.unlock.message import answer_info
from sdm_proxy.vault.transport import open_from_gateway
from tests.support.gateway_state import GatewayState, signed


@pytest.fixture
def state(tmp_path):
    st = GatewayState.create(tmp_path / "home")
    st.add_datasource("prod", credentials={"read-only": ("ro", "ro-pw"), "superuser": ("su", "su-pw")})
    st.role_leasing("analysts", "prod", "read-only", "superuser")
    st.ann = st.add_user("ann", roles_=("analysts",))
    yield st
    st.close()


def opened(st, credential):
    body, request, eph = signed(st.enrolled_proxy(), st.session_token(st.ann), credential=credential)
    answer = unlock(st.cp, body)
    return open_from_gateway(answer["sealed_secret"], eph, answer_info(request, answer)).reveal()


def test_rotate_without_reseal_keeps_old_secrets_readable(state):
    first = list_master_keys(state.cp, state.admin)
    assert len(first) == 1 and first[0]["sealed_credentials"] == 2
    out = rotate_master_key(state.cp, state.admin, reseal_all=False)
    keys = list_master_keys(state.cp, state.admin)
    assert [k["id"] for k in keys] == [out["new_key_id"], first[0]["id"]]
    assert keys[0]["sealed_credentials"] == 0 and keys[1]["sealed_credentials"] == 2
    assert opened(state, "read-only") == b"ro-pw"


def test_rotate_with_reseal_moves_every_secret_to_the_new_key(state):
    out = rotate_master_key(state.cp, state.admin, reseal_all=True)
    assert out["resealed"] == 2
    keys = list_master_keys(state.cp, state.admin)
    assert keys[0]["sealed_credentials"] == 2 and keys[1]["sealed_credentials"] == 0
    assert opened(state, "superuser") == b"su-pw"
    assert state.events("admin.master_key.rotate")[-1]["details"]["resealed"] == 2
